"""Nothing lost, for every method: `tuneforge train` (sft, dpo, reward, grpo) killed with SIGKILL at a random
step, killed halfway through writing a checkpoint, or stopped with SIGTERM (these two on SFT and GRPO: the
shared run shell's code), then run again with
`--resume auto`, ends with trained weights bit-for-bit those of a run that was never interrupted (the
reward model's value head included; GRPO also restores its sampling generator), and a metrics.jsonl that
reads as one run.

Every run is the real CLI in a subprocess on the tiny random Llama (CPU, one thread, fp32: deterministic).
The runs checkpoint every step (`--save-every 1`), so the newest complete checkpoint is the resume point;
LoRA dropout is on so that a wrongly restored RNG would show.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.runfiles import complete_checkpoints

ROOT = Path(__file__).resolve().parents[2]
STEPS = 30  # 44 rows, 5 held out, 4 per step: 10 steps per epoch, so epoch ends (with checkpoints) at 10 and 20
METHODS = ("sft", "dpo", "reward", "grpo")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
METHOD_FLAGS = {
    "sft": [],
    "dpo": ["--method", "dpo"],
    "reward": ["--method", "reward"],
    # Short samples keep GRPO's generation cheap.
    "grpo": ["--method", "grpo", "--reward", "exact_match", "group_size=2", "max_new_tokens=4"],
}


def rows_for(method: str) -> list[dict]:
    """44 rows of a letter -> next-letter task in the layout each method reads."""
    rows = []
    for i in range(44):
        letter, answer, wrong = LETTERS[i % 24], LETTERS[i % 24 + 1], LETTERS[i % 24 + 2]
        user = {"role": "user", "content": f"what is {letter}"}
        if method in ("dpo", "reward"):
            rows.append({"prompt": user["content"], "chosen": answer, "rejected": f"{wrong} no"})
        else:  # sft trains on the answer; grpo takes it as the reference for its reward
            rows.append({"messages": [user, {"role": "assistant", "content": answer}]})
    return rows


def train_command(model_dir: Path, data: Path, output: Path, method: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tuneforge", "train", "--data", str(data), "--model", str(model_dir),
        "--output", str(output), "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "1e-2",
        "--save-every", "1", "--seed", "3", "--validation-split", "0.1", "lora_dropout=0.1", "dtype=float32",
        *METHOD_FLAGS[method], *extra,
    ]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)


def run(command: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env(**extra_env), capture_output=True, text=True, timeout=600, cwd=ROOT)


def last_step(metrics: Path) -> int:
    steps = [0]
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step") or 0))
            except ValueError:
                pass  # a line being written
    return max(steps)


def start_and_signal(command: list[str], output: Path, at_step: int, sig: signal.Signals) -> subprocess.Popen:
    """Start a run, wait until metrics.jsonl shows step >= at_step, then send `sig`."""
    process = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while last_step(output / "metrics.jsonl") < at_step:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.005)
    process.send_signal(sig)
    process.wait(timeout=300)
    return process


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    """Every trained tensor the run wrote: the adapter, and the reward model's value head."""
    files = ["adapter_model.safetensors"] + (["value_head.safetensors"] if (a_dir / "value_head.safetensors").exists() else [])
    for name in files:
        a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"


@pytest.fixture(scope="module", params=METHODS)
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def data(tmp_path_factory, method) -> Path:
    return write_jsonl(tmp_path_factory.mktemp(f"crash-data-{method}") / "train.jsonl", rows_for(method))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, data, method) -> Path:
    output = tmp_path_factory.mktemp(f"crash-{method}") / "straight"
    done = run(train_command(tiny_model_dir, data, output, method))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((output / "summary.json").read_text())["status"] == "completed"
    return output


