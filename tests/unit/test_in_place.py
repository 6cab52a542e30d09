"""A verb never destroys its input: every verb that writes works in place when its output is its input, or
refuses before it writes anything (exit 2, one line). dedup, split, convert, preview --html and eval --predictions."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_data_sources import layout_rows, write_container
from tuneforge.cli import main
from tuneforge.data.formats import load_conversations
from tuneforge.data.outputs import replacing, same_file


def rows_with_duplicates() -> list[dict]:
    rows = layout_rows("chat")
    return rows + [rows[2], rows[5]]


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def only(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_dedup_in_place_keeps_what_dedup_elsewhere_keeps(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", rows_with_duplicates())
    assert run(capsys, "dedup", data, "--output", tmp_path / "elsewhere.jsonl")[0] == 0
    assert run(capsys, "dedup", data, "--output", data)[0] == 0
    assert data.read_text() == (tmp_path / "elsewhere.jsonl").read_text() and len(data.read_text().splitlines()) == 12
    assert only(tmp_path) == ["data.jsonl", "elsewhere.jsonl"]  # no temporary file left behind


def test_dedup_through_a_symlink_to_the_input(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", rows_with_duplicates())
    (tmp_path / "link.jsonl").symlink_to(data)
    assert run(capsys, "dedup", tmp_path / "link.jsonl", "--output", data, "--near")[0] == 0
    assert len(data.read_text().splitlines()) == 12 and (tmp_path / "link.jsonl").is_symlink()


def test_split_into_one_file_twice_is_refused_before_anything_is_written(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", layout_rows("chat"))
    before = data.read_bytes()
    for train_out, valid_out in ((tmp_path / "out.jsonl", tmp_path / "out.jsonl"), (data, data)):
        code, err = run(capsys, "split", data, "--train-out", train_out, "--validation-out", valid_out)
        assert code == 2 and err.count("\n") == 1 and "--train-out and --validation-out are the same file" in err
    assert data.read_bytes() == before and only(tmp_path) == ["data.jsonl"]


@pytest.mark.parametrize("which", ["--train-out", "--validation-out"])
def test_split_with_an_output_equal_to_the_input_loses_nothing(tmp_path, capsys, which):
    data = write_jsonl(tmp_path / "data.jsonl", layout_rows("chat"))
    original = sorted(data.read_text().splitlines())
    other = tmp_path / "other.jsonl"
    outputs = {"--train-out": other, "--validation-out": other, which: data}
    assert run(capsys, "split", data, "--validation-fraction", "0.25", *[x for kv in outputs.items() for x in kv])[0] == 0
    assert sorted(data.read_text().splitlines() + other.read_text().splitlines()) == original
    assert len(outputs["--validation-out"].read_text().splitlines()) == 3


def test_convert_in_place(tmp_path, capsys):
    rows = layout_rows("sharegpt")
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    expected = [c.messages for c in load_conversations(data)]
    assert run(capsys, "convert", data, data)[0] == 0
    assert [c.messages for c in load_conversations(data)] == expected
    assert all("messages" in json.loads(line) for line in data.read_text().splitlines())
    assert only(tmp_path) == ["data.jsonl"]


def test_a_failed_convert_in_place_leaves_the_input_as_it_was(tmp_path, capsys):
    rows = layout_rows("sharegpt")
    rows[-1] = {"conversations": "not a list"}
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    before = data.read_bytes()
    code, err = run(capsys, "convert", data, data)
    assert code == 2 and "data.jsonl:12: 'conversations' must be a non-empty list of turns" in err
    assert data.read_bytes() == before and only(tmp_path) == ["data.jsonl"]


def test_preview_html_over_the_data_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import tuneforge.models

    monkeypatch.setattr(tuneforge.models, "load_tokenizer", lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_jsonl(tmp_path / "data.jsonl", layout_rows("chat"))
    before = data.read_bytes()
    code, err = run(capsys, "preview", data, "--html", data)
    assert code == 2 and err.count("\n") == 1 and "--html is the data file itself" in err
    assert data.read_bytes() == before


@pytest.mark.parametrize("verb", ["dedup", "split"])
def test_dedup_and_split_refuse_other_containers_and_name_convert(tmp_path, capsys, verb):
    data = write_container(tmp_path / "data.jsonl", layout_rows("alpaca"), "csv")  # a CSV under a JSONL name
    before = data.read_bytes()
    extra = ["--output", data] if verb == "dedup" else ["--train-out", data, "--validation-out", tmp_path / "v.jsonl"]
    code, err = run(capsys, verb, data, *extra)
    assert code == 2 and err.count("\n") == 1
    assert f"this is CSV; {verb} copies JSONL lines byte for byte: convert it first (tuneforge convert" in err
    assert data.read_bytes() == before and only(tmp_path) == ["data.jsonl"]


def test_replacing_keeps_the_target_when_writing_fails_and_keeps_its_mode(tmp_path):
    target = tmp_path / "data.jsonl"
    target.write_text("precious\n")
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError), replacing(target) as out:
        out.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_text() == "precious\n" and only(tmp_path) == ["data.jsonl"]
    with replacing(target) as out:
        out.write(b"new\n")
    assert target.read_text() == "new\n" and (target.stat().st_mode & 0o777) == 0o640


def test_same_file_sees_links_and_outputs_not_yet_written(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", layout_rows("chat"))
    os.link(data, tmp_path / "hard.jsonl")
    assert same_file(data, tmp_path / "hard.jsonl") and same_file(data, tmp_path / "." / "data.jsonl")
    assert same_file(tmp_path / "new.jsonl", tmp_path / "sub" / ".." / "new.jsonl")
    assert not same_file(data, tmp_path / "new.jsonl")


def test_eval_refuses_predictions_onto_its_test_file_before_loading_a_model(tmp_path, capsys):
    test = write_jsonl(tmp_path / "test.jsonl", layout_rows("chat"))
    before = test.read_bytes()
    code, err = run(capsys, "eval", "--data", test, "--predictions", test, "--model", tmp_path / "no-such-model")
    assert code == 2 and "--predictions would overwrite --data" in err
    assert test.read_bytes() == before
