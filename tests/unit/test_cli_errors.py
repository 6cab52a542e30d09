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
    result = run_cli("train", "--data", str(data), "lora_rank=4")
    assert result.returncode == 2 and "unknown key 'lora_rank'" in result.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'] * 12)
    result = run_cli("eval", "--data", str(data), "--model", str(tmp_path / "no-such-model"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_every_config_problem_is_one_line_before_anything_loads(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'] * 12)
    code = main(["train", "--data", str(data), "--output", str(tmp_path / "out"), "--beta", "0.5", "lora_rank=4",
                 "epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == ("tuneforge: error: config: unknown key 'lora_rank' (did you mean 'lora_r'?); epochs: must be > 0; "
                   "beta: set to 0.5, but method sft does not use it (only dpo does)")
    assert not (tmp_path / "out").exists()
