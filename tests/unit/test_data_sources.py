"""Other tools' data: every format and every container reads to the same conversations (and pairs), each
file's format and container are named, a file whose content is not what its name says gets one
file-level note, and every position in an error is exact (a line in JSONL, a row elsewhere)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tuneforge.cli import main
from tuneforge.data.formats import FORMATS, detect_format, load_conversations, load_preference_pairs
from tuneforge.data.preference import load_rl_prompts
from tuneforge.data.readers import Row, open_rows
from tuneforge.data.validate import validate_file
from tuneforge.errors import UserError

N = 12


def texts(i: int) -> tuple[str, str, str]:
    return f"be brief {i}", f"what is {chr(97 + i)}", f"the answer is {i}"


def msg(role, content):
    return {"role": role, "content": content}


def chat(i):
    system, user, answer = texts(i)
    return {"messages": [msg("system", system), msg("user", user), msg("assistant", answer)]}


# The same conversation in each layout another tool writes (the "chat" row above is OpenAI's).
CHAT_LAYOUTS = {
    "sharegpt": lambda s, u, a: {"conversations": [{"from": "system", "value": s}, {"from": "human", "value": u},
                                                   {"from": "gpt", "value": a}]},
    "sharegpt_under_messages": lambda s, u, a: {"messages": [{"from": "system", "value": s}, {"from": "human", "value": u},
                                                             {"from": "gpt", "value": a}]},
    "sharegpt_system_key": lambda s, u, a: {"system": s, "conversations": [{"from": "human", "value": u},
                                                                           {"from": "gpt", "value": a}]},
    "sharegpt_role_content": lambda s, u, a: {"conversations": [msg("system", s), msg("user", u), msg("assistant", a)]},
    "alpaca": lambda s, u, a: {"system": s, "instruction": u, "input": "", "output": a},
    "conversational_completion": lambda s, u, a: {"prompt": [msg("system", s), msg("user", u)],
                                                  "completion": [msg("assistant", a)]},
}
DETECTED = {"sharegpt_under_messages": "sharegpt", "sharegpt_system_key": "sharegpt", "sharegpt_role_content": "sharegpt"}


def layout_rows(layout: str) -> list[dict]:
    return [CHAT_LAYOUTS[layout](*texts(i)) if layout != "chat" else chat(i) for i in range(N)]


def conversations(path) -> list:
    return [(c.messages, c.tools) for c in load_conversations(path)]


@pytest.mark.parametrize("layout", sorted(CHAT_LAYOUTS))
def test_each_chat_layout_reads_to_the_same_conversations_and_is_named(tmp_path, tiny_tokenizer, layout):
    path = write_jsonl(tmp_path / f"{layout}.jsonl", layout_rows(layout))
    assert conversations(path) == conversations(write_jsonl(tmp_path / "chat.jsonl", layout_rows("chat")))
    report = validate_file(path, "sft", tiny_tokenizer)
    name = DETECTED.get(layout, layout)
    assert report.ok and report.findings == [] and name in FORMATS
    assert report.to_dict()["format"] == name and report.to_dict()["formats"] == {name: N}


def test_alpaca_input_follows_the_instruction_after_a_blank_line():
    row = {"instruction": "translate", "input": "hola", "output": "hello"}
    assert detect_format(row) == "alpaca"
    from tuneforge.data.formats import row_to_conversation

    assert row_to_conversation(row).messages == [msg("user", "translate\n\nhola"),
                                                  {"role": "assistant", "content": "hello", "weight": 1}]


def test_trl_prompt_completion_trains_the_completion_only():
    from tuneforge.data.formats import row_to_conversation

    row = {"prompt": [msg("user", "hi"), msg("assistant", "hello"), msg("user", "and?")],
           "completion": [msg("assistant", "that is all")]}
    weights = [m.get("weight") for m in row_to_conversation(row).messages]
    assert weights == [None, 0, None, 1]  # the prompt's answer is context, as TRL masks the whole prompt


def test_sharegpt_function_calls_become_tool_calls(tmp_path):
    from tuneforge.data.formats import row_to_conversation

    row = {"conversations": [{"from": "human", "value": "weather in Oslo?"},
                             {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})},
                             {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "it rains"}],
           "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}])}
    conversation = row_to_conversation(row)
    call = conversation.messages[1]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert conversation.messages[2] == {"role": "tool", "content": "rain", "tool_call_id": call["id"]}
    assert conversation.tools == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    report = validate_file(write_jsonl(tmp_path / "tools.jsonl", [row]), "sft", min_examples=1)
    assert report.ok and report.findings == []


def pair_layouts(i: int) -> dict[str, dict]:
    system, user, answer = texts(i)
    prompt = [msg("system", system), msg("user", user)]
    return {
        "dpo": {"input": {"messages": prompt}, "preferred_output": [msg("assistant", answer)],
                "non_preferred_output": [msg("assistant", f"no idea {i}")]},
        "pairs": {"prompt": prompt, "chosen": [msg("assistant", answer)], "rejected": [msg("assistant", f"no idea {i}")]},
        "pairs_implicit_prompt": {"chosen": [*prompt, msg("assistant", answer)],
                                  "rejected": [*prompt, msg("assistant", f"no idea {i}")]},
        "sharegpt_pairs": {"system": system, "conversations": [{"from": "human", "value": user}],
                           "chosen": {"from": "gpt", "value": answer}, "rejected": {"from": "gpt", "value": f"no idea {i}"}},
        "alpaca_pairs": {"system": system, "instruction": user, "input": "", "chosen": answer, "rejected": f"no idea {i}"},
    }


@pytest.mark.parametrize("layout", ["dpo", "pairs", "pairs_implicit_prompt", "sharegpt_pairs", "alpaca_pairs"])
def test_each_preference_layout_reads_to_the_same_pairs_and_is_named(tmp_path, tiny_tokenizer, layout):
    def pairs(path):
        return [(p.prompt, p.chosen, p.rejected) for p in load_preference_pairs(path)]

    path = write_jsonl(tmp_path / "p.jsonl", [pair_layouts(i)[layout] for i in range(N)])
    assert pairs(path) == pairs(write_jsonl(tmp_path / "dpo.jsonl", [pair_layouts(i)["dpo"] for i in range(N)]))
    report = validate_file(path, "dpo", tiny_tokenizer)
    assert report.ok and report.findings == [], [f.to_dict() for f in report.findings]
    assert report.format == layout.removesuffix("_implicit_prompt")
    sft = validate_file(path, "sft")  # and in an SFT file it is one clear error per row
    assert {f.code for f in sft.errors} == {"wrong_method"}


# ---- containers ---------------------------------------------------------------------------------------


def write_container(path: Path, rows: list[dict], container: str) -> Path:
    """`rows` in `container`, written with the tools people use (csv, pyarrow, datasets)."""
    if container == "jsonl":
        return write_jsonl(path, rows)
    if container == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif container in ("csv", "tsv"):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if container == "tsv" else ",")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in (row.get(c, "") for c in columns)])
    elif container == "parquet":
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    elif container == "datasets":
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


CONTAINERS = {"jsonl": "d.jsonl", "json": "d.json", "csv": "d.csv", "tsv": "d.tsv", "parquet": "d.parquet",
              "datasets": "d_dataset"}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("layout", ["chat", "sharegpt", "alpaca"])
def test_each_container_reads_to_the_same_conversations(tmp_path, tiny_tokenizer, container, layout):
    rows = layout_rows(layout)
    rows[4] = {**rows[4], "id": "extra columns are ignored"}
    path = write_container(tmp_path / CONTAINERS[container], rows, container)
    assert conversations(path) == conversations(write_jsonl(tmp_path / "chat.jsonl", layout_rows("chat")))
    out = validate_file(path, "sft", tiny_tokenizer).to_dict()
    assert out["ok"] and out["warnings"] == [] and out["n_examples"] == N
    assert (out["container"], out["format"]) == (container, layout)
    assert out["positions"] == ("line" if container == "jsonl" else "row")


def test_weights_and_tool_calls_survive_columnar_containers(tmp_path):
    """Parquet gives every message every field (absent ones null): absent must stay absent, not become weight null."""
    rows = [chat(i) for i in range(N)]
    rows[1]["messages"][2]["weight"] = 0
    rows[1]["messages"] += [msg("user", "again"), msg("assistant", "the same")]
    for container in ("parquet", "datasets"):
        path = write_container(tmp_path / CONTAINERS[container], rows, container)
        assert conversations(path) == conversations(write_jsonl(tmp_path / "chat.jsonl", rows))


def test_a_datasetdict_folder_or_a_plain_folder_is_a_usage_error(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": datasets.Dataset.from_list([chat(0)])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"DatasetDict folder \(splits: train\): pass one split, e.g. .*dd/train"):
        open_rows(tmp_path / "dd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a datasets folder written by save_to_disk"):
        open_rows(tmp_path / "plain")
    assert main(["validate", str(tmp_path / "dd"), "--json"]) == 2


# ---- one file-level diagnosis ----------------------------------------------------------------------------


@pytest.mark.parametrize(("container", "said"), [("json", "a JSON array"), ("csv", "CSV"), ("tsv", "TSV"),
                                                 ("parquet", "Parquet")])
def test_a_file_that_is_not_jsonl_gets_one_note_and_is_read(tmp_path, tiny_tokenizer, container, said):
    path = write_container(tmp_path / "train.jsonl", layout_rows("alpaca"), container)
    report = validate_file(path, "sft", tiny_tokenizer)
    assert [(f.line, f.code) for f in report.findings] == [(0, "container_mismatch")]
    assert report.findings[0].message.startswith(f"this is {said}, not JSONL")
    assert report.ok and report.n_examples == N and report.container == container
    assert conversations(path) == conversations(write_jsonl(tmp_path / "chat.jsonl", layout_rows("chat")))


def test_the_note_is_said_once_at_the_top_with_its_fix(tmp_path, tiny_model_dir, capsys):
    rows = layout_rows("chat")
    rows[5] = {"messages": []}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(rows, indent=2))
    code = main(["validate", str(path), "--model", str(tiny_model_dir)])
    out = capsys.readouterr().out.splitlines()
    findings = [line for line in out if line.startswith(("  error", "  warning", "  fix"))]
    assert code == 1
    assert findings[0].startswith("  warning: the file: this is a JSON array, not JSONL")
    assert findings[1].startswith("  error: row 5 (line ") and findings[1].endswith("[missing_messages]")
    assert sum(line.endswith("[container_mismatch]") for line in out) == 1
    assert "  fix [container_mismatch]: rename the file, or write JSONL: tuneforge convert FILE OUT.jsonl" in out
    assert sum(line.startswith("  fix [missing_messages]") for line in out) == 1


def test_a_one_line_json_array_and_pretty_printed_objects_are_read_too(tmp_path):
    rows = layout_rows("chat")
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps(rows))
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text("\n".join(json.dumps(row, indent=2) for row in rows))
    for path, container in ((one_line, "json"), (pretty, "json_stream")):
        report = validate_file(path, "sft")
        assert [f.code for f in report.findings] == ["container_mismatch"] and report.container == container
        assert report.n_examples == N
    assert detect_from_name(tmp_path, "jsonl_in.json", "\n".join(json.dumps(r) for r in rows)) == ("jsonl", None)


def detect_from_name(tmp_path, name, text):
    from tuneforge.data.readers import detect_container

    (tmp_path / name).write_text(text)
    return detect_container(tmp_path / name)


def test_files_without_a_telling_name_are_sniffed_without_a_note(tmp_path):
    """The service stores uploads as file-<id>: the content decides, and nothing is said about the name."""
    assert detect_from_name(tmp_path, "file-abc", json.dumps(layout_rows("chat"), indent=2)) == ("json", None)
    assert detect_from_name(tmp_path, "file-def", "prompt,completion\na,b\n") == ("csv", None)
    assert detect_from_name(tmp_path, "file-ghi", "{\"messages\": []}\n{oops\n") == ("jsonl", None)


# ---- exact positions ---------------------------------------------------------------------------------------


def test_positions_in_a_json_array_are_the_row_and_the_line_it_starts_on(tmp_path):
    rows = layout_rows("chat")
    rows[7] = {"messages": [msg("user", "hi"), msg("assistant", "yes", )], "tools": "nope"}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2))
    starts = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line == "  {"]  # indent 2: a row opens
    (error,) = validate_file(path, "sft").errors
    assert (error.line, error.code) == (Row(7, starts[7]), "bad_tools")
    assert {k: error.to_dict()[k] for k in ("line", "row", "where")} == {"line": starts[7], "row": 7,
                                                                          "where": f"row 7 (line {starts[7]})"}


def test_a_broken_json_array_names_the_line_and_keeps_the_rows_before(tmp_path):
    path = tmp_path / "d.json"
    text = json.dumps(layout_rows("chat"), indent=2)
    cut = text.index("the answer is 9")
    path.write_text(text[:cut] + "\"oops" + text[cut:])  # an unterminated string in row 9
    report = validate_file(path, "sft")
    (error,) = report.errors
    line = text[:cut].count("\n") + 1
    assert error.code == "invalid_json" and error.line.index == 9 and f"line {line} column" in error.message
    assert report.n_examples == 10  # rows 0-8 read, row 9 unreadable


def test_positions_in_a_csv_count_lines_inside_quoted_cells(tmp_path):
    """Row i of a CSV starts on line i + 2 (the header is line 1), plus one line per line break quoted in an
    earlier cell: row 1's input holds one, so row 5 starts on line 5 + 2 + 1 = 8 and row 9 on line 12."""
    rows = layout_rows("alpaca")
    rows[1]["input"] = "first line\nsecond line"
    rows[5]["output"] = ""
    path = write_container(tmp_path / "d.csv", rows, "csv")
    with path.open("a") as handle:
        handle.write("only,two\n")  # row 12: two cells under four columns
    report = validate_file(path, "sft")
    assert [(f.line, f.code) for f in report.findings] == [(Row(5, 8), "empty_answer"), (Row(12, 15), "bad_cells")]
    assert "2 cells, but the header has 4 columns" in report.errors[0].message


