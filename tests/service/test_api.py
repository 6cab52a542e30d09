"""The API's contract, driven over real HTTP against `tuneforge serve` with a fake trainer (fast)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time

import httpx
import openai
import pytest
from conftest import Server, chat_rows, fake_env, wait_for, write_jsonl

from tuneforge.data.validate import auto_epochs

pytestmark = pytest.mark.service
MAX_UPLOAD = 50_000
BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    server = Server(root / "data", workers=1, env=fake_env(TUNEFORGE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD))).start()
    server.keys = {"acme": server.create_key("acme"), "other": server.create_key("other")}
    yield server
    server.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.keys['acme']}"}) as client:
        yield client


@pytest.fixture
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["acme"], max_retries=0)


def upload(http, path, purpose="fine-tune"):
    with open(path, "rb") as handle:
        return http.post("/v1/files", files={"file": (path.name, handle)}, data={"purpose": purpose})


def wait_status(http, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=30):
    return wait_for(
        lambda: (job := http.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] in statuses and job, timeout
    )


def assert_envelope(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def test_requests_without_a_valid_key_answer_401(server):
    assert_envelope(httpx.get(server.url + "/v1/files"), 401, "missing_api_key")
    assert_envelope(
        httpx.get(server.url + "/v1/fine_tuning/jobs", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_keys_are_stored_only_as_hashes(server):
    database = (server.data_dir / "tuneforge.db").read_bytes()
    for key in server.keys.values():
        assert key.encode() not in database
    with sqlite3.connect(server.data_dir / "tuneforge.db") as db:
        assert db.execute("select count(*) from api_keys").fetchone()[0] >= 2


def test_files_are_stored_by_id_not_by_name(http, server, tmp_path):
    path = write_jsonl(tmp_path / "..%2f..%2fevil name.jsonl", chat_rows(2))
    with open(path, "rb") as handle:
        response = http.post("/v1/files", files={"file": ("../../evil.jsonl", handle)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["id"].startswith("file-") and stored["filename"] == "evil.jsonl"
    assert stored["bytes"] == path.stat().st_size
    assert sorted(p.name for p in (server.data_dir / "files").iterdir() if p.name == stored["id"]) == [stored["id"]]
    assert not list(server.data_dir.parent.glob("evil*"))
    assert http.get(f"/v1/files/{stored['id']}/content").content == path.read_bytes()
    assert http.get(f"/v1/files/{stored['id']}").json()["filename"] == "evil.jsonl"
    assert any(f["id"] == stored["id"] for f in http.get("/v1/files").json()["data"])
    assert http.delete(f"/v1/files/{stored['id']}").json() == {"id": stored["id"], "object": "file", "deleted": True}
    assert_envelope(http.get(f"/v1/files/{stored['id']}"), 404)
    assert not (server.data_dir / "files" / stored["id"]).exists()


def test_upload_rules(http, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("hello\n")
    assert_envelope(upload(http, text), 400, "invalid_file_format")
    assert_envelope(
        upload(http, write_jsonl(tmp_path / "a.jsonl", chat_rows(1)), purpose="assistants"), 400, "invalid_purpose"
    )
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * (MAX_UPLOAD * 2)}]}) + "\n")
    assert_envelope(upload(http, big), 413, "file_too_large")
    assert_envelope(http.post("/v1/files", data={"purpose": "fine-tune"}), 400)  # no file at all


def test_upload_size_is_enforced_while_streaming_without_content_length(http, tmp_path):
    body = b"x" * (MAX_UPLOAD + 10_000)

    def chunks():  # a generator body is sent chunked, so the server can't know its size up front
        boundary = b"--bnd\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]
        yield b"\r\n--bnd--\r\n"

    response = http.post("/v1/files", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=bnd"})
    assert_envelope(response, 413, "file_too_large")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"training_file": "file-x"}, "model"),
        ({"model": BASE}, "training_file"),
        ({"model": BASE, "training_file": "file-x", "bogus": 1}, "bogus"),
        ({"model": BASE, "training_file": "file-x", "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"model": BASE, "training_file": "file-x", "hyperparameters": {"n_epochs": "lots"}}, None),
        ({"model": BASE, "training_file": "file-x", "method": {"type": "rl"}}, "method.type"),
        ({"model": BASE, "training_file": "file-x", "suffix": "bad suffix!"}, "suffix"),
        ({"model": BASE, "training_file": "file-x"}, "training_file"),
        ({"model": "gpt-5", "training_file": "file-x"}, "model"),
        ([1, 2], None),
    ],
)
def test_malformed_job_requests_answer_400_in_openai_envelope(http, body, param):
    error = assert_envelope(http.post("/v1/fine_tuning/jobs", json=body), 400)
    if param:
        assert error["param"] == param or (error["param"] or "").startswith(param), error


def test_garbage_bodies_and_unknown_routes_never_500(http):
    assert_envelope(
        http.post("/v1/fine_tuning/jobs", content=b"{not json", headers={"Content-Type": "application/json"}), 400
    )
    assert_envelope(http.post("/v1/chat/completions", json={"model": BASE, "messages": "hi"}), 400)
    assert_envelope(http.post("/v1/chat/completions", json={"model": BASE, "messages": []}), 400)
    assert_envelope(http.get("/v1/fine_tuning/jobs", params={"limit": "many"}), 400)
    assert_envelope(http.get("/v1/fine_tuning/jobs", params={"after": "ftjob-missing"}), 404)
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.get("/v1/fine_tuning/jobs/ftjob-missing/events"), 404)


def test_full_job_on_fake_trainer_with_sdk(sdk, http, tmp_path):
    training = sdk.files.create(file=write_jsonl(tmp_path / "train.jsonl", chat_rows()).open("rb"), purpose="fine-tune")
    validation = sdk.files.create(
        file=write_jsonl(tmp_path / "valid.jsonl", chat_rows(3)).open("rb"), purpose="fine-tune"
    )
    job = sdk.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        validation_file=validation.id,
        suffix="demo",
        seed=7,
        metadata={"team": "a"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 2}},
        },
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files"
    assert job.hyperparameters.batch_size == "auto"
    job = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j)
    assert job.fine_tuned_model == f"ft:{BASE}:acme:demo:{job.id.removeprefix('ftjob-')}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8  # the trainer's default
    assert job.hyperparameters.learning_rate_multiplier == 2 and job.seed == 7 and job.metadata == {"team": "a"}
    assert job.trained_tokens == 60 and job.finished_at and job.error is None

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=3))  # auto-paginates through `after`
    first_page = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert first_page.has_more and len(first_page.data) == 3
    messages = [event.message for event in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Created fine-tuning job")
    assert "Step 1/6: training loss=2.0000" in messages and len(messages) == len({e.id for e in events})
    metrics = [event.data for event in events if event.type == "metrics"]
    assert {"step", "train_loss"} <= set(metrics[-1]) and any("valid_loss" in m for m in metrics)

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].metrics.train_loss == pytest.approx(2.0 / 6)
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"

    results = sdk.files.retrieve(job.result_files[0])
    assert results.purpose == "fine-tune-results" and results.filename == "step_metrics.csv"
    csv_text = sdk.files.content(results.id).text
    assert csv_text.splitlines()[0].startswith("step,train_loss,valid_loss") and len(csv_text.splitlines()) == 7
    report_id = http.get(f"/v1/fine_tuning/jobs/{job.id}").json()["report_file"]
    assert "exact match" in http.get(f"/v1/files/{report_id}/content").text

    models = [m.id for m in sdk.models.list()]
    assert BASE in models and job.fine_tuned_model in models
    reply = sdk.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "hello"}], temperature=0
    )
    assert reply.choices[0].message.content == f"echo({BASE}+{job.id}): hello"
    assert reply.usage.total_tokens > 0 and reply.choices[0].finish_reason == "stop"
    stream = sdk.chat.completions.create(
        model=job.fine_tuned_model,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo({BASE}+{job.id}): one two three" and chunks[-1].usage.completion_tokens == 4
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2  # really streamed

    other = openai.OpenAI(base_url=str(sdk.base_url), api_key=http.headers["Authorization"].split()[1], max_retries=0)
    assert other.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])


def test_auto_hyperparameters_are_reported_as_the_values_the_run_used(sdk, tmp_path):
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(20)).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    assert job.hyperparameters.n_epochs == "auto"
    job = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j)
    # OpenAI's rule for 20 examples: 3 epochs would see only 60 examples, so 100 // 20.
    assert job.hyperparameters.n_epochs == auto_epochs(20) == 5
    assert job.hyperparameters.batch_size == 8 and job.hyperparameters.learning_rate_multiplier == 1.0


def test_other_orgs_see_404_for_everything(server, sdk, tmp_path):
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(2)).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    intruder = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.keys['other']}"})
    for method, path in [
        ("GET", f"/v1/files/{training.id}"),
        ("GET", f"/v1/files/{training.id}/content"),
        ("DELETE", f"/v1/files/{training.id}"),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}"),
        ("POST", f"/v1/fine_tuning/jobs/{job.id}/cancel"),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}/checkpoints"),
    ]:
        assert_envelope(intruder.request(method, path), 404)
    assert job.id not in [j["id"] for j in intruder.get("/v1/fine_tuning/jobs").json()["data"]]
    assert training.id not in [f["id"] for f in intruder.get("/v1/files").json()["data"]]
    # Using another org's file to create a job is refused too.
    assert_envelope(intruder.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": training.id}), 400)
    finished = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).fine_tuned_model and j)
    assert_envelope(
        intruder.post(
            "/v1/chat/completions",
            json={"model": finished.fine_tuned_model, "messages": [{"role": "user", "content": "x"}]},
        ),
        404,
    )
    assert_envelope(intruder.delete(f"/v1/models/{finished.fine_tuned_model}"), 404)


def test_job_list_paginates_newest_first(sdk, tmp_path):
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(2)).open("rb"), purpose="fine-tune")
    created = [sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id).id for _ in range(3)]
    page = sdk.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == created[::-1][:2] and page.has_more
    listed = [j.id for j in sdk.fine_tuning.jobs.list(limit=2)]
    assert listed[:3] == created[::-1] and len(listed) == len(set(listed))


def test_bad_file_fails_the_job_naming_the_line(sdk, tmp_path):
    rows = [*chat_rows(2), "{this is not json", {"text": "no messages"}]
    training = sdk.files.create(file=write_jsonl(tmp_path / "bad.jsonl", rows).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    job = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j)
    assert job.error.param == "training_file" and job.error.code == "invalid_training_file"
    assert "line 3" in job.error.message and "1 more" in job.error.message
    assert job.fine_tuned_model is None
    assert any("line 3" in e.message and e.level == "error" for e in sdk.fine_tuning.jobs.list_events(job.id))


def test_trainer_input_error_and_crash_fail_the_job(sdk, tmp_path):
    outcomes = {}
    for marker in ("USER_ERROR", "CRASH"):
        rows = [{"messages": [{"role": "user", "content": marker}, {"role": "assistant", "content": "ok"}]}]
        training = sdk.files.create(
            file=write_jsonl(tmp_path / f"{marker}.jsonl", rows).open("rb"), purpose="fine-tune"
        )
        job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)
        outcomes[marker] = wait_for(lambda j=job: (r := sdk.fine_tuning.jobs.retrieve(j.id)).status == "failed" and r)
    assert "context is too short for line 1" in outcomes["USER_ERROR"].error.message
    assert outcomes["CRASH"].error.code == "training_failed" and "exit 3" in outcomes["CRASH"].error.message


def _slow_job(sdk, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "SLOW"}, {"role": "assistant", "content": "ok"}]}]
    training = sdk.files.create(file=write_jsonl(tmp_path / "slow.jsonl", rows).open("rb"), purpose="fine-tune")
    return sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)


def _trainer_pid(server, job_id):
    pid_file = server.data_dir / "runs" / job_id / "pid"
    return pid_file.exists() and pid_file.read_text() and int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as stopped.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_cancel_stops_a_running_job_within_seconds(sdk, server, tmp_path):
    job = _slow_job(sdk, tmp_path)
    wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "running")
    pid = wait_for(lambda: _trainer_pid(server, job.id))
    wait_for(lambda: len(list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))) > 5)
    started = time.monotonic()
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_for(lambda: not _alive(pid), timeout=10)
    assert time.monotonic() - started < 5
    time.sleep(1)
    job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.cancel(job.id)


def test_pause_and_resume(sdk, server, tmp_path):
    job = _slow_job(sdk, tmp_path)
    wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "running")
    pid = wait_for(lambda: _trainer_pid(server, job.id))
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_for(lambda: not _alive(pid), timeout=10)
    time.sleep(1)
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "paused"
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.pause(job.id)
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    wait_for(lambda: (p := _trainer_pid(server, job.id)) and p != pid)
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "running"
    sdk.fine_tuning.jobs.cancel(job.id)


def test_idempotency_key_makes_one_job(http, tmp_path):
    training = upload(http, write_jsonl(tmp_path / "t.jsonl", chat_rows(2))).json()
    body = {"model": BASE, "training_file": training["id"], "suffix": "idem"}
    first = http.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "abc-1"}).json()
    again = http.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "abc-1"}).json()
    assert first["id"] == again["id"]
    assert_envelope(
        http.post("/v1/fine_tuning/jobs", json={**body, "suffix": "other"}, headers={"Idempotency-Key": "abc-1"}),
        409,
        "idempotency_key_reused",
    )
    # Without a key, identical bodies are two jobs, unless the second says it's the SDK retrying the first.
    plain = http.post("/v1/fine_tuning/jobs", json=body).json()
    assert plain["id"] != first["id"]
    retried = http.post("/v1/fine_tuning/jobs", json=body, headers={"x-stainless-retry-count": "1"}).json()
    assert retried["id"] == plain["id"]


def test_a_retried_upload_keeps_one_file(http, tmp_path):
    path = write_jsonl(tmp_path / "retry.jsonl", chat_rows(3))
    first = upload(http, path).json()
    with open(path, "rb") as handle:
        again = http.post(
            "/v1/files",
            files={"file": (path.name, handle)},
            data={"purpose": "fine-tune"},
            headers={"x-stainless-retry-count": "1"},
        ).json()
    assert again["id"] == first["id"]
    assert upload(http, path).json()["id"] != first["id"]  # a fresh upload (not a retry) is a new file


class StallingProxy:
    """Loopback TCP proxy that holds back the response to the first job create, so the SDK times out and retries."""

    def __init__(self, target_port: int, stall: float):
        self.target_port = target_port
        self.stall = stall
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        delay = {"seconds": 0.0}

        def pump_up():
            while data := client.recv(65536):
                if b"POST /v1/fine_tuning/jobs " in data and not self.stalled.is_set():
                    self.stalled.set()
                    delay["seconds"] = self.stall
                upstream.sendall(data)

        threading.Thread(target=lambda: _quietly(pump_up), daemon=True).start()

        def pump_down():
            while data := upstream.recv(65536):
                time.sleep(delay["seconds"])
                client.sendall(data)

        _quietly(pump_down)
        client.close()
        upstream.close()

    def close(self):
        self.listener.close()


def _quietly(function):
    try:
        function()
    except OSError:
        pass


def test_sdk_retry_after_timeout_does_not_make_a_second_job(server, tmp_path):
    key = server.create_key("retrier")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(2)).open("rb"), purpose="fine-tune")
    proxy = StallingProxy(server.port, stall=4)
    try:
        flaky = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=key, timeout=1.5, max_retries=2)
        job = flaky.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    finally:
        proxy.close()
    assert proxy.stalled.is_set()  # the first attempt really timed out
    assert [j.id for j in sdk.fine_tuning.jobs.list()] == [job.id]


def test_dashboard_page_is_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<svg" in page.text or "dashboard.js" in page.text
    script = httpx.get(server.url + "/static/dashboard.js")
    assert script.status_code == 200
    # Works offline: nothing from a CDN. (SVG's namespace is a name, not an address: nothing is fetched from it.)
    assert "://" not in page.text and "://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert httpx.get(server.url + "/static/..%2fapp.py").status_code == 404


def test_sigterm_to_worker_returns_job_to_queue(tmp_path):
    """A worker asked to stop hands its running job back instead of leaving it to the lease timeout."""
    server = Server(tmp_path / "data", workers=1, env=fake_env(TUNEFORGE_LEASE_SECONDS="600")).start()
    try:
        key = server.create_key("acme")
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        job = _slow_job(sdk, tmp_path)
        wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "running")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        db = sqlite3.connect(server.data_dir / "tuneforge.db")
        status, owner = db.execute("select status, lease_owner from jobs where id = ?", (job.id,)).fetchone()
        assert (status, owner) == ("queued", None)
    finally:
        server.stop()
