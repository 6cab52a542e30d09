"""report_to: each tracker holds what metrics.jsonl holds, read back with the backend's own reader.

TensorBoard through its EventAccumulator, MLflow's file store through MlflowClient, after a real SFT run
on the tiny model; trackio and W&B (offline) in a child process, whose stdout must stay the summary's;
a missing package is one line before the model loads; a resumed run's curves read as one run's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tuneforge import tracking
from tuneforge.cli import main
from tuneforge.config import TRACKERS, build_config
from tuneforge.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def records(output: Path, kind: str) -> list[dict]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def curve(output: Path, kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(output, kind)]


def tensorboard_events(output: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    return events


def tensorboard_curve(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_same_curve(stored: list[tuple[int, float]], logged: list[tuple[int, float]]) -> None:
    """The same steps, and the same values up to float32 (TensorBoard's scalar type)."""
    assert [step for step, _ in stored] == [step for step, _ in logged]
    assert [value for _, value in stored] == pytest.approx([value for _, value in logged], rel=1e-6)


def mlflow_client(output: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(output / "mlruns").resolve().as_uri())


def only_mlflow_run(client):
    experiment = client.get_experiment_by_name("tuneforge")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def mlflow_curve(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def tracked_sft_run(tmp_path_factory, tiny_model_dir):
    """A 4-step SFT run with validation every 2 steps and exact match at the end, tracked by both."""
    from tuneforge.recipes.sft import train

    folder = tmp_path_factory.mktemp("tracked")
    rows = [{"messages": [{"role": "user", "content": f"what is {LETTERS[i % 25]}"},
                          {"role": "assistant", "content": LETTERS[i % 25 + 1]}]} for i in range(24)]
    data, test = write_jsonl(folder / "train.jsonl", rows), write_jsonl(folder / "test.jsonl", rows[:3])
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(folder / "out"),
                           "max_steps": 4, "batch_size": 4, "learning_rate": 3e-2, "dtype": "float32",
                           "validation_split": 0.25, "eval_every": 2, "eval_data": str(test),
                           "report_to": "tensorboard,mlflow"})
    return config, train(config), folder / "out"


def test_tensorboard_event_files_hold_the_loss_curve_of_metrics_jsonl(tracked_sft_run):
    pytest.importorskip("tensorboard")
    config, summary, output = tracked_sft_run
    events = tensorboard_events(output)
    for key in ("loss", "lr", "tokens_per_second"):
        assert_same_curve(tensorboard_curve(events, f"train/{key}"), curve(output, "train", key))
    assert [step for step, _ in curve(output, "train", "loss")] == [1, 2, 3, 4]
    assert_same_curve(tensorboard_curve(events, "valid/valid_loss"), curve(output, "valid", "valid_loss"))
    assert_same_curve(tensorboard_curve(events, "eval/exact_match"), [(4, summary["eval"]["exact_match"])])

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lora_r"].number_value == config.lora_r and hparams["method"].string_value == "sft"
    assert hparams["report_to"].string_value == '["tensorboard", "mlflow"]'


def test_mlflow_file_store_in_the_run_folder_holds_the_same_curves_and_the_config(tracked_sft_run):
    pytest.importorskip("mlflow")
    config, summary, output = tracked_sft_run
    client = mlflow_client(output)
    run = only_mlflow_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "out"
    assert run.data.tags["tuneforge.output"] == str(output.resolve())
    assert mlflow_curve(client, run.info.run_id, "train/loss") == curve(output, "train", "loss")
    assert mlflow_curve(client, run.info.run_id, "valid/valid_loss") == curve(output, "valid", "valid_loss")
    assert mlflow_curve(client, run.info.run_id, "eval/exact_match") == [(4, summary["eval"]["exact_match"])]
    params = run.data.params
    assert params["lora_r"] == str(config.lora_r) and params["learning_rate"] == "0.03" and params["method"] == "sft"
    assert set(params) == set(config.to_dict())


