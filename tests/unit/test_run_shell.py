"""The run shell's promises, which hold for every method because every recipe calls it: the checkpoint rule,
what a stop signal does (also during the last step), resume positions, one progress format that reads the
four formats tuneforge 0.1.0 wrote, and the common summary keys. A one-layer model stands in for a recipe's."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.config import build_config
from tuneforge.errors import UserError
from tuneforge.recipes import run
from tuneforge.runfiles import complete_checkpoints


def config_for(tmp_path, **overrides):
    return build_config({"data": "train.jsonl", "output": str(tmp_path / "out"), "dtype": "float32", **overrides})


def loop(config, *, n_items=40, items_per_step=4, stop_at=None, early_stop_at=None) -> tuple[dict, list[run.Step]]:
    """A recipe in miniature: one pass per step over a linear layer; returns (summary, the steps it ran)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    seen = []
    with run.start(config, model, None, "cpu", torch.float32, n_items=n_items, items_per_step=items_per_step,
                   describe="test", items=f"{n_items} items") as shell:
        for step in run.steps(shell, lambda epoch: [list(range(i, i + items_per_step)) for i in range(0, n_items, items_per_step)]):
            seen.append(step)
            loss = model(torch.ones(len(step.indices), 3)).pow(2).mean()
            loss.backward()
            if stop_at is not None and step.number + 1 == stop_at:
                shell.stop.requested = True  # what SIGTERM does, halfway through this step
            run.optimizer_step(shell, step)
            run.log(shell, step, {"loss": round(float(loss), 6)}, tokens=10 * len(step.indices))
            if early_stop_at is not None and shell.progress.step == early_stop_at:
                shell.status = "early_stopped"
            run.checkpoint_if_due(shell, step)
        return run.finish(shell, {"own_key": 1}), seen


def checkpoint_steps(tmp_path) -> list[int]:
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["type"] == "checkpoint"]


def test_the_checkpoint_rule_every_n_steps_at_epoch_ends_never_after_the_last(tmp_path):
    """10 steps per epoch, save_every 4, 25 steps: 4, 8, 12, 16, 20, 24, plus the epoch ends 10 and 20; not 25."""
    summary, seen = loop(config_for(tmp_path, max_steps=25, save_every=4, keep_checkpoints=20))
    assert checkpoint_steps(tmp_path) == [4, 8, 10, 12, 16, 20, 24]
    assert [p.name for p in complete_checkpoints(tmp_path / "out")][-1] == "step-24"
    assert summary["status"] == "completed" and summary["steps"] == 25 and len(seen) == 25
    assert [(s.epoch, s.index_in_epoch) for s in seen[9:11]] == [(0, 9), (1, 0)]


def test_a_stop_finishes_the_step_checkpoints_it_and_ends_the_run_stopped(tmp_path):
    summary, seen = loop(config_for(tmp_path, max_steps=12, save_every=100), stop_at=5)
    assert len(seen) == 5 and summary["status"] == "stopped" and summary["steps"] == 5
    assert checkpoint_steps(tmp_path) == [5]  # due only because of the stop
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["status"] == "stopped" and saved["own_key"] == 1


def test_a_stop_during_the_last_step_changes_nothing(tmp_path):
    """The run has done all it was asked: it is complete, and there is no checkpoint after the last step
    (which also ends the epoch here: 12 steps of 4 items)."""
    summary, seen = loop(config_for(tmp_path, max_steps=12, save_every=100), n_items=48, stop_at=12)
    assert len(seen) == 12 and summary["status"] == "completed"
    assert checkpoint_steps(tmp_path) == []


def test_early_stop_set_by_the_recipe_ends_the_steps(tmp_path):
    summary, seen = loop(config_for(tmp_path, max_steps=12), early_stop_at=4)
    assert len(seen) == 4 and summary["status"] == "early_stopped"


def test_resume_continues_at_the_checkpoints_position_with_its_counters(tmp_path):
    straight, _ = loop(config_for(tmp_path / "a", max_steps=25, save_every=7, keep_checkpoints=20))
    loop(config_for(tmp_path / "b", max_steps=25, save_every=7, keep_checkpoints=20), stop_at=14)
    resumed, seen = loop(config_for(tmp_path / "b", max_steps=25, save_every=7, keep_checkpoints=20, resume="auto"))
    assert [s.number for s in seen] == list(range(14, 25))
    assert (seen[0].epoch, seen[0].index_in_epoch) == (1, 4)
    assert resumed["resumed_from"].endswith("step-14")
    for key in ("steps", "trained_tokens", "epochs", "final_train_loss"):
        assert resumed[key] == straight[key], key
    records = [json.loads(line) for line in (tmp_path / "b" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 26))


# The four progress shapes tuneforge 0.1.0 wrote into checkpoints (its `state.json` and `manifest.json`).
OLD_SFT = {"step": 6, "epoch": 0, "step_in_epoch": 6, "trained_tokens": 900, "loss_tokens": 60, "train_seconds": 3.5}
OLD_DPO = {"step": 6, "epoch": 0, "step_in_epoch": 6, "trained_tokens": 900, "train_seconds": 3.5}
OLD_REWARD = {"step": 6, "epoch": 0, "step_in_epoch": 6, "trained_tokens": 900}
OLD_GRPO = {"step": 6, "trained_tokens": 900, "order": [3, 1], "sampler": [0, 1, 2]}


