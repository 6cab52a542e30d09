"""A shared server against hostile or careless clients (issue 21), over real HTTP and raw sockets:
no body read before the key is checked, bodies cut at their limits (chunked too), NUL and control characters
refused on SQLite and PostgreSQL alike, OpenAI's metadata limits, quotas and rate limits answering 429 with
retry-after, keys listed/revoked/rotated, private files, the Host allow-list, security headers, clean
filenames and errors in the envelope."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys

import httpx
import pytest
from conftest import ROOT, Server, fake_env

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"
ROW = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    server = Server(root / "data", workers=0, env=fake_env(TUNEFORGE_MAX_UPLOAD_BYTES=str(1024 * 1024))).start()
    server.key = server.create_key("acme")
    yield server
    server.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as client:
        yield client


def assert_error(response, status, code=None, param="-"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param != "-":
        assert error["param"] == param, error
    return error


def upload(http, content: bytes = (ROW + "\n").encode(), name="train.jsonl"):
    return http.post("/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"})


# --- bodies: nothing read before the key, nothing past the limit -------------------------------------------------


def stream_chunked(server, headers: dict[str, str], *, wait_first=False, chunk=64 * 1024, total=200 * 1024 * 1024):
    """POST /v1/files as a chunked body of up to `total` bytes, until the server answers and closes. With
    `wait_first`, wait for an answer after the first chunk before sending more. Returns (the answer, bytes the
    client managed to send before the connection broke or the answer was complete, the answer before the
    second chunk)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary=XyZ\r\n{head}\r\n".encode()
    )
    preamble = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    payload = preamble + b"x" * (chunk - len(preamble))
    sent, answer, early = 0, b"", b""
    try:
        sock.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n")
        sent += len(payload)
        if wait_first:
            early = answer = sock.recv(65536)
        payload = b"%x\r\n" % chunk + b"y" * chunk + b"\r\n"
        while sent < total:
            sock.sendall(payload)
            sent += chunk
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    try:
        while data := sock.recv(65536):
            answer += data
    except (ConnectionResetError, TimeoutError, OSError):
        pass
    sock.close()
    return answer, sent, early


def test_chunked_upload_without_key_is_refused_before_the_body_is_read(server):
    files_before = set(os.listdir(server.data_dir / "files"))
    answer, sent, early = stream_chunked(server, {}, wait_first=True)
    # The 401 came after the first 64 KiB chunk and the server then closed: the client could push at most what
    # the two sockets' kernel buffers hold, never the 200 MiB it meant to send.
    assert early.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"connection: close" in answer.lower() and b'"code":"missing_api_key"' in answer
    assert sent < 16 * 1024 * 1024, sent
    assert set(os.listdir(server.data_dir / "files")) == files_before


def test_chunked_upload_past_the_limit_stops_there(server):
    files_before = set(os.listdir(server.data_dir / "files"))
    answer, sent, _ = stream_chunked(server, {"Authorization": f"Bearer {server.key}"})
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"file_too_large"' in answer and b"connection: close" in answer.lower()
    assert sent < 1024 * 1024 + 16 * 1024 * 1024, sent  # the 1 MiB limit plus what kernel buffers absorb
    assert set(os.listdir(server.data_dir / "files")) == files_before


def test_declared_bodies_over_the_limit_are_refused_unread(server):
    for path, content_type, code in (("/v1/fine_tuning/jobs", "application/json", b"request_too_large"),
                                     ("/v1/files", "multipart/form-data; boundary=x", b"file_too_large")):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.key}\r\n"
                     f"Content-Type: {content_type}\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n{{".encode())
        sock.settimeout(10)
        answer = b""
        while data := sock.recv(65536):  # answered and closed although only one byte of the 50 MiB came
            answer += data
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413") and code in answer, answer[:300]


def test_json_bodies_have_a_small_limit_chunked_or_not(server, http):
    big = {"model": BASE, "training_file": "file-x", "integrations": ["x" * 1000] * 2000}
    assert_error(http.post("/v1/fine_tuning/jobs", json=big), 413, "request_too_large")
    data = json.dumps(big).encode()
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))  # a generator: sent chunked
    assert_error(http.post("/v1/fine_tuning/jobs", content=chunks, headers={"Content-Type": "application/json"}),
                 413, "request_too_large")
    assert http.get("/healthz").status_code == 200


def test_multipart_part_counts_and_field_sizes_are_limited(http):
    many = [("file", (f"f{i}.jsonl", b"{}\n")) for i in range(5)]
    assert_error(http.post("/v1/files", files=many, data={"purpose": "fine-tune"}), 400)
    fields = {f"field{i}": "x" for i in range(20)} | {"purpose": "fine-tune"}
    assert_error(http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data=fields), 400)
    assert_error(http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "x" * 100_000}), 400)