def test_a_missing_tracker_package_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    """`--model` names no model at all: had anything tried to load it, the error would be another."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    data = write_jsonl(tmp_path / "ok.jsonl", ['{"prompt": "a", "completion": "b"}'] * 12)
    code = main(["train", "--data", str(data), "--model", str(tmp_path / "no-model"), "--output",
                 str(tmp_path / "out"), "report_to=tensorboard,mlflow,wandb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err == ("tuneforge: error: report_to=tensorboard,mlflow,wandb: tensorboard needs `pip install "
                   "tensorboard`, wandb needs `pip install wandb`")
    assert not (tmp_path / "out").exists()


def test_a_recipe_called_directly_meets_the_same_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    config = build_config({"data": "x.jsonl", "report_to": ["mlflow"]})
    with pytest.raises(UserError, match=r"mlflow needs `pip install mlflow`"):
        tracking.open_trackers(config, tmp_path, resumed_at=None)


def test_ranks_other_than_0_and_runs_without_report_to_track_nothing(tmp_path):
    tracked = build_config({"data": "x.jsonl", "report_to": "tensorboard"})
    assert tracking.open_trackers(tracked, tmp_path, resumed_at=None, enabled=False).trackers == []
    assert tracking.open_trackers(build_config({"data": "x.jsonl"}), tmp_path, resumed_at=None).trackers == []
    assert not (tmp_path / "tensorboard").exists()


def test_every_tracker_the_config_accepts_has_its_class_and_install_line():
    assert tuple(tracking.BACKENDS) == TRACKERS and tuple(tracking.INSTALL) == TRACKERS


def test_scalars_are_the_numbers_of_a_record_under_its_kind():
    record = {"type": "train", "step": 3, "epoch": 0.5, "loss": 1.25, "rewards/accuracies": 1, "note": "x",
              "flag": True, "missing": None}
    assert tracking.scalars("train", record) == {"train/epoch": 0.5, "train/loss": 1.25,
                                                 "train/rewards/accuracies": 1.0}
    forgetting = {"corpus": {"name": "pydoc", "sha256": "ab"}, "perplexity_change_pct": 2.5, "passed": True,
                  "agreement": {"exact": 0.75}}
    assert tracking.scalars("forgetting", forgetting) == {"forgetting/perplexity_change_pct": 2.5,
                                                          "forgetting/agreement/exact": 0.75}
    assert tracking.scalars("eval", None) == {}


def test_a_resumed_run_reads_as_one_run_in_tensorboard_and_mlflow(tmp_path):
    """The first attempt logs 25 steps; resuming from its step-14 checkpoint (as after a kill -9 at step 25)
    trims metrics.jsonl to step 14 and logs 15-25 again. TensorBoard purges the first attempt's 15-25;
    MLflow continues the same run, where the last value of each step is the resumed attempt's."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tests.unit.test_run_shell import config_for, loop

    common = dict(max_steps=25, save_every=7, keep_checkpoints=20, report_to="tensorboard,mlflow")
    loop(config_for(tmp_path, **common))
    output = tmp_path / "out"
    loop(config_for(tmp_path, **common, resume=str(output / "checkpoints" / "step-14")))
    logged = curve(output, "train", "loss")
    assert [step for step, _ in logged] == list(range(1, 26))
    assert_same_curve(tensorboard_curve(tensorboard_events(output), "train/loss"), logged)
    client = mlflow_client(output)
    run = only_mlflow_run(client)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted({m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}.items()) == logged


CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from tests.unit.test_run_shell import config_for, loop
from pathlib import Path
summary, _ = loop(config_for(Path({tmp!r}), max_steps=3, report_to="trackio,wandb", run_name="child"))
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("tuneforge", "child")
print(json.dumps({{"trackio": [[r["step"], r["train/loss"]] for r in logs if "train/loss" in r],
                  "trackio_config": SQLiteStorage.get_run_config("tuneforge", "child")}}))
"""


def test_trackio_locally_and_wandb_offline_with_stdout_left_to_tuneforge(tmp_path):
    """In a child process: trackio's directory is fixed when it is imported, and what both libraries print
    must not reach stdout (where `tuneforge train` prints its one summary line)."""
    pytest.importorskip("trackio")
    pytest.importorskip("wandb")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(TRACKIO_DIR=str(tmp_path / "trackio"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), tmp=str(tmp_path))], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.splitlines()  # only the child's own print
    found = json.loads(line)
    assert found["trackio"] == [list(point) for point in curve(tmp_path / "out", "train", "loss")]
    assert found["trackio_config"]["lora_r"] == 16 and found["trackio_config"]["method"] == "sft"
    (offline,) = (tmp_path / "out" / "wandb").glob("offline-run-*")  # offline, in the run folder
    assert list(offline.glob("run-*.wandb"))


class FakeWandb(types.ModuleType):
    """What WandbTracker hands wandb, without wandb."""

    def __init__(self):
        super().__init__("wandb")
        self.calls: list = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        fake = self

        class Run:
            config = types.SimpleNamespace(update=lambda values, allow_val_change: fake.calls.append(("config", values)))

            def log(self, values, step):
                fake.calls.append(("log", values, step))

            def finish(self, exit_code):
                fake.calls.append(("finish", exit_code))

        return Run()


@pytest.mark.parametrize("wandb_mode, expected_mode", [(None, "offline"), ("online", None)])
def test_wandb_is_offline_unless_wandb_mode_says_otherwise(tmp_path, monkeypatch, wandb_mode, expected_mode):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    if wandb_mode:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    config = build_config({"data": "x.jsonl", "report_to": "wandb", "project": "tickets"})
    trackers = tracking.open_trackers(config, tmp_path / "run-7", resumed_at=None)
    trackers.log_params({"lora_r": 16, "report_to": ["wandb"]})
    trackers.log({"train/loss": 0.5}, step=1)
    trackers.close("failed")
    trackers.close("failed")  # a second close (the shell's exit after finish) does nothing
    (_, init), config_call, log_call, finish_call = fake.calls
    assert init["mode"] == expected_mode and init["dir"] == str(tmp_path / "run-7")
    assert init["project"] == "tickets" and init["name"] == "run-7"
    assert config_call == ("config", {"lora_r": 16, "report_to": '["wandb"]'})
    assert log_call == ("log", {"train/loss": 0.5}, 1) and finish_call == ("finish", 1)