@pytest.mark.parametrize("record, method", [(OLD_SFT, "sft"), (OLD_DPO, "dpo"), (OLD_REWARD, "reward")])
def test_progress_written_by_0_1_0_resumes(record, method, tmp_path):
    progress = run.Progress.from_record(record, method, tmp_path)
    assert (progress.step, progress.epoch, progress.step_in_epoch, progress.trained_tokens) == (6, 0, 6, 900)
    assert progress.train_seconds == record.get("train_seconds", 0.0)
    assert progress.loss_tokens == record.get("loss_tokens", 0)


def test_progress_round_trips_through_its_record(tmp_path):
    progress = run.Progress(step=3, epoch=1, step_in_epoch=2, trained_tokens=50, loss_tokens=9, train_seconds=1.25,
                            extra={"sampler": [1, 2]})
    record = progress.to_record("grpo")
    assert record["format"] == run.PROGRESS_FORMAT and record["method"] == "grpo"
    assert run.Progress.from_record(json.loads(json.dumps(record)), "grpo", tmp_path) == progress


@pytest.mark.parametrize("record, method, message", [
    (OLD_GRPO, "grpo", "tuneforge 0.1.0"),
    ({**OLD_SFT, "format": run.PROGRESS_FORMAT + 1}, "sft", "newer tuneforge"),
    ({**OLD_SFT, "format": run.PROGRESS_FORMAT, "method": "dpo"}, "sft", "--method dpo checkpoint"),
])  # fmt: skip
def test_progress_that_cannot_resume_says_why(record, method, message, tmp_path):
    with pytest.raises(UserError, match=message):
        run.Progress.from_record(record, method, tmp_path / "step-6")


def test_every_summary_has_the_common_keys_and_the_methods_own(tmp_path):
    summary, _ = loop(config_for(tmp_path, max_steps=3))
    for key in ("status", "model", "method", "full", "output", "steps", "total_steps", "epochs", "trained_tokens",
                "loss_tokens", "train_seconds", "tokens_per_second", "final_train_loss", "final_valid_loss",
                "n_parameters", "n_trainable_parameters", "device", "dtype", "world_size", "peak_rss_mb",
                "resumed_from", "finished_at", "own_key"):
        assert key in summary, key
    assert summary["trained_tokens"] == 3 * 40 and summary["n_parameters"] == 4


def test_train_and_validation_splits_by_seed_unless_a_validation_file_is_given(tmp_path):
    rows = list(range(20))
    config = config_for(tmp_path, validation_split=0.25, seed=7)
    train, valid = run.train_and_validation(config, lambda path: list(rows))
    assert len(valid) == 5 and sorted(train + valid) == rows
    assert run.train_and_validation(config, lambda path: list(rows)) == (train, valid)
    with_file = config_for(tmp_path, validation_split=0.25, validation_data="valid.jsonl")
    loaded = run.train_and_validation(with_file, lambda path: [path])
    assert loaded == (["train.jsonl"], ["valid.jsonl"])


class RecordingTracker:
    """Stands in for a backend of tuneforge/tracking.py: what the shell hands its trackers, in order."""

    def __init__(self):
        self.calls = []

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def log_params(self, params):
        self.calls.append(("params", params))

    def close(self, status):
        self.calls.append(("close", status))


def test_the_trackers_get_what_metrics_jsonl_gets_at_its_steps_and_the_runs_status(tmp_path, monkeypatch):
    """The config as params first; each train record written (log_every) and each validation record at its
    step; closed once with the run's status (the shell's exit after finish closes nothing twice)."""
    from tuneforge import tracking

    recorder, opened = RecordingTracker(), []

    def open_trackers(config, output, *, resumed_at, enabled=True):
        opened.append((resumed_at, enabled))
        return tracking.Trackers([recorder])

    monkeypatch.setattr(tracking, "open_trackers", open_trackers)
    config = config_for(tmp_path, max_steps=6, log_every=2)
    with run.start(config, torch.nn.Linear(3, 1), None, "cpu", torch.float32, n_items=24, items_per_step=4,
                   describe="test", items="24 items") as shell:
        run.log_valid(shell, {"valid_loss": 2.0})
        for step in run.steps(shell, lambda epoch: [list(range(i, i + 4)) for i in range(0, 24, 4)]):
            run.log(shell, step, {"loss": 1.0 / (step.number + 1), "rewards/margins": 0.5}, tokens=8)
        run.finish(shell, {})
    assert opened == [(None, True)]
    assert recorder.calls[0] == ("params", config.to_dict())
    logged = [(step, values) for kind, step, values in (c for c in recorder.calls if c[0] == "log")]
    written = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged] == [r["step"] for r in written] == [0, 2, 4, 6]
    assert logged[0][1] == {"valid/valid_loss": 2.0}
    for (_, values), record in zip(logged[1:], written[1:], strict=True):
        assert values == {f"train/{key}": float(value) for key, value in record.items() if key not in ("type", "step")}
    assert "train/rewards/margins" in logged[1][1] and "train/tokens_per_second" in logged[1][1]
    assert recorder.calls[-1] == ("close", "completed") and sum(c[0] == "close" for c in recorder.calls) == 1


def test_a_run_that_fails_closes_its_trackers_as_failed(tmp_path, monkeypatch):
    from tuneforge import tracking

    recorder = RecordingTracker()
    monkeypatch.setattr(tracking, "open_trackers", lambda *args, **kwargs: tracking.Trackers([recorder]))
    with pytest.raises(RuntimeError):
        with run.start(config_for(tmp_path, max_steps=2), torch.nn.Linear(3, 1), None, "cpu", torch.float32,
                       n_items=8, items_per_step=4, describe="test", items="8 items"):
            raise RuntimeError("out of memory")
    assert recorder.calls[-1] == ("close", "failed")