# --- strings before the database: the same answers on SQLite and PostgreSQL ---------------------------------------


def hostile_string_requests(client: httpx.Client, file_id: str) -> list[httpx.Response]:
    nul = "a\x00b"
    return [
        client.get("/v1/files/file-%00x"),
        client.get("/v1/files/%01"),
        client.get("/v1/files", params={"after": nul}),
        client.get("/v1/fine_tuning/jobs/ftjob-%00"),
        client.get("/v1/fine_tuning/jobs", params={"after": nul}),
        client.get("/v1/fine_tuning/jobs", params={"metadata[k]": nul}),
        client.get("/v1/models/ft:x%00y"),
        client.delete("/v1/models/%00"),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": "file-\x00"}),
        client.post("/v1/fine_tuning/jobs", json={"model": "x\x00", "training_file": file_id}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "validation_file": nul}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "metadata": {nul: "v"}}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "metadata": {"k": nul}}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "suffix": nul}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": "f" * 65}),
        client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id,
                                                  "validation_file": "f" * 65}),
        client.post("/v1/chat/completions", json={"model": nul, "messages": [{"role": "user", "content": "hi"}]}),
        client.post("/v1/tuneforge/files/%00/validate"),
        client.get("/v1/tuneforge/jobs/%00/adapter"),
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_nul_and_control_characters_are_4xx_on_both_databases(database, request, start_server):
    database_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    server = start_server(workers=0, database_url=database_url)
    key = server.create_key(f"nul{database}")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        file_id = upload(client).json()["id"]
        answers = hostile_string_requests(client, file_id)
        for response in answers:
            assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
            assert_error(response, response.status_code)
        # An upload whose filename holds NUL is stored with the character taken out.
        body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n'
                b'Content-Disposition: form-data; name="file"; filename="x\x00y.jsonl"\r\n\r\n' + ROW.encode()
                + b"\n\r\n--b--\r\n")
        stored = client.post("/v1/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert stored.status_code == 200, stored.text
        assert stored.json()["filename"] == "xy.jsonl"
        assert client.get("/v1/files").status_code == 200  # the connection pool and server are fine afterwards
    assert "Traceback" not in server.log.read_text()


def test_metadata_follows_openais_limits(http):
    file_id = upload(http).json()["id"]

    def create(metadata):
        return http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, "metadata": metadata})

    assert_error(create({str(i): "v" for i in range(17)}), 400, param="metadata")
    assert_error(create({"k" * 65: "v"}), 400)
    assert_error(create({"k": "v" * 513}), 400, param="metadata.k")
    assert_error(create({"k": 5}), 400, param="metadata.k")
    most = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    job = create(most)
    assert job.status_code == 200, job.text
    assert job.json()["metadata"] == most
    http.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")


def test_string_fields_of_the_create_body_have_lengths(http):
    file_id = upload(http).json()["id"]
    for field, value in (("model", "m" * 257), ("suffix", "s" * 65), ("validation_file", "v" * 65)):
        body = {"model": BASE, "training_file": file_id, field: value}
        assert_error(http.post("/v1/fine_tuning/jobs", json=body), 400, param=field)
    body = {"model": BASE, "training_file": file_id, "integrations": [{"type": "wandb"}] * 9}
    assert_error(http.post("/v1/fine_tuning/jobs", json=body), 400, param="integrations")
    assert_error(http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id},
                           headers={"Idempotency-Key": "k" * 300}), 400)


# --- quotas and rate limits ---------------------------------------------------------------------------------------


def test_quotas_answer_429_with_retry_after(start_server):
    server = start_server(workers=0, env=fake_env(TUNEFORGE_QUOTA_FILES="3", TUNEFORGE_QUOTA_BYTES="1000",
                                                  TUNEFORGE_QUOTA_ACTIVE_JOBS="1"))
    key, other = server.create_key("quota"), server.create_key("roomy")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        first = upload(http, b"x" * 600)
        assert first.status_code == 200, first.text
        over = upload(http, b"x" * 600)
        error = assert_error(over, 429, "quota_exceeded")
        assert error["type"] == "insufficient_quota"
        assert int(over.headers["retry-after"]) >= 1 and over.headers["x-should-retry"] == "false"
        assert len(http.get("/v1/files").json()["data"]) == 1  # the refused upload left nothing behind
        assert len(os.listdir(server.data_dir / "files")) == 1
        assert upload(http, b"x" * 100).status_code == 200
        assert upload(http, b"x" * 100).status_code == 200
        full = upload(http, b"x")
        assert_error(full, 429, "quota_exceeded")  # the file count, refused before the body is read
        assert "retry-after" in full.headers

        job = http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": first.json()["id"]})
        assert job.status_code == 200, job.text
        second = http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": first.json()["id"]})
        assert_error(second, 429, "quota_exceeded")
        assert "retry-after" in second.headers
        http.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
        assert http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": first.json()["id"]}
                         ).status_code == 200
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other}"}) as http:
        assert upload(http, b"x" * 600).status_code == 200  # another organisation's quota is its own


