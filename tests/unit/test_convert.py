"""`tuneforge convert IN OUT`: any format in any container becomes OpenAI JSONL that validates as cleanly as
the input and reads to the same conversations (or preference pairs)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_data_sources import CHAT_LAYOUTS, CONTAINERS, N, layout_rows, pair_layouts, write_container
from tuneforge.cli import main
from tuneforge.data.formats import load_conversations, load_preference_pairs
from tuneforge.data.validate import validate_file


def conversations(path):
    return [(c.messages, c.tools) for c in load_conversations(path)]


def convert(capsys, source, target) -> dict:
    assert main(["convert", str(source), str(target)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("layout", ["chat", *sorted(CHAT_LAYOUTS)])
def test_round_trip_of_every_chat_layout_and_container(tmp_path, tiny_tokenizer, capsys, layout, container):
    source = write_container(tmp_path / CONTAINERS[container], layout_rows(layout), container)
    target = tmp_path / "out.jsonl"
    summary = convert(capsys, source, target)
    assert summary["rows"] == N and summary["container"] == container
    report = validate_file(target, "sft", tiny_tokenizer)
    assert report.ok and report.findings == [] and (report.container, report.format) == ("jsonl", "chat")
    assert conversations(target) == conversations(source)
    assert all(set(json.loads(line)) == {"messages"} for line in target.read_text().splitlines())


@pytest.mark.parametrize("layout", ["dpo", "pairs", "pairs_implicit_prompt", "sharegpt_pairs", "alpaca_pairs"])
def test_preference_rows_become_openai_dpo_rows(tmp_path, tiny_tokenizer, capsys, layout):
    def pairs(path):
        return [(p.prompt, p.chosen, p.rejected, p.tools) for p in load_preference_pairs(path)]

    source = write_jsonl(tmp_path / "prefs.jsonl", [pair_layouts(i)[layout] for i in range(N)])
    target = tmp_path / "out.jsonl"
    convert(capsys, source, target)
    report = validate_file(target, "dpo", tiny_tokenizer)
    assert report.ok and report.findings == [] and report.format == "dpo"
    assert pairs(target) == pairs(source)


def test_weights_tools_and_tool_calls_are_kept(tmp_path, capsys):
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"order\": 1}"}}
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "content": "shipped", "tool_call_id": "c1"},
                          {"role": "assistant", "content": "it shipped", "weight": 0},
                          {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
                          {"role": "assistant", "content": "it arrives today"}],
             "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
            CHAT_LAYOUTS["conversational_completion"]("s", "u", "a")]
    source = write_container(tmp_path / "d.json", rows, "json")  # Arrow cannot hold text and text parts in one column
    convert(capsys, source, tmp_path / "out.jsonl")
    first, second = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert first["tools"] == rows[0]["tools"] and first["messages"][1] == {"role": "assistant", "content": None,
                                                                            "tool_calls": [call]}
    assert first["messages"][3]["weight"] == 0 and "weight" not in first["messages"][5]
    assert first["messages"][4]["content"] == "and now?"
    assert conversations(tmp_path / "out.jsonl") == conversations(source)
    assert "weight" not in json.dumps(second)


def test_a_bad_row_stops_the_conversion_with_its_position_and_writes_nothing(tmp_path, capsys):
    rows = layout_rows("sharegpt")
    rows[4]["conversations"][0]["from"] = "narrator"
    source = write_container(tmp_path / "d.csv", rows, "csv")
    assert main(["convert", str(source), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d.csv:row 4 (line 6): conversations[0].from is 'narrator'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_convert_writes_jsonl_only(tmp_path, capsys):
    source = write_jsonl(tmp_path / "d.jsonl", layout_rows("chat"))
    assert main(["convert", str(source), str(tmp_path / "out.parquet")]) == 2
    assert "convert writes JSONL; name the output .jsonl, not .parquet" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.csv"), str(tmp_path / "out.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()
