"""Column mapping (`--columns prompt:question,completion:answer`, train's `columns=`): a file whose fields have
its own names reads, in every container and every verb, to the same conversations and pairs as the same rows
written in the canonical layout; a mapping onto no known field, or a row without the mapped field, is an
error that names the row."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import write_jsonl
from tuneforge.cli import main
from tuneforge.config import build_config, load_yaml
from tuneforge.data.formats import load_conversations, load_preference_pairs
from tuneforge.data.readers import KNOWN_FIELDS, Row, parse_columns, with_columns
from tuneforge.data.validate import validate_file
from tuneforge.errors import UserError

N = 12
QA = "prompt:question,completion:answer"


def qa_rows() -> list[dict]:
    return [{"id": i, "question": f"what is {chr(97 + i)}", "answer": f"the answer is {i}"} for i in range(N)]


def canonical_rows() -> list[dict]:
    return [{"prompt": row["question"], "completion": row["answer"]} for row in qa_rows()]


def write_csv(path, rows: list[dict], delimiter: str = ","):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows({key: json.dumps(v) if isinstance(v, (list, dict)) else v for key, v in row.items()}
                         for row in rows)
    return path


def conversations(path) -> list:
    return [(c.messages, c.tools) for c in load_conversations(path)]


@pytest.fixture
def canonical(tmp_path):
    return conversations(write_jsonl(tmp_path / "canonical.jsonl", canonical_rows()))


def test_parse_columns_from_text_and_from_a_mapping():
    assert parse_columns(QA) == {"prompt": "question", "completion": "answer"}
    assert parse_columns(" prompt : question , completion:answer ,") == {"prompt": "question", "completion": "answer"}
    assert parse_columns({"instruction": "text_input", "output": "output_text"}) == {
        "instruction": "text_input", "output": "output_text"}
    assert parse_columns(None) == parse_columns("none") == parse_columns("") == {}


@pytest.mark.parametrize(("value", "message"), [
    ("question:prompt", r"'question' is no field a format reads; map onto one of messages, tools, prompt"),
    ("prompt=question", r"'prompt=question': expected known_field:file_field"),
    ("prompt:question,prompt:query", r"'prompt' is mapped twice \('question' and 'query'\)"),
    ("prompt:", r"both names must be non-empty"),
    ({"prompt": 3}, r"both names must be non-empty text"),
    (["prompt", "question"], r"expected known_field:file_field,\.\.\. or a mapping"),
])
def test_a_bad_mapping_says_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        parse_columns(value)


def test_known_fields_are_every_field_a_format_reads():
    """Each layout's example row in docs/data.md uses only these names (and a mapping may target each)."""
    from tests.unit.test_data_sources import CHAT_LAYOUTS, chat

    keys = {key for make in CHAT_LAYOUTS.values() for key in make("s", "u", "a")} | set(chat(0))
    keys |= {"prompt", "completion", "chosen", "rejected", "input", "preferred_output", "non_preferred_output",
             "tools", "history"}
    assert keys <= set(KNOWN_FIELDS)


@pytest.mark.parametrize("container", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_custom_columns_read_as_the_canonical_layout(tmp_path, canonical, container):
    rows = qa_rows()
    path = tmp_path / f"qa.{container}"
    if container == "jsonl":
        write_jsonl(path, rows)
    elif container == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif container in ("csv", "tsv"):
        write_csv(path, rows, "\t" if container == "tsv" else ",")
    else:
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    assert conversations(with_columns(path, parse_columns(QA))) == canonical
    with pytest.raises(UserError, match="unknown format"):  # without the mapping, nothing says what the fields are
        load_conversations(path)


def test_a_datasets_folder_with_custom_columns(tmp_path, canonical):
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(qa_rows()).save_to_disk(str(tmp_path / "ds"))
    assert conversations(with_columns(tmp_path / "ds", parse_columns(QA))) == canonical


def test_a_mapped_csv_column_of_messages_is_decoded_as_messages(tmp_path):
    """A CSV cell holds JSON in the `messages` column; mapped there from `dialog`, it is decoded as well."""
    rows = [{"dialog": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(N)]
    path = write_csv(tmp_path / "dialog.csv", [{**row, "note": "x"} for row in rows])
    chats = conversations(with_columns(path, {"messages": "dialog"}))
    canonical = conversations(write_jsonl(tmp_path / "chat.jsonl", [{"messages": r["dialog"]} for r in rows]))
    assert chats == canonical


def test_alpaca_and_preference_fields_map_too(tmp_path):
    alpaca = [{"text_input": f"q{i}", "context": "", "output_text": f"a{i}"} for i in range(N)]
    mapped = with_columns(write_jsonl(tmp_path / "a.jsonl", alpaca),
                          parse_columns("instruction:text_input,input:context,output:output_text"))
    native = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"q{i}", "input": "", "output": f"a{i}"}
                                                for i in range(N)])
    assert conversations(mapped) == conversations(native)
    prefs = [{"query": f"q{i}", "good": f"yes {i}", "bad": f"no {i}"} for i in range(N)]
    mapped = with_columns(write_jsonl(tmp_path / "p.jsonl", prefs),
                          parse_columns("prompt:query,chosen:good,rejected:bad"))
    native = write_jsonl(tmp_path / "q.jsonl", [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"}
                                                for i in range(N)])
    strip = [(p.prompt, p.chosen, p.rejected) for p in load_preference_pairs(native)]
    assert [(p.prompt, p.chosen, p.rejected) for p in load_preference_pairs(mapped)] == strip