def test_rate_limits_answer_429_with_retry_after(start_server):
    server = start_server(workers=0, env=fake_env(TUNEFORGE_REQUESTS_PER_MINUTE="5",
                                                  TUNEFORGE_CHAT_TOKENS_PER_MINUTE="300"))
    busy, calm, chatty = (server.create_key(name) for name in ("busy", "calm", "chatty"))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {busy}"}) as http:
        answers = [http.get("/v1/models") for _ in range(6)]
        assert [a.status_code for a in answers[:5]] == [200] * 5
        limited = answers[5]
        assert_error(limited, 429, "rate_limit_exceeded")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "x-should-retry" not in limited.headers  # the SDK may retry after retry-after
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {calm}"}) as http:
        assert http.get("/v1/models").status_code == 200  # one org's rate is not another's
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {chatty}"}, timeout=60) as http:
        # Tokens are counted before the model is even looked up: an unknown model (404, no inference, so no
        # time for the bucket to refill) still spends its estimate, about 200 of the 300.
        body = {"model": "ft:nope", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
        assert_error(http.post("/v1/chat/completions", json=body), 404)
        limited = http.post("/v1/chat/completions", json=body)
        assert_error(limited, 429, "rate_limit_exceeded")
        assert int(limited.headers["retry-after"]) >= 1


# --- keys ---------------------------------------------------------------------------------------------------------


def keys_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge.service", "keys", *args, *server._store_args()],
                          env=server.env, capture_output=True, text=True, cwd=ROOT)


def test_keys_list_revoke_rotate(server):
    made = keys_cli(server, "create", "--org", "keyco", "--name", "ci bot")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    listed = {row["org"] + "/" + (row["name"] or ""): row for row in json.loads(keys_cli(server, "list", "--json").stdout)}
    row = listed["keyco/ci bot"]
    assert row["id"].startswith("key-") and row["prefix"] == key[:8] and row["created_at"] > 0
    assert row["last_used_at"] is None and row["revoked_at"] is None
    assert key not in keys_cli(server, "list").stdout  # a listing never shows a key

    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    used = [r for r in json.loads(keys_cli(server, "list", "--org", "keyco", "--json").stdout)][0]
    assert used["last_used_at"] >= row["created_at"]

    rotated = keys_cli(server, "rotate", row["id"])
    assert rotated.returncode == 0, rotated.stderr
    fresh = rotated.stdout.strip().splitlines()[-1]
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    rows = json.loads(keys_cli(server, "list", "--org", "keyco", "--json").stdout)
    assert {r["name"] for r in rows} == {"ci bot"} and sum(r["revoked_at"] is None for r in rows) == 1

    fresh_id = next(r["id"] for r in rows if r["revoked_at"] is None)
    assert keys_cli(server, "revoke", fresh_id).returncode == 0
    response = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {fresh}"})
    assert_error(response, 401, "invalid_api_key")
    assert keys_cli(server, "revoke", "key-nothex").returncode == 2
    assert keys_cli(server, "rotate", fresh_id).returncode == 2  # a revoked key has no successor


def test_old_databases_gain_the_key_columns(tmp_path):
    import sqlite3

    from sqlalchemy import inspect

    from tuneforge.service.store import make_engine

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE api_keys (key_hash VARCHAR(64) PRIMARY KEY, org_id VARCHAR(64), "
                   "prefix VARCHAR(16), created_at BIGINT)")
        db.execute("INSERT INTO api_keys VALUES ('abc', 'org-1', 'tf-x', 1)")
    engine = make_engine(f"sqlite:///{path}")
    columns = {column["name"] for column in inspect(engine).get_columns("api_keys")}
    assert {"name", "last_used_at", "revoked_at"} <= columns


def test_the_access_log_never_holds_a_key():
    from tuneforge.service.http_server import install_log_redaction

    install_log_redaction()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("uvicorn.access")
    handler = Keep()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        key = "tf-" + "A1b2_c3-" * 5
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/?key={key}&x=1", "1.1", 200)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/v1/models?api_key=secret", "1.1", 200)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert key not in records[0] and "key=REDACTED" in records[0] and "x=1" in records[0]
    assert "secret" not in records[1]


# --- files, hosts, headers, names, errors -------------------------------------------------------------------------


def test_files_and_database_are_private(server, http):
    file_id = upload(http).json()["id"]
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)  # noqa: E731
    assert mode(server.data_dir) == 0o700
    assert mode(server.data_dir / "files") == 0o700 and mode(server.data_dir / "runs") == 0o700
    assert mode(server.data_dir / "tuneforge.db") == 0o600
    assert mode(server.data_dir / "files" / file_id) == 0o600


