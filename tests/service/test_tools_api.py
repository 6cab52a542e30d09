"""/v1/tuneforge/...: a stored file's validation report and loss-mask preview, a succeeded job's adapter zip and
its exports, over real HTTP against `tuneforge serve` with the fake trainer, validator, preview and export."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import httpx
import pytest
from conftest import Server, chat_rows, fake_env, wait_for, write_jsonl

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    server = Server(root / "data", workers=1, env=fake_env(FAKE_EXPORT_LOG=str(root / "exports.log"))).start()
    server.export_log = root / "exports.log"
    server.keys = {"acme": server.create_key("acme"), "other": server.create_key("other")}
    yield server
    server.stop()


def client(server, org="acme") -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.keys[org]}"}, timeout=60)


@pytest.fixture
def http(server):
    with client(server) as acme:
        yield acme


def upload(http, path) -> str:
    with open(path, "rb") as handle:
        response = http.post("/v1/files", files={"file": (path.name, handle)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def finished_job(http, tmp_path, rows=None, name="train.jsonl") -> dict:
    file_id = upload(http, write_jsonl(tmp_path / name, rows or chat_rows()))
    job = http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "suffix": "tools"}).json()
    return wait_for(lambda: (j := http.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] in (
        "succeeded", "failed", "cancelled") and j, timeout=60)


def slow_job(http, tmp_path) -> dict:
    rows = [{"messages": [{"role": "user", "content": "SLOW"}, {"role": "assistant", "content": "ok"}]}] * 12
    file_id = upload(http, write_jsonl(tmp_path / "slow.jsonl", rows))
    job = http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id}).json()
    wait_for(lambda: http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running", timeout=30)
    return job


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_validate_reports_every_finding_with_its_line_and_fix(http, server, tmp_path):
    good_rows = chat_rows()
    bad = upload(http, write_jsonl(tmp_path / "bad.jsonl", [good_rows[0], {"text": "no messages"}, "not json",
                                                            good_rows[0]]))
    answer = http.post(f"/v1/tuneforge/files/{bad}/validate", params={"method": "supervised"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["object"], body["file_id"], body["filename"], body["method"]) == (
        "tuneforge.validation", bad, "bad.jsonl", "supervised")
    report = body["report"]
    assert report["ok"] is False
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(2, "missing_field"), (3, "invalid_json")]
    assert all(e["fix"] for e in report["errors"])
    assert [(w["line"], w["code"]) for w in report["warnings"]] == [(4, "duplicate")]

    good = upload(http, write_jsonl(tmp_path / "good.jsonl", good_rows))
    report = http.post(f"/v1/tuneforge/files/{good}/validate").json()["report"]
    assert report["ok"] is True and report["n_examples"] == 12 and report["errors"] == []
    # The method decides what a row must hold: chat rows are not preference pairs.
    report = http.post(f"/v1/tuneforge/files/{good}/validate", params={"method": "dpo"}).json()["report"]
    assert report["ok"] is False and report["errors"][0]["message"] == "missing field 'prompt'"

    assert_error(http.post(f"/v1/tuneforge/files/{good}/validate", params={"method": "magic"}), 400, "invalid_request")
    assert_error(http.post("/v1/tuneforge/files/file-nope/validate"), 404, "file_not_found")
    with client(server, "other") as other:
        assert_error(other.post(f"/v1/tuneforge/files/{good}/validate"), 404, "file_not_found")
        assert_error(other.post(f"/v1/tuneforge/files/{good}/preview"), 404, "file_not_found")
    assert httpx.post(f"{server.url}/v1/tuneforge/files/{good}/validate").status_code == 401


def test_preview_lists_each_token_and_whether_it_is_trained(http, tmp_path):
    good = upload(http, write_jsonl(tmp_path / "good.jsonl", chat_rows()))
    answer = http.post(f"/v1/tuneforge/files/{good}/preview", params={"n": 2, "model": BASE})
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["object"] == "tuneforge.preview" and preview["model"] == BASE
    first, second = preview["examples"]
    assert (first["line"], second["line"]) == (1, 2)
    assert "".join(t["text"] for t in first["tokens"] if t["trained"]).split() == ["0", "plus", "0", "is", "0.",
                                                                                 "<|end|>"]
    assert first["n_trained"] == sum(t["trained"] for t in first["tokens"])
    # A fine-tuned model previews with its base model's tokenizer; a model the server does not have is refused.
    ft = http.post(f"/v1/tuneforge/files/{good}/preview", params={"model": f"ft:{BASE}:acme:x:abcdef12"}).json()
    assert ft["model"] == BASE
    assert_error(http.post(f"/v1/tuneforge/files/{good}/preview", params={"model": "/etc"}), 400,
                 "model_not_available")
    assert_error(http.post(f"/v1/tuneforge/files/{good}/preview", params={"n": 0}), 400, "invalid_request")
    # The verb's own refusal (an unreadable row) is the answer's message.
    broken = upload(http, write_jsonl(tmp_path / "broken.jsonl", ["not json"]))
    error = assert_error(http.post(f"/v1/tuneforge/files/{broken}/preview"), 400, "invalid_file")
    assert "line 1" in error["message"]

    pairs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 3
    dpo = upload(http, write_jsonl(tmp_path / "pairs.jsonl", pairs))
    preview = http.post(f"/v1/tuneforge/files/{dpo}/preview", params={"method": "dpo", "n": 1}).json()
    assert [e["title"] for e in preview["examples"]] == ["chosen (line 1)", "rejected (line 1)"]


def test_adapter_zip_holds_the_fine_tune_and_nothing_of_the_run(http, server, tmp_path):
    job = finished_job(http, tmp_path)
    assert job["status"] == "succeeded"
    run_dir = server.data_dir / "runs" / job["id"]
    answer = http.get(f"/v1/tuneforge/jobs/{job['id']}/adapter")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert "adapter.zip" in answer.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    names = set(archive.namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "summary.json", "eval_report.md"} <= names
    assert not names & {"metrics.jsonl", "train.log", "pid"} and not any("/" in name for name in names)
    assert archive.read("adapter_config.json") == (run_dir / "adapter_config.json").read_bytes()
    assert http.get(f"/v1/tuneforge/jobs/{job['id']}/adapter").content == answer.content  # served from its cache

    with client(server, "other") as other:
        assert_error(other.get(f"/v1/tuneforge/jobs/{job['id']}/adapter"), 404, "fine_tuning_job_not_found")
        assert_error(other.post(f"/v1/tuneforge/jobs/{job['id']}/export"), 404, "fine_tuning_job_not_found")
    assert_error(http.get("/v1/tuneforge/jobs/ftjob-nope/adapter"), 404, "fine_tuning_job_not_found")

    running = slow_job(http, tmp_path)
    error = assert_error(http.get(f"/v1/tuneforge/jobs/{running['id']}/adapter"), 409, "job_not_succeeded")
    assert "running" in error["message"]
    assert_error(http.post(f"/v1/tuneforge/jobs/{running['id']}/export", params={"format": "gguf"}), 409,
                 "job_not_succeeded")
    http.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel")
    assert not (server.data_dir / "runs" / running["id"] / "exports").exists()


def test_export_runs_once_per_format_and_serves_the_cached_result(http, server, tmp_path):
    job = finished_job(http, tmp_path)
    run_dir = server.data_dir / "runs" / job["id"]
    runs = lambda: [line for line in server.export_log.read_text().splitlines() if job["id"] in line]  # noqa: E731

    # Two requests at once: the second waits for the first one's export instead of running its own.
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        http.post(f"/v1/tuneforge/jobs/{job['id']}/export", params={"format": "gguf"}))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200] and answers[0].content == answers[1].content
    gguf = answers[0].content
    assert gguf.startswith(b"GGUF") and json.loads(gguf[4:])["adapter"] == {"peft_type": "LORA"}
    assert answers[0].headers["content-disposition"].endswith('.gguf"')
    assert runs() == [f"gguf {run_dir}"]
    assert (run_dir / "exports" / "model.gguf").read_bytes() == gguf

    merged = http.post(f"/v1/tuneforge/jobs/{job['id']}/export", params={"format": "merged"})
    assert merged.status_code == 200 and merged.headers["content-type"] == "application/zip"
    assert set(zipfile.ZipFile(io.BytesIO(merged.content)).namelist()) == {"config.json", "model.safetensors"}
    assert http.post(f"/v1/tuneforge/jobs/{job['id']}/export", params={"format": "merged"}).content == merged.content
    assert runs() == [f"gguf {run_dir}", f"hf {run_dir}"]  # each format exported once
    assert sorted(p.name for p in (run_dir / "exports").iterdir()) == ["merged.zip", "model.gguf"]  # no staging left

    assert_error(http.post(f"/v1/tuneforge/jobs/{job['id']}/export", params={"format": "onnx"}), 400,
                 "invalid_request")


def test_a_refused_export_says_why_and_leaves_nothing_behind(start_server, tmp_path):
    server = start_server(env=fake_env(FAKE_EXPORT_REFUSE="GGUF cannot hold this architecture (bert)"))
    server.keys = {"acme": server.create_key("acme")}
    with client(server) as http:
        job = finished_job(http, tmp_path)
        error = assert_error(http.post(f"/v1/tuneforge/jobs/{job['id']}/export"), 400, "export_refused")
        assert "GGUF cannot hold this architecture (bert)" in error["message"]
    assert list((server.data_dir / "runs" / job["id"] / "exports").iterdir()) == []


@pytest.mark.e2e
def test_real_preview_marks_the_answer_and_its_end_of_turn(start_server, tmp_path):
    """`tuneforge preview --json` itself, with the embedded model's tokenizer and chat template."""
    env = fake_env()
    env.pop("TUNEFORGE_PREVIEW_COMMAND")
    server = start_server(workers=0, env=env)
    server.keys = {"acme": server.create_key("acme")}
    with client(server) as http:
        file_id = upload(http, write_jsonl(tmp_path / "t.jsonl", chat_rows(3)))
        answer = http.post(f"/v1/tuneforge/files/{file_id}/preview", params={"n": 1, "model": BASE})
    assert answer.status_code == 200, answer.text
    (example,) = answer.json()["examples"]
    trained = "".join(t["text"] for t in example["tokens"] if t["trained"])
    assert trained == "0 plus 0 is 0.<|im_end|>"
    assert "What is 0 plus 0?" in "".join(t["text"] for t in example["tokens"] if not t["trained"])