def test_a_field_named_like_a_target_is_replaced_by_the_mapped_one(tmp_path, canonical):
    rows = [{**row, "prompt": "not this"} for row in qa_rows()]
    assert conversations(with_columns(write_jsonl(tmp_path / "qa.jsonl", rows), parse_columns(QA))) == canonical


def test_a_row_without_the_mapped_field_is_an_error_naming_the_row(tmp_path, tiny_tokenizer):
    rows = qa_rows()
    del rows[4]["answer"]
    jsonl = with_columns(write_jsonl(tmp_path / "qa.jsonl", rows), parse_columns(QA))
    with pytest.raises(UserError, match=r"qa.jsonl:5: no field 'answer' \(the column mapping reads completion "
                       r"from it\); the row's fields: 'id', 'question'"):
        load_conversations(jsonl)
    rows[4]["answer"] = "x"
    del rows[7]["question"]
    array = tmp_path / "qa.json"
    array.write_text(json.dumps(rows, indent=2))
    with pytest.raises(UserError, match=r"qa.json:row 7 \(line \d+\): no field 'question'"):
        load_conversations(with_columns(array, parse_columns(QA)))
    report = validate_file(with_columns(array, parse_columns(QA)), "sft", tiny_tokenizer)
    assert [(f.line, f.code) for f in report.findings if f.code == "missing_field"] == [(Row(7, 2 + 5 * 7), "missing_field")]  # "[", then 5 lines a row
    assert not report.ok


def test_a_csv_without_the_mapped_column_is_one_error_for_the_file(tmp_path, tiny_tokenizer):
    path = write_csv(tmp_path / "qa.csv", [{"question": r["question"], "reply": r["answer"]} for r in qa_rows()])
    with pytest.raises(UserError, match=r"qa.csv: no column 'answer' \(the column mapping reads completion from "
                       r"it\); the header's columns: question, reply"):
        load_conversations(with_columns(path, parse_columns(QA)))
    report = validate_file(with_columns(path, parse_columns(QA)), "sft", tiny_tokenizer)
    assert [(f.line, f.code) for f in report.findings if f.code != "too_few_examples"] == [(0, "missing_field")]


# ---- the verbs ----------------------------------------------------------------------------------------------


def test_validate_takes_the_flag(tmp_path, tiny_model_dir, capsys):
    path = write_csv(tmp_path / "qa.csv", qa_rows())
    assert main(["validate", str(path), "--model", str(tiny_model_dir), "--json", "--columns", QA]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["n_examples"] == N and report["formats"] == {"completion": N}
    assert report["path"] == str(path)
    assert main(["validate", str(path), "--model", str(tiny_model_dir), "--json"]) == 1  # unknown_format without


def test_validate_maps_the_validation_file_too(tmp_path, tiny_model_dir, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows())
    valid = write_jsonl(tmp_path / "valid.jsonl", qa_rows()[:2])
    assert main(["validate", str(train), "--validation-file", str(valid), "--model", str(tiny_model_dir), "--json",
                 "--columns", QA]) == 0
    codes = {f["code"] for f in json.loads(capsys.readouterr().out)["warnings"]}
    assert "train_validation_overlap" in codes


def test_a_bad_flag_is_a_usage_error(tmp_path, capsys):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    assert main(["validate", str(path), "--columns", "answer:completion"]) == 2
    assert "--columns: 'answer' is no field a format reads" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "out.jsonl"), "--columns", "prompt"]) == 2


def test_convert_takes_the_flag_and_writes_the_canonical_rows(tmp_path, canonical, capsys):
    path = write_csv(tmp_path / "qa.csv", qa_rows())
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(path), str(out), "--columns", QA]) == 0
    assert json.loads(capsys.readouterr().out)["formats"] == {"completion": N}
    assert conversations(out) == canonical  # and it reads without any mapping now


def test_preview_takes_the_flag(tmp_path, tiny_model_dir, capsys):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    assert main(["preview", str(path), "--n", "1", "--model", str(tiny_model_dir), "--columns", QA]) == 0
    assert "⟦theansweris0" in capsys.readouterr().out  # the tiny tokenizer has no spaces; the answer is trained


