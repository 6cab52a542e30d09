"""User mistakes are one line naming file, line and problem, with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import write_jsonl
from tuneforge.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{not json"], ("line 2", "json")),
        (['{"text": "hello"}'], ("line 1", "format")),
        (['{"messages": [{"role": "wizard", "content": "hi"}]}'], ("line 1", "wizard")),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], ("line 1", "assistant")),
    ],
)
def test_bad_data_is_one_line_with_file_and_line(tmp_path, capsys, lines, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    code = main(["train", "--data", str(path), "--output", str(tmp_path / "out"), "lora_r=4", "validation_split=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    where, what = expected
    assert str(path) in err and where in err and what in err.lower(), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_file_and_bad_override_exit_2(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2 and "nope.jsonl" in result.stderr and "Traceback" not in result.stderr
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'])
    result = run_cli("train", "--data", str(data), "lora_rnk=4")
    assert result.returncode == 2 and "unknown key 'lora_rnk'" in result.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'] * 12)
    result = run_cli("eval", "--data", str(data), "--model", str(tmp_path / "no-such-model"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_every_config_problem_is_one_line_before_anything_loads(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'] * 12)
    code = main(["train", "--data", str(data), "--output", str(tmp_path / "out"), "--beta", "0.5", "lora_rnk=4",
                 "epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == ("tuneforge: error: config: unknown key 'lora_rnk' (did you mean 'lora_rank'?); epochs: must be > 0; "
                   "beta: set to 0.5, but method sft does not use it (only dpo does)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["train", "data.jsonl"], "'data.jsonl': expected a config file (.yaml, .yml, .json) or key=value (training data "
                              "goes in --data FILE)"),
    (["train", "a.yaml", "b.yaml"], "one config file per run, got a.yaml and b.yaml"),
    (["train", "--config", "a.yaml", "b.yaml"], "one config file per run, got a.yaml and b.yaml"),
    (["train", "missing.yaml"], "missing.yaml: config file not found"),
])  # fmt: skip
def test_a_positional_that_is_not_one_config_file_or_key_value_is_one_line(argv, expected, capsys, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneforge: error: " + expected) and len(err.splitlines()) == 1, err


def test_an_unknown_flag_is_still_refused_by_argparse_wherever_it_stands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", "x.jsonl", "lora_r=8", "--method", "dpo", "--no-such-flag", "beta=0.2"])
    assert exited.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--data", "x.jsonl", "stray"])  # a verb without key=value keeps argparse's refusal
    assert "unrecognized arguments: stray" in capsys.readouterr().err
