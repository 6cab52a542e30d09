"""What a job runs beyond training, over real HTTP with the official SDK and the fake trainer / compare:
the measured estimate and progress, the comparison and forgetting gate after training with its report, the
organisation's policy for a fine-tune that forgets, continued training from an ft: model or a checkpoint,
checkpoints as models, and tuneforge's own options in the create body."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import ROOT, Server, chat_rows, fake_env, wait_for, write_jsonl

from tuneforge.data.validate import auto_epochs

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    env = fake_env(FAKE_STEP_SECONDS="0.3", TUNEFORGE_GPUS="none", TUNEFORGE_MAX_CPU_PROCESSES="2")
    server = Server(root / "data", workers=1, env=env).start()
    server.keys = {"acme": server.create_key("acme")}
    yield server
    server.stop()


@pytest.fixture
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["acme"], max_retries=0)


def upload(sdk, path, rows):
    return sdk.files.create(file=write_jsonl(path, rows).open("rb"), purpose="fine-tune")


def finished(sdk, job_id, timeout=60):
    return wait_for(
        lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout,
    )


def trainer_argv(server, job_id) -> list[str]:
    return json.loads((server.data_dir / "runs" / job_id / "argv.json").read_text())


def compare_argv(server, job_id) -> list[str]:
    return json.loads((server.data_dir / "runs" / job_id / "report" / "report.json").read_text())["argv"]


def test_a_default_job_is_estimated_measured_and_reported(server, sdk, tmp_path):
    training = upload(sdk, tmp_path / "train.jsonl", chat_rows(12))
    validation = upload(sdk, tmp_path / "valid.jsonl", chat_rows(3))
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, validation_file=validation.id)

    running = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status == "running" and j)
    # The validator's measured estimate (the fake claims 6 s per example for 3 epochs), scaled to the run's epochs.
    assert running.estimated_finish is not None and running.estimated_finish >= running.created_at
    assert running.hyperparameters.n_epochs == auto_epochs(12)  # OpenAI's rule: 12 examples -> 8 epochs
    later = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status != "running" or (
        j.estimated_finish != running.estimated_finish and j))
    assert later.status != "running" or later.estimated_finish > 0  # moved by the steps' pace

    job = finished(sdk, job.id)
    assert job.status == "succeeded", job.error
    assert "--epochs" in (argv := trainer_argv(server, job.id)) and argv[argv.index("--epochs") + 1] == "8"
    assert job.estimated_finish is None  # OpenAI's: only while the job runs
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert steps and all(s["total_steps"] == 6 for s in steps)
    assert any(e.message.startswith("Step 3/6") for e in events)
    assert any(e.message.startswith("Estimated training time") for e in events)

    # The comparison ran on the validation file, with shots from the training file and the default gates.
    argv = compare_argv(server, job.id)
    assert argv[argv.index("--data") + 1].endswith(validation.id) and argv[argv.index("--shots") + 1] == "4"
    assert argv[argv.index("--max-forgetting") + 1] == "5.0" and "--max-general-drop" in argv
    extra = job.model_extra
    assert extra["eval"]["fine_tuned"]["exact_match"] == 0.9 and extra["eval"]["few_shot"]["exact_match"] == 0.2
    assert extra["forgetting"]["passed"] is True and extra["forgetting"]["perplexity_change_pct"] == 1.0
    assert extra["verdict"].startswith("fake verdict") and extra["training_metrics"]["final_train_loss"] == 0.3
    assert any(e.message.startswith("Evaluation: fake verdict") for e in events)
    names = {sdk.files.retrieve(file_id).filename for file_id in job.result_files}
    assert names == {"step_metrics.csv", "report.html", "report.json"}
    assert "exact match 0.9" in sdk.files.content(extra["report_file"]).text


def test_a_fine_tune_that_forgets_is_blocked_or_published_as_chosen(server, sdk, tmp_path):
    server_env = fake_env(FAKE_STEP_SECONDS="0.02", FAKE_PERPLEXITY_CHANGE="9.0")
    forgetful = Server(tmp_path / "data", workers=1, env=server_env).start()
    try:
        key = forgetful.create_key("acme")
        client = openai.OpenAI(base_url=forgetful.url + "/v1", api_key=key, max_retries=0)
        training = upload(client, tmp_path / "train.jsonl", chat_rows(12))
        blocked = finished(client, client.fine_tuning.jobs.create(model=BASE, training_file=training.id).id)
        assert blocked.status == "failed" and blocked.error.code == "forgetting_gate_failed"
        assert blocked.fine_tuned_model is None and blocked.model_extra["forgetting"]["passed"] is False
        assert "was not published" in blocked.error.message
        assert blocked.model_extra["report_file"] in blocked.result_files  # the report says why
        assert blocked.model_extra["eval"] is None  # no validation file: forgetting only

        published = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, extra_body={"tuneforge": {"on_forgetting_failure": "publish"}}
        )
        published = finished(client, published.id)
        assert published.status == "succeeded" and published.fine_tuned_model
        warnings = [e.message for e in client.fine_tuning.jobs.list_events(published.id, limit=50) if e.level == "warn"]
        assert any("FAILED the forgetting gate" in message for message in warnings)

        # The organisation's own policy wins over a job's wish.
        subprocess.run(
            [sys.executable, "-m", "tuneforge.service", "orgs", "policy", "--org", "acme", "--on-forgetting-failure",
             "block", "--data-dir", str(forgetful.data_dir)],
            env=forgetful.env, cwd=ROOT, check=True, capture_output=True,
        )
        overruled = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, extra_body={"tuneforge": {"on_forgetting_failure": "publish"}}
        )
        assert finished(client, overruled.id).status == "failed"

        # A looser gate of the job's own passes the same fine-tune.
        loose = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, extra_body={"tuneforge": {"max_forgetting": 10}}
        )
        assert finished(client, loose.id).status == "succeeded"
    finally:
        forgetful.stop()


def test_sft_then_dpo_and_continued_training_from_a_checkpoint(server, sdk, tmp_path):
    training = upload(sdk, tmp_path / "train.jsonl", chat_rows(12))
    sft = finished(sdk, sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, suffix="sft").id)
    assert sft.status == "succeeded"

    pairs = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    preferences = upload(sdk, tmp_path / "pairs.jsonl", pairs)
    dpo = sdk.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=preferences.id, suffix="dpo", method={"type": "dpo"}
    )
    dpo = finished(sdk, dpo.id)
    assert dpo.status == "succeeded", dpo.error
    argv = trainer_argv(server, dpo.id)
    assert argv[argv.index("--method") + 1] == "dpo" and argv[argv.index("--model") + 1] == BASE
    assert f"init_adapter={server.data_dir / 'runs' / sft.id}" in argv  # the SFT adapter: start and reference
    assert dpo.model == sft.fine_tuned_model and dpo.fine_tuned_model.startswith(f"ft:{BASE}:acme:dpo:")
    lineage = dpo.model_extra["lineage"]
    assert lineage["base_model"] == BASE and lineage["parent_job"] == sft.id and lineage["parents"] == [sft.id]

    checkpoint = next(iter(sdk.fine_tuning.jobs.checkpoints.list(sft.id)))
    name = checkpoint.fine_tuned_model_checkpoint
    reply = sdk.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == f"echo({BASE}+adapter): hi"  # the checkpoint's adapter folder
    assert sdk.models.retrieve(name).id == name

    continued = finished(sdk, sdk.fine_tuning.jobs.create(model=name, training_file=training.id).id)
    assert continued.status == "succeeded"
    step = checkpoint.step_number
    expected = server.data_dir / "runs" / sft.id / "checkpoints" / f"step-{step}" / "adapter"
    assert f"init_adapter={expected}" in trainer_argv(server, continued.id)
    assert continued.model_extra["lineage"]["parent_checkpoint_step"] == step

    # A checkpoint the trainer pruned is no longer listed, nor a model.
    shutil.rmtree(expected.parent)
    listed = [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(sft.id)]
    assert step not in listed and listed
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model=name, training_file=training.id)
    assert refused.value.body["param"] == "model"


def test_tuneforge_options_reach_the_trainer_and_bad_ones_are_400s_naming_the_key(server, sdk, tmp_path):
    training = upload(sdk, tmp_path / "train.jsonl", chat_rows(12))
    options = {"lora_r": 32, "lora_alpha": 64, "max_length": 1024, "forgetting_guard": "off", "evaluate": False}
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, extra_body={"tuneforge": options})
    assert job.model_extra["tuneforge"] == options
    job = finished(sdk, job.id)
    argv = trainer_argv(server, job.id)
    assert {"lora_r=32", "lora_alpha=64", "max_length=1024", "forgetting_guard=off"} <= set(argv)
    assert not any(a.startswith("evaluate=") for a in argv)  # the service's own key stays with the service
    assert not (server.data_dir / "runs" / job.id / "report").exists() and job.model_extra["verdict"] is None

    def refused(options, method=None):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, extra_body={"tuneforge": options},
                                        **({"method": method} if method else {}))
        return caught.value.body

    error = refused({"lora_rr": 8})
    assert error["param"] == "tuneforge.lora_rr" and "did you mean 'lora_r'" in error["message"]
    assert refused({"lora_r": "many"})["param"] == "tuneforge.lora_r"
    assert refused({"lora_r": 0})["param"] == "tuneforge.lora_r"
    assert refused({"epochs": 3})["param"] == "tuneforge.epochs"  # hyperparameters.n_epochs says it
    assert refused({"reward": "os:system"})["param"] == "tuneforge.reward"  # no code from the client
    assert refused({"chat_template": "/etc/passwd"})["param"] == "tuneforge.chat_template"
    assert refused({"replay": "/etc/passwd"})["param"] == "tuneforge.replay"
    assert refused({"n_processes": 0})["param"] == "tuneforge.n_processes"
    # A key its method never reads is an error, as on the command line.
    assert refused({"loss_type": "ipo"})["param"] == "tuneforge.loss_type"
    assert refused({"on_forgetting_failure": "maybe"})["param"] == "tuneforge.on_forgetting_failure"


def test_a_job_gets_the_processes_it_asks_for_or_fails_saying_why(server, sdk, tmp_path):
    training = upload(sdk, tmp_path / "train.jsonl", chat_rows(12))
    two = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id,
                                      extra_body={"tuneforge": {"n_processes": 2, "evaluate": False}})
    assert finished(sdk, two.id).status == "succeeded"
    argv = trainer_argv(server, two.id)
    assert argv[argv.index("--nproc") + 1] == "2"  # tuneforge train --nproc 2: torchrun
    three = finished(sdk, sdk.fine_tuning.jobs.create(
        model=BASE, training_file=training.id, extra_body={"tuneforge": {"n_processes": 3}}).id)
    assert three.status == "failed" and three.error.code == "insufficient_devices"
    assert three.error.param == "tuneforge.n_processes" and "no GPU and allows 2 CPU" in three.error.message


def test_a_reinforcement_job_trains_grpo_with_its_grader(server, sdk, tmp_path):
    prompts = [{"messages": [{"role": "user", "content": f"say {i}"}], "reference_answer": str(i)} for i in range(12)]
    training = upload(sdk, tmp_path / "prompts.jsonl", prompts)
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.reference_answer}}", "operation": "eq"}
    job = sdk.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader,
                                                            "hyperparameters": {"compute_multiplier": 2}}},
        extra_body={"tuneforge": {"max_new_tokens": 16, "kl_beta": 0.02}},  # GRPO's own keys
    )
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.type == "string_check"
    job = finished(sdk, job.id)
    argv = trainer_argv(server, job.id)
    assert argv[argv.index("--method") + 1] == "grpo" and "group_size=8" in argv
    assert {"max_new_tokens=16", "kl_beta=0.02"} <= set(argv)
    grader_file = next(a for a in argv if a.startswith("grader=")).removeprefix("grader=")
    assert json.loads(open(grader_file).read())["reference"] == "{{item.reference_answer}}"

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.create(
            model=BASE, training_file=training.id,
            method={"type": "reinforcement", "reinforcement": {"grader": {**grader, "operation": "almost"}}},
        )
    assert caught.value.body["param"].startswith("method.reinforcement.grader")


def test_an_old_database_gains_the_new_columns(tmp_path):
    """A database written before the job's options, lineage and evaluation existed opens and serves."""
    data = tmp_path / "old"
    data.mkdir()
    connection = sqlite3.connect(data / "tuneforge.db")
    connection.execute("CREATE TABLE orgs (id VARCHAR(64) PRIMARY KEY, name VARCHAR(64) UNIQUE, created_at BIGINT)")
    connection.execute(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id VARCHAR(64) UNIQUE, org_id VARCHAR(64), "
        "model VARCHAR(256), training_file VARCHAR(64), validation_file VARCHAR(64), method VARCHAR(16), "
        "hyperparameters JSON, suffix VARCHAR(64), seed BIGINT, job_metadata JSON, status VARCHAR(32), error JSON, "
        "ft_name VARCHAR(512), fine_tuned_model VARCHAR(512), model_deleted BOOLEAN, trained_tokens BIGINT, "
        "result_files JSON, report_file VARCHAR(64), created_at BIGINT, finished_at BIGINT, lease_owner VARCHAR(128), "
        "lease_expires_at FLOAT, attempts INTEGER, idempotency_key VARCHAR(256), request_hash VARCHAR(64))"
    )
    connection.execute("INSERT INTO orgs VALUES ('org-1', 'acme', 0)")
    connection.execute(
        "INSERT INTO jobs (id, org_id, model, training_file, method, hyperparameters, seed, status, ft_name, "
        "model_deleted, result_files, created_at, attempts) VALUES ('ftjob-old', 'org-1', 'smollm2-135m-instruct', "
        "'file-x', 'supervised', '{}', 1, 'failed', 'ft:x', 0, '[]', 1, 1)"
    )
    connection.commit()
    connection.close()
    old = Server(data, workers=0, env=fake_env()).start()
    try:
        key = old.create_key("acme")
        job = httpx.get(f"{old.url}/v1/fine_tuning/jobs/ftjob-old", headers={"Authorization": f"Bearer {key}"})
        assert job.status_code == 200 and job.json()["lineage"] is None and job.json()["eval"] is None
    finally:
        old.stop()
