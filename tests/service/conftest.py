"""Fixtures that start the real service: `python -m tuneforge.service serve` on a free loopback port,
with fake trainer/validator/inference commands (fast API tests) or the real ones (e2e), on SQLite or on
a PostgreSQL server started here from Debian's binaries."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_env(**extra: str) -> dict[str, str]:
    env = {
        "TUNEFORGE_TRAIN_COMMAND": json.dumps([sys.executable, str(HERE / "fake_trainer.py")]),
        "TUNEFORGE_VALIDATE_COMMAND": json.dumps([sys.executable, str(HERE / "fake_validator.py")]),
        "TUNEFORGE_INFERENCE_COMMAND": json.dumps([sys.executable, str(HERE / "fake_inference.py")]),
        "TUNEFORGE_COMPARE_COMMAND": json.dumps([sys.executable, str(HERE / "fake_compare.py")]),
        "TUNEFORGE_PREVIEW_COMMAND": json.dumps([sys.executable, str(HERE / "fake_preview.py")]),
        "TUNEFORGE_EXPORT_COMMAND": json.dumps([sys.executable, str(HERE / "fake_export.py")]),
        "TUNEFORGE_LEASE_SECONDS": "3",
        "TUNEFORGE_POLL_SECONDS": "0.2",
        "TUNEFORGE_MAX_STEPS": "6",
        "TUNEFORGE_SAVE_EVERY": "2",
    }
    env.update(extra)
    return env


class Server:
    def __init__(
        self, data_dir: Path, *, workers: int = 1, database_url: str | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.database_url = database_url
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.env.pop("TUNEFORGE_DATABASE_URL", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"server-{self.data_dir.name}.log"

    def _store_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        return args + (["--database-url", self.database_url] if self.database_url else [])

    def start(self) -> Server:
        command = [
            sys.executable,
            "-m",
            "tuneforge.service",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
            *self._store_args(),
        ]
        with open(self.log, "ab") as log:
            # Its own process group, so kill() can take down the server, its workers and their trainers at once.
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def create_key(self, org: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tuneforge.service", "keys", "create", "--org", org, *self._store_args()],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def kill(self) -> None:
        """Like pulling the plug: SIGKILL to the whole process group."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.process:
            try:  # anything left in the group (a stuck trainer) goes too
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Postgres:
    """A throwaway PostgreSQL cluster in a temp dir on a free loopback port (run as `postgres` if we are root)."""

    def __init__(self):
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(candidates[-1]).parent if candidates else None
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tf-pg-"))
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd="/")

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    pg = Postgres()
    if pg.bin is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    pg.start()
    yield pg.url
    pg.stop()


@pytest.fixture
def start_server(tmp_path):
    """start_server(workers=1, database_url=None, **env) -> a running Server; all are stopped afterwards."""
    servers: list[Server] = []

    def start(
        *, workers: int = 1, database_url: str | None = None, data_dir: Path | None = None, env: dict | None = None
    ) -> Server:
        server = Server(
            data_dir or tmp_path / f"data{len(servers)}",
            workers=workers,
            database_url=database_url,
            env=env if env is not None else fake_env(),
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def keyed_server(tmp_path_factory, name: str, **env: str) -> Iterator[Server]:
    """The body of a module's shared `server` fixture (`yield from keyed_server(...)`): a server without
    workers, on the fake commands plus `env`, with a key for org acme as `server.key`; stopped afterwards."""
    server = Server(tmp_path_factory.mktemp(name) / "data", workers=0, env=fake_env(**env)).start()
    server.key = server.create_key("acme")
    yield server
    server.stop()


@pytest.fixture
def sdk(server):
    """The official SDK as the module server's org, without retries: a test sees the server's first answer."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0)


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def chat_rows(n: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]
