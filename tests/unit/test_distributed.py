"""Two gloo processes under torchrun train like one process with the same global batch.

Every run is the real CLI in a subprocess on the tiny random Llama (CPU, fp32, one thread per process).
LoRA runs under DistributedDataParallel, full fine-tuning under FSDP2 (`fully_shard`). The rows have
different lengths, so the two ranks get different numbers of micro-batches per step (the zero-weighted
padding pass is exercised), and a small micro-batch budget makes every step several micro-batches
(gradient sync skipped on all but the last).

What must hold: the per-step training loss and the validation loss match the one-process run within float
reordering, the saved weights match, only rank 0 writes, and a checkpoint written by two processes
resumes in one (and one written by one process resumes in two) on the same loss curve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def varied_rows():
    """letter -> next letter, with prompts of 1 to 9 filler words so lengths (and micro-batch counts) differ."""
    rows = []
    for i in range(36):
        filler = " ".join(["please"] * (1 + (i * 7) % 9))
        question = f"{filler} what is {LETTERS[i % 25]}"
        rows.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": LETTERS[i % 25 + 1]}]}
        )
    return rows


def command(processes: int, model_dir: Path, data: Path, valid: Path, output: Path, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "tuneforge"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "tuneforge",
        ]
    return launcher + [
        "train", "--data", str(data), "--validation-data", str(valid), "--model", str(model_dir),
        "--output", str(output), "--max-steps", str(STEPS), "--batch-size", "6", "--seed", "5",
        "dtype=float32", "micro_batch_tokens=48", "eval_every=3", *extra,
    ]  # fmt: skip


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion; a run still alive after `timeout` fails with what each of its processes was doing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr, alive = stop_with_stacks(process)
        pytest.fail(f"still running after {timeout} s:\n{alive}\n--- stdout\n{stdout[-2000:]}\n--- stderr\n{stderr[-8000:]}")
    assert process.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def stop_with_stacks(process: subprocess.Popen) -> tuple[str, str, str]:
    """SIGABRT to the launcher and every descendant (torchrun starts each worker in its own session):
    with PYTHONFAULTHANDLER each prints its Python stacks to the shared stderr before dying."""
    import signal

    import psutil

    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    alive = "\n".join(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:160]}" for p in tree if p.is_running())
    for member in reversed(tree):  # workers first, so their stacks are printed before the launcher goes
        try:
            member.send_signal(signal.SIGABRT)
        except psutil.NoSuchProcess:
            pass
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        stdout, stderr = process.communicate()
    return stdout, stderr, alive


def losses(output: Path, kind: str = "train") -> dict[int, float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    key = "loss" if kind == "train" else "valid_loss"
    return {r["step"]: r[key] for r in records if r["type"] == kind}


def assert_same_curve(a: dict[int, float], b: dict[int, float], steps) -> None:
    for step in steps:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-6), (step, a, b)


@pytest.fixture
def files(tmp_path, varied_rows):
    data = write_jsonl(tmp_path / "train.jsonl", varied_rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", varied_rows[:10])
    return data, valid


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_processes_follow_one_and_checkpoints_move_between_them(tmp_path, tiny_model_dir, files, mode):
    """The same two runs (one process, two) give the loss-curve comparison and the checkpoints to move: a
    checkpoint every 3 steps changes nothing in the training."""
    data, valid = files
    extra = ["--full", "--lr", "1e-3"] if mode == "full" else ["--lr", "1e-2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(command(1, tiny_model_dir, data, valid, one, "--save-every", "3", *extra))
    result = run(command(2, tiny_model_dir, data, valid, two, "--save-every", "3", *extra))

    assert_same_curve(losses(one), losses(two), range(1, STEPS + 1))
    assert_same_curve(losses(one, "valid"), losses(two, "valid"), [3, 6])
    assert losses(one)[STEPS] < losses(one)[1]  # it trained

    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["trained_tokens"] == json.loads((one / "summary.json").read_text())["trained_tokens"]
    assert result.stdout.count('"status"') == 1  # only rank 0 reports

    weights = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    single, sharded = load_file(str(one / weights)), load_file(str(two / weights))
    assert single.keys() == sharded.keys()
    for name in single:
        # Relative to the whole tensor: Adam's first steps amplify float-reordering noise in near-zero entries.
        relative = float((sharded[name] - single[name]).norm() / single[name].norm().clamp_min(1e-12))
        assert relative < 1e-4, (name, relative)

    checkpoints = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert checkpoints == ["step-3"]  # one writer, no staging debris
    two_to_one, one_to_two = tmp_path / "two_to_one", tmp_path / "one_to_two"
    run(command(1, tiny_model_dir, data, valid, two_to_one, "--resume", str(two / "checkpoints" / "step-3"), *extra))
    # `tuneforge train --nproc 2` is the same as torchrun --standalone --nproc-per-node 2.
    resume = ["--resume", str(one / "checkpoints" / "step-3"), "--nproc", "2"]
    run(command(1, tiny_model_dir, data, valid, one_to_two, *resume, *extra))
    assert_same_curve(losses(one), losses(two_to_one), range(4, STEPS + 1))
    assert_same_curve(losses(one), losses(one_to_two), range(4, STEPS + 1))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--full", "--eval-data", "test.jsonl"], "run `tuneforge eval"),
    ],
)
def test_what_has_no_distributed_loop_is_refused_before_loading(monkeypatch, capsys, tmp_path, arguments, message):
    from tuneforge.cli import main

    data = write_jsonl(tmp_path / "train.jsonl", [])
    # Asked with --nproc: refused before torchrun starts any process.
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "out"), "--nproc", "2", *arguments]) == 2
    assert message in capsys.readouterr().err
    # Launched by torchrun directly: each rank refuses before loading anything.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "out"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_finished_worker_leaves_at_once_with_its_output_flushed():
    """leave(): under torchrun the process ends right there with the given code and nothing printed is lost;
    in one process it is a no-op."""
    script = (
        "import atexit, sys\n"
        "from tuneforge.distributed import World, leave\n"
        "atexit.register(lambda: print('interpreter shutdown ran'))\n"
        "leave(World(), 5)\n"
        "print('one process: still here', end='')\n"
        "sys.stderr.write('unflushed')\n"
        "leave(World(rank=1, world_size=2), 3)\n"
        "print('never printed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED=""))
    assert result.returncode == 3
    assert result.stdout == "one process: still here"  # flushed before os._exit; atexit and later prints never ran
    assert result.stderr.endswith("unflushed")