def resume_and_check(tiny_model_dir, data, method, output: Path, uninterrupted: Path, resume_point: int) -> dict:
    before = json.loads((complete_checkpoints(output)[-1] / "manifest.json").read_text())["progress"]
    done = run(train_command(tiny_model_dir, data, output, method, "--resume", "auto"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step-{resume_point}" in done.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["resumed_from"].endswith(f"step-{resume_point}")
    assert_same_weights(uninterrupted, output)
    # The log reads as one run: every train step once, in order, with the uninterrupted run's numbers (the
    # service turns this log into job events); the same validation records, the step-0 one included.
    def records(folder: Path, kind: str) -> list[dict]:
        rows = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows if r["type"] == kind]

    assert [r["step"] for r in records(output, "train")] == list(range(1, STEPS + 1))
    assert records(output, "train") == records(uninterrupted, "train")
    assert records(output, "valid") == records(uninterrupted, "valid")
    straight = json.loads((uninterrupted / "summary.json").read_text())
    for key in ("trained_tokens", "loss_tokens", "final_train_loss", "final_valid_loss", "epochs"):
        assert summary[key] == straight[key], key
    # train_seconds carries the earlier attempts' time: what the checkpoint had, plus this attempt's.
    this_attempt = (summary["trained_tokens"] - before["trained_tokens"]) / summary["tokens_per_second"]
    assert before["train_seconds"] > 0 and summary["train_seconds"] >= before["train_seconds"] + 0.9 * this_attempt
    return summary


def test_kill_9_at_a_random_step_then_resume_auto_is_bit_exact(tmp_path, tiny_model_dir, data, method, uninterrupted):
    at_step = random.Random().randint(2, STEPS - 12)
    print(f"SIGKILL at step >= {at_step}")
    output = tmp_path / "killed"
    process = start_and_signal(train_command(tiny_model_dir, data, output, method), output, at_step, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (output / "summary.json").exists()  # it really died mid-run
    resume_point = int(complete_checkpoints(output)[-1].name.removeprefix("step-"))
    assert at_step - 1 <= resume_point < STEPS  # the step is logged just before its checkpoint is written
    resume_and_check(tiny_model_dir, data, method, output, uninterrupted, resume_point)


# The checkpoint writer and the SIGTERM handler are the shared run shell's (recipes/run.py), the same code for
# every method: SFT and GRPO (which also carries sampling state) stand for all four; SIGKILL at a random step,
# where each method's own state must come back, runs for every method.
SHELL_METHODS = ["sft", "grpo"]


@pytest.mark.parametrize("method", SHELL_METHODS, indirect=True)
def test_kill_during_checkpoint_write_resumes_from_the_previous_complete_one(
    tmp_path, tiny_model_dir, data, method, uninterrupted
):
    output = tmp_path / "torn"
    crash_at = 7
    done = run(train_command(tiny_model_dir, data, output, method), TUNEFORGE_TEST_CRASH_IN_CHECKPOINT=str(crash_at))
    assert done.returncode == 137, done.stderr[-3000:]
    staging = output / "checkpoints" / f".staging-step-{crash_at}"
    assert (staging / "trainable.safetensors").exists() and not (staging / "manifest.json").exists()
    assert complete_checkpoints(output)[-1].name == f"step-{crash_at - 1}"
    assert last_step(output / "metrics.jsonl") == crash_at  # step 7 was logged; its checkpoint never finished
    resume_and_check(tiny_model_dir, data, method, output, uninterrupted, crash_at - 1)
    assert not list((output / "checkpoints").glob(".staging-*"))  # the torn folder was cleaned up


@pytest.mark.parametrize("method", SHELL_METHODS, indirect=True)
def test_sigterm_finishes_the_step_checkpoints_and_exits_stopped(tmp_path, tiny_model_dir, data, method, uninterrupted):
    output = tmp_path / "stopped"
    process = start_and_signal(train_command(tiny_model_dir, data, output, method), output, 5, signal.SIGTERM)
    assert process.returncode == 0, process.stderr.read()[-3000:] if process.stderr else ""
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "stopped" and 5 <= summary["steps"] < STEPS
    assert complete_checkpoints(output)[-1].name == f"step-{summary['steps']}"
    resume_and_check(tiny_model_dir, data, method, output, uninterrupted, summary["steps"])


def test_epoch_end_checkpoints_and_config_are_saved(tmp_path, tiny_model_dir, data, method):
    """With --save-every larger than an epoch, the epoch ends still get checkpoints; each holds the config
    and the one progress format every method writes."""
    output = tmp_path / "epochs"
    command = train_command(tiny_model_dir, data, output, method, "keep_checkpoints=5")
    command[command.index("--save-every") + 1] = "25"
    done = run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    names = [p.name for p in complete_checkpoints(output)]
    assert names == ["step-10", "step-20", "step-25"]
    saved = json.loads((output / "checkpoints" / "step-20" / "train_config.json").read_text())
    assert saved["seed"] == 3 and saved["save_every"] == 25
    progress = json.loads((output / "checkpoints" / "step-20" / "manifest.json").read_text())["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 10)
    assert progress["format"] == 2 and progress["method"] == method and progress["step"] == 20
    assert set(progress) == {"format", "method", "step", "epoch", "step_in_epoch", "trained_tokens", "loss_tokens",
                             "train_seconds", "extra"}
    # GRPO draws each completion from a generator seeded by (seed, step, prompt, sample): its samples are a
    # function of the step, so no method keeps a sampler state (the kill -9 tests show resume stays bit-exact).
    assert "sampler" not in progress["extra"]