def test_positions_in_parquet_and_datasets_are_row_indexes(tmp_path):
    rows = layout_rows("sharegpt")
    rows[3]["conversations"][1]["from"] = "robot"
    for container in ("parquet", "datasets"):
        path = write_container(tmp_path / CONTAINERS[container], rows, container)
        (error,) = validate_file(path, "sft").errors
        assert error.to_dict() | {"fix": None} == {
            "line": None, "row": 3, "code": "bad_role", "where": "row 3", "fix": None,
            "message": "conversations[1].from is 'robot'; expected one of human, gpt, system, function_call, "
                       "observation (or user, assistant, tool)"}


def test_loaders_name_the_row_in_their_error(tmp_path):
    rows = layout_rows("alpaca")
    missing = [*rows[:6], {k: v for k, v in rows[6].items() if k != "output"}, *rows[7:]]
    with pytest.raises(UserError, match=r"d.parquet:row 6: an Alpaca row needs 'output'"):
        load_conversations(write_container(tmp_path / "d.parquet", missing, "parquet"))
    with pytest.raises(UserError, match=r"d.json:row 6 \(line 38\): an Alpaca row needs 'output'"):
        load_conversations(write_container(tmp_path / "d.json", missing, "json"))  # 6 rows of 6 lines, then line 38
    with pytest.raises(UserError, match=r"d.jsonl:7: an Alpaca row needs 'output'"):
        load_conversations(write_jsonl(tmp_path / "d.jsonl", missing))


def test_rl_prompts_read_any_chat_format_and_container(tmp_path):
    rows = [CHAT_LAYOUTS["sharegpt"](*texts(i)) for i in range(N)]
    prompts = load_rl_prompts(write_container(tmp_path / "p.parquet", rows, "parquet"))
    assert len(prompts) == N and prompts[2].reference == "the answer is 2"
    assert prompts[2].messages == [msg("system", "be brief 2"), msg("user", "what is c")]
    assert prompts[2].line == Row(2)


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bom.jsonl", layout_rows("chat"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate_file(path, "sft").findings == []