def test_host_allow_list(server, start_server):
    for path in ("/", "/healthz", "/v1/models"):
        assert_error(httpx.get(server.url + path, headers={"Host": "evil.example"}), 400, "invalid_host")
        assert_error(httpx.get(server.url + path, headers={"Host": f"rebind.example:{server.port}"}), 400)
    assert httpx.get(server.url + "/healthz", headers={"Host": f"localhost:{server.port}"}).status_code == 200
    named = start_server(workers=0, env=fake_env(TUNEFORGE_ALLOWED_HOSTS="tuneforge.internal"))
    assert httpx.get(named.url + "/healthz", headers={"Host": "tuneforge.internal:80"}).status_code == 200
    assert httpx.get(named.url + "/healthz", headers={"Host": "127.0.0.1"}).status_code == 200
    assert httpx.get(named.url + "/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_security_headers_and_no_cdn(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "<script src=\"http" not in page.text and "cdn" not in page.text.lower()
    for path in ("/static/dashboard.js", "/healthz", "/v1/models"):
        response = httpx.get(server.url + path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert "content-security-policy" in response.headers, path
    assert httpx.get(server.url + "/docs").status_code == 404  # Swagger UI would load a script from a CDN
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_filenames_lose_control_and_bidi_characters(http):
    from tuneforge.service.text_checks import clean_filename

    assert clean_filename("invoice\u202egnp.jsonl") == "invoicegnp.jsonl"
    assert clean_filename("a\x01b\u2066c\u200b.jsonl") == "abc.jsonl"
    assert clean_filename("../../etc/x.jsonl") == "x.jsonl" and clean_filename("C:\\a\\b.jsonl") == "b.jsonl"
    long = clean_filename("n" * 400 + ".jsonl")
    assert len(long) == 255 and long.endswith(".jsonl")
    # A right-to-left override that would show `evil\u202elnosj.exe` as `evil.exe...`: stripped before the check.
    stored = upload(http, name="report\u202elnosj.jsonl")
    assert stored.status_code == 200 and stored.json()["filename"] == "reportlnosj.jsonl"
    assert_error(upload(http, name="evil\u202elnosj.exe"), 400, "invalid_file_format")


def test_fine_tuned_names_cannot_collide_and_old_names_resolve(tmp_path):
    from tuneforge.service.model_ids import find_model
    from tuneforge.service.schemas import fine_tuned_name
    from tuneforge.service.settings import Settings
    from tuneforge.service.store import Job, Org, make_engine, make_sessionmaker, new_id

    one, two = "ftjob-abcdef12" + "0" * 16, "ftjob-abcdef12" + "1" * 16
    assert fine_tuned_name(BASE, "acme", "s", one) != fine_tuned_name(BASE, "acme", "s", two)
    assert fine_tuned_name(BASE, "acme", "s", one).endswith(":abcdef12" + "0" * 16)

    settings = Settings.from_env(data_dir=tmp_path)
    settings.ensure_dirs()
    sessions = make_sessionmaker(make_engine(settings.url))
    old_name = f"ft:{BASE}:acme:s:abcdef12"  # how names were made before: kept on the job, still callable
    with sessions() as session:
        session.add(Org(id="org-1", name="acme"))
        session.add(Job(id=new_id("ftjob"), org_id="org-1", model=BASE, training_file="file-1", seed=1,
                        status="succeeded", ft_name=old_name, fine_tuned_model=old_name, hyperparameters={},
                        result_files=[]))
        session.commit()
        ref = find_model(session, settings, "org-1", old_name)
        assert ref is not None and ref.job.fine_tuned_model == old_name
        assert find_model(session, settings, "org-1", old_name + "\x00") is None


def test_errors_stay_in_the_envelope_with_readable_params(server, http):
    # A header past the HTTP parser's limit: answered by the server itself, still in the envelope.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 100_000}\r\n\r\n".encode())
    sock.settimeout(10)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4"), head
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}

    assert_error(http.get("/v1/files/"), 404)  # no bodiless 307 to the slash-less URL
    assert_error(http.post("/v1/fine_tuning/jobs/"), 404)
    file_id = upload(http).json()["id"]
    error = assert_error(http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id,
                                                                "hyperparameters": {"n_epochs": 0}}), 400)
    assert error["param"] == "hyperparameters.n_epochs", error
    assert "'auto'" in error["message"] and "greater than or equal to 1" in error["message"]
    error = assert_error(http.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id,
                                                                "integrations": [{"type": 5}]}), 400)
    assert "literal" not in (error["param"] or "")
    error = assert_error(http.post("/v1/fine_tuning/jobs"), 400)
    assert "None" not in error["message"]
    assert_error(http.get("/v1/fine_tuning/jobs/ftjob-nope"), 404, "fine_tuning_job_not_found")
