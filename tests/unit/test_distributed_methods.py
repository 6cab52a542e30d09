"""DPO, reward modelling and GRPO under torchrun train like one process, and their checkpoints move between
process counts.

The real CLI in subprocesses on the tiny random Llama (CPU, gloo, fp32, one thread per process), as
tests/unit/test_distributed.py does for SFT. Each method: a one-process run and a two-process run, both
checkpointing at step 3, follow the same loss curve (and validation figures); the two-process checkpoint
resumes in one process and the one-process checkpoint in two (`--nproc 2`), both ending on the reference
curve. Rows have different lengths, so the ranks' shares differ in size. DPO keeps its default forgetting
guard (its passes are split over the ranks too); GRPO samples each completion from a generator of its own
(seed, step, prompt, sample), so two processes draw what one does.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_distributed import LETTERS, STEPS, assert_same_curve, losses, run

REWARD = "tests.unit.test_distributed_methods:words_reward"


def words_reward(prompt_messages, completion, reference) -> float:
    """A reward a random model's samples spread over (imported by the training processes)."""
    return float(len(completion.split()) % 3) + 0.1 * len(completion) % 1


def preference_rows() -> list[dict]:
    rows = []
    for i in range(36):
        filler = " ".join(["please"] * (1 + (i * 7) % 9))
        rows.append({"prompt": f"{filler} what is {LETTERS[i % 23]}", "chosen": LETTERS[i % 23 + 1],
                     "rejected": f"{LETTERS[i % 23 + 2]} no " + "maybe " * (i % 4)})
    return rows


def prompt_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": " ".join(["please"] * (1 + (i * 5) % 7)) + f" what is {LETTERS[i]}"}]}
            for i in range(18)]


METHODS = {
    # method: (rows, extra arguments, the validation figure to compare)
    "dpo": (preference_rows, ["--method", "dpo", "--lr", "1e-2"], "loss"),
    "reward": (preference_rows, ["--method", "reward", "--lr", "1e-2"], "loss"),
    "grpo": (prompt_rows, ["--method", "grpo", "--reward", REWARD, "--lr", "5e-2", "--batch-size", "3",
                           "group_size=4", "max_new_tokens=4", "forgetting_guard=off"], "reward"),
}


def command(processes: int, model_dir, data, valid, output, *extra: str) -> list[str]:
    import sys

    launcher = [sys.executable, "-m", "tuneforge"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "tuneforge"]
    return launcher + [
        "train", "--data", str(data), "--validation-data", str(valid), "--model", str(model_dir),
        "--output", str(output), "--max-steps", str(STEPS), "--batch-size", "6", "--seed", "5", "--save-every", "3",
        "dtype=float32", "micro_batch_tokens=96", "eval_every=3", *extra,
    ]  # fmt: skip


def valid_figures(output, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["type"] == "valid"}


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_follow_one_and_checkpoints_move_between_them(tmp_path, tiny_model_dir, method):
    make_rows, extra, valid_key = METHODS[method]
    rows = make_rows()
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[:8])
    one, two = tmp_path / "one", tmp_path / "two"
    run(command(1, tiny_model_dir, data, valid, one, *extra))
    result = run(command(2, tiny_model_dir, data, valid, two, *extra))

    assert_same_curve(losses(one), losses(two), range(1, STEPS + 1))
    assert_same_curve(valid_figures(one, valid_key), valid_figures(two, valid_key), [0, 3, 6])
    if method == "grpo":  # the same completions were drawn
        assert_same_curve(*({s: r["reward"] for s, r in records(o).items()} for o in (one, two)), range(1, STEPS + 1))
    summary, single = (json.loads((o / "summary.json").read_text()) for o in (two, one))
    assert summary["world_size"] == 2 and summary["trained_tokens"] == single["trained_tokens"]
    assert result.stdout.count('"status"') == 1  # only rank 0 reports
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-3"]  # one writer

    two_to_one, one_to_two = tmp_path / "two_to_one", tmp_path / "one_to_two"
    run(command(1, tiny_model_dir, data, valid, two_to_one, "--resume", str(two / "checkpoints" / "step-3"), *extra))
    run(command(1, tiny_model_dir, data, valid, one_to_two, "--resume", str(one / "checkpoints" / "step-3"),
                "--nproc", "2", *extra))
    assert_same_curve(losses(one), losses(two_to_one), range(4, STEPS + 1))
    assert_same_curve(losses(one), losses(one_to_two), range(4, STEPS + 1))


def records(output) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"}