# ---- training ---------------------------------------------------------------------------------------------


def test_the_train_key_parses_from_text_and_from_yaml(tmp_path):
    assert build_config({"data": "x.jsonl", "columns": QA}).columns == {"prompt": "question", "completion": "answer"}
    (tmp_path / "run.yaml").write_text("data: x.jsonl\ncolumns:\n  prompt: question\n  completion: answer\n")
    config = build_config(load_yaml(tmp_path / "run.yaml"))
    assert config.columns == {"prompt": "question", "completion": "answer"}
    assert build_config(config.to_dict()) == config  # a saved train_config.json rebuilds
    assert build_config({"data": "x.jsonl"}).columns == {}


def test_a_bad_train_key_is_reported_with_the_others():
    with pytest.raises(UserError, match=r"columns: 'question' is no field a format reads.*; epochs: must be > 0"):
        build_config({"data": "x.jsonl", "columns": "question:prompt", "epochs": 0})


def test_training_reads_data_and_validation_data_through_the_mapping(tmp_path, canonical, tiny_model_dir):
    from tuneforge.commands.train import check_training_files
    from tuneforge.recipes.run import train_and_validation

    train = write_csv(tmp_path / "train.csv", qa_rows())
    valid = write_jsonl(tmp_path / "valid.jsonl", qa_rows()[:3])
    config = build_config({"data": str(train), "validation_data": str(valid), "columns": QA,
                           "model": str(tiny_model_dir)})
    check_training_files(config)  # validate's checks before the model loads: they see the mapped rows
    rows, held_out = train_and_validation(config, load_conversations)
    assert [(c.messages, c.tools) for c in rows] == canonical
    assert [(c.messages, c.tools) for c in held_out] == canonical[:3]
    with pytest.raises(UserError, match="unknown format"):
        check_training_files(build_config({"data": str(train), "model": str(tiny_model_dir)}))


# ---- a hub id in the local datasets cache --------------------------------------------------------------------


def cache_hub_dataset(cache, repo: str, splits: dict[str, list[dict]]) -> None:
    """Write `repo` into a datasets cache as `load_dataset(repo)` does: a builder with the hub repo's id writes
    <cache>/<owner>___<name>/default/0.0.0/<hash>/ (what load_dataset reads back with HF_DATASETS_OFFLINE=1)."""
    import datasets

    class Hub(datasets.GeneratorBasedBuilder):
        def _info(self):
            return datasets.DatasetInfo()

        def _split_generators(self, _dl_manager):
            return [datasets.SplitGenerator(name=name, gen_kwargs={"rows": rows}) for name, rows in splits.items()]

        def _generate_examples(self, rows):
            yield from enumerate(rows)

    datasets.disable_progress_bars()
    Hub(cache_dir=str(cache), dataset_name=repo.split("/")[1], repo_id=repo, hash="0123abcd").download_and_prepare()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


def test_a_cached_hub_dataset_reads_by_its_id(hub_cache, tmp_path, canonical, tiny_model_dir, capsys):
    alpaca = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(N)]
    cache_hub_dataset(hub_cache, "tatsu-lab/alpaca", {"train": alpaca, "test": alpaca[:2]})
    native = conversations(write_jsonl(tmp_path / "alpaca.jsonl", alpaca))
    assert conversations("tatsu-lab/alpaca") == native
    assert conversations("tatsu-lab/alpaca:test") == native[:2]
    assert main(["validate", "tatsu-lab/alpaca", "--model", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["container"] == "hub_cache" and report["formats"] == {"alpaca": N}
    with pytest.raises(UserError, match=r"tatsu-lab/alpaca:dev: the cached dataset has no split 'dev': name one "
                       r"\(tatsu-lab/alpaca:train, tatsu-lab/alpaca:test\)"):
        load_conversations("tatsu-lab/alpaca:dev")
    cache_hub_dataset(hub_cache, "someone/qa", {"train": qa_rows()})  # and with a column mapping
    assert conversations(with_columns("someone/qa", parse_columns(QA))) == canonical


def test_a_hub_id_not_in_the_cache_is_never_downloaded(hub_cache, capsys):
    with pytest.raises(UserError, match=r"tatsu-lab/alpaca: no such file, and not in the local datasets cache "
                       r"\(.*hf-cache\); tuneforge never downloads: fetch it once with "
                       r"datasets.load_dataset\('tatsu-lab/alpaca'\), or give a file"):
        load_conversations("tatsu-lab/alpaca")
    assert main(["validate", "tatsu-lab/alpaca"]) == 2
    with pytest.raises(UserError, match=r"^data/train.jsonl: file not found$"):  # a path, not a hub id
        load_conversations("data/train.jsonl")
