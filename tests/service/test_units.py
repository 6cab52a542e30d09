"""Small pieces without a server: the adapter LRU, the inference protocol, the CLI hook, settings, and what the
worker makes of a job (its hyperparameters, trainer command, validation errors, metrics)."""

import argparse

import pytest

from tuneforge.config import TrainConfig
from tuneforge.data.validate import auto_epochs
from tuneforge.service.commands import add_service_commands
from tuneforge.service.file_validation import validation_error
from tuneforge.service.run_metrics import MetricsTail
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job
from tuneforge.service.training_command import resolve_hyperparameters, train_command

pytestmark = pytest.mark.service


def test_cli_hook_registers_serve_worker_keys(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tuneforge")
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 1) and callable(args.func)
    assert callable(parser.parse_args(["worker", "--once"]).func)
    args = parser.parse_args(["keys", "create", "--org", "Bad Name!", "--data-dir", str(tmp_path)])
    assert args.func(args) == 2 and "org name" in capsys.readouterr().err
    args = parser.parse_args(["keys", "create", "--org", "acme", "--data-dir", str(tmp_path)])
    assert args.func(args) == 0 and capsys.readouterr().out.strip().splitlines()[-1].startswith("tf-")


def test_settings_default_to_sqlite_under_the_home_and_accept_postgres_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEFORGE_DATABASE_URL", raising=False)
    settings = Settings.from_env()
    assert settings.url == f"sqlite:///{tmp_path / 'tuneforge.db'}"
    settings = Settings.from_env(database_url="postgresql://u@127.0.0.1:5/db")
    assert settings.url == "postgresql+psycopg://u@127.0.0.1:5/db"


def test_metrics_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []
    path.write_text('{"type": "train", "step": 1}\n{"type": "tr')
    assert tail.read() == [{"type": "train", "step": 1}]
    with open(path, "a") as handle:
        handle.write('ain", "step": 2}\n')
    assert tail.read() == [{"type": "train", "step": 2}]


def test_auto_hyperparameters_resolve_and_errors_name_the_line():
    assert resolve_hyperparameters(
        {"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto", "beta": "auto"}, 100
    ) == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0, "beta": 0.1}
    # An auto batch is the trainer's own default (8), or the whole file when it is smaller.
    assert resolve_hyperparameters({"batch_size": "auto"}, 400)["batch_size"] == TrainConfig().batch_size == 8
    assert resolve_hyperparameters({"batch_size": "auto"}, 5)["batch_size"] == 5
    error = validation_error(
        {"errors": [{"line": 7, "code": "empty_content", "message": "assistant turn is empty"}]}, "training_file"
    )
    assert error["param"] == "training_file" and "line 7: assistant turn is empty" in error["message"]
    # Rows of containers without lines (Parquet, datasets) are named as the validator names them.
    parquet = validation_error({"errors": [{"line": None, "row": 3, "where": "row 3", "code": "empty_content",
                                            "message": "assistant turn is empty"}]}, "training_file")
    assert "training_file: row 3: assistant turn is empty" in parquet["message"] and "None" not in parquet["message"]
    # A file-level problem listed first does not hide the row to open.
    both = validation_error({"errors": [
        {"line": 0, "where": "the file", "code": "too_few_examples", "message": "4 examples; at least 10 are needed"},
        {"line": 3, "where": "line 3", "code": "invalid_json", "message": "not valid JSON"}]}, "training_file")
    assert "training_file: line 3: not valid JSON [invalid_json] (1 more problems)" in both["message"]
    only_file = validation_error({"errors": [{"line": 0, "where": "the file", "code": "too_few_examples",
                                              "message": "4 examples"}]}, "training_file")
    assert "training_file: the file: 4 examples" in only_file["message"]


@pytest.mark.parametrize(("n_examples", "epochs"), [(5, 20), (20, 5), (100, 3), (10_000, 2), (30_000, 1)])
def test_auto_epochs_follow_openais_rule_for_the_validated_number_of_examples(n_examples, epochs):
    resolved = resolve_hyperparameters({"n_epochs": "auto"}, n_examples)
    assert resolved["n_epochs"] == auto_epochs(n_examples) == epochs


def test_auto_epochs_fall_back_to_three_without_a_count_and_given_epochs_are_kept():
    assert resolve_hyperparameters({"n_epochs": "auto"}, None)["n_epochs"] == 3
    assert resolve_hyperparameters({"n_epochs": "auto"}, 0)["n_epochs"] == 3
    assert resolve_hyperparameters({"n_epochs": 7}, 20)["n_epochs"] == 7


def test_train_command_scales_the_trainers_own_learning_rate(tmp_path):
    settings = Settings(data_dir=tmp_path, train_command=["train"], max_steps=4, save_every=2)
    hyper = resolve_hyperparameters({"n_epochs": "auto", "learning_rate_multiplier": 2, "beta": "auto"}, 20)
    job = Job(id="ftjob-1", model="m", training_file="file-t", method="dpo", seed=3, hyperparameters=hyper)
    command = train_command(settings, job, tmp_path / "runs" / "ftjob-1")
    flags = [item for item in command if "=" not in item]  # then key=value settings (keep_checkpoints=3, ...)
    assert command[len(flags):] == ["keep_checkpoints=3"]
    options = dict(zip(flags[1::2], flags[2::2], strict=True))
    assert command[0] == "train" and options["--data"] == str(tmp_path / "files" / "file-t")
    assert options["--method"] == "dpo" and options["--epochs"] == "5" and options["--max-steps"] == "4"
    assert float(options["--lr"]) == 2 * TrainConfig().resolved_learning_rate()
    assert float(options["--beta"]) == TrainConfig().beta
    assert (options["--save-every"], options["--resume"]) == ("2", "auto")
