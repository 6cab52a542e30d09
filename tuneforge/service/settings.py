"""Service settings: where data lives, which database, which commands train and validate.

Every field can come from the command line (`tuneforge serve --data-dir ...`) or the environment
(TUNEFORGE_HOME, TUNEFORGE_DATABASE_URL, ...). Tests swap the training command for a tiny script
through TUNEFORGE_TRAIN_COMMAND so API logic can be exercised in seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BASE_MODELS = ("smollm2-135m-instruct",)
# Integer limits read from TUNEFORGE_<NAME> (e.g. TUNEFORGE_QUOTA_FILES); 0 switches a quota or rate off.
LIMIT_FIELDS = (
    "max_json_bytes", "max_multipart_files", "max_multipart_fields", "max_multipart_field_bytes",
    "quota_bytes", "quota_files", "quota_active_jobs", "requests_per_minute", "chat_tokens_per_minute",
)


def _command_from_env(name: str, default: list[str]) -> list[str]:
    """A command is a JSON list (exact) or a shell-quoted string in the environment."""
    raw = os.environ.get(name)
    if not raw:
        return default
    raw = raw.strip()
    if raw.startswith("["):
        return [str(part) for part in json.loads(raw)]
    return shlex.split(raw)


def _int_env(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _list_env(name: str) -> tuple[str, ...] | None:
    """A comma-separated list; None when unset, () for "none"."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() == "none":
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def default_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_home)
    database_url: str | None = None
    # The API process's connection pool (SQLAlchemy's QueuePool): connections kept, extra ones allowed at a
    # peak, and how long a request waits for one before it fails. A chat request holds one only for its
    # lookups (routes/chat.py), never while it waits on inference or streams, so streams need no bigger pool.
    database_pool_size: int = 5
    database_max_overflow: int = 10
    database_pool_timeout_seconds: float = 30.0
    max_upload_bytes: int = 512 * 1024 * 1024
    # Commands are argument-list prefixes; the worker appends the per-job arguments.
    train_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge", "train"])
    validate_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge", "validate"])
    inference_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge.service.inference"])
    # After training, each job is measured as `tuneforge compare` measures a run (held-out task, forgetting).
    compare_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge", "compare"])
    # The dashboard's tools (routes/tools.py): the loss-mask preview of an upload, and exports of a fine-tune.
    preview_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge", "preview"])
    export_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tuneforge", "export"])
    # The validator also times two training steps so a job's estimated_finish is measured, not guessed.
    estimate: bool = True
    # A fine-tune that fails the forgetting gate: "block" (the job fails, nothing is published) or "publish"
    # (it succeeds, saying so); an organisation's own policy (`tuneforge orgs policy`) wins over this.
    forgetting_policy: str = "block"
    base_models: tuple[str, ...] = DEFAULT_BASE_MODELS
    # A lease is how long a worker may go silent before another worker takes its job over.
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    max_steps: int | None = None
    # Every job checkpoints this often (and at each epoch end) so a takeover loses at most this many steps.
    save_every: int = 50
    # Runs of one job (a worker dying mid-job uses one up) before it fails with max_attempts_exceeded.
    max_attempts: int = 3
    adapter_cache_size: int = 3
    # Chat completions' back-pressure (inference_client.py): requests one model id may have in the inference
    # process at once (waiting or decoding) before more are refused with 429 and retry-after; and how long
    # one request may take in all before it is cancelled and answered 504.
    chat_max_pending: int = 64
    chat_retry_after_seconds: int = 1
    chat_timeout_seconds: float = 600.0
    # Python graders run submitted code (sandboxed: tuneforge/graders/sandbox.py); off unless the operator says so.
    python_graders: bool = False
    # Webhooks (webhooks.py): where job ends are announced, the whsec_ secret that signs them, and the retries.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_max_attempts: int = 12
    webhook_retry_seconds: float = 10.0  # the first back-off; each later one doubles (capped at an hour)
    # Devices (devices.py): the GPUs this worker may use (None: whatever CUDA_VISIBLE_DEVICES / nvidia-smi
    # show; (): none, CPU only), how `serve` splits them between embedded workers, the inference process's.
    gpus: tuple[str, ...] | None = None
    gpus_per_worker: int | None = None
    inference_gpu: str | None = None
    # Processes a job may ask for on a worker without GPUs (torchrun on CPU is for trying things out).
    max_cpu_processes: int = 1
    # Hostile or careless clients (guard.py, limits.py; docs/service.md "Limits"). Bodies are counted as they
    # arrive, chunked or not; a JSON body past max_json_bytes (or an upload past max_upload_bytes) is a 413.
    max_json_bytes: int = 1024 * 1024
    max_multipart_files: int = 1  # file parts in one upload
    max_multipart_fields: int = 4  # other form fields (purpose, ...)
    max_multipart_field_bytes: int = 64 * 1024  # each non-file field
    # Per organisation: what it may keep, queue and ask for (0: no limit). Past one: 429 with retry-after.
    quota_bytes: int = 20 * 1024**3  # bytes of stored files
    quota_files: int = 1000  # stored files
    quota_active_jobs: int = 50  # jobs validating, queued or running
    requests_per_minute: int = 600  # /v1 requests per organisation
    chat_tokens_per_minute: int = 200_000  # prompt (about 4 characters a token) + max_tokens
    # The Host names the server answers (DNS rebinding): bound to loopback, loopback names plus these;
    # bound elsewhere, any name unless these are given. bind_host is what `serve --host` bound.
    allowed_hosts: tuple[str, ...] = ()
    bind_host: str | None = None

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        settings = cls(
            database_url=os.environ.get("TUNEFORGE_DATABASE_URL") or None,
            database_pool_size=_int_env("TUNEFORGE_DATABASE_POOL_SIZE", cls.database_pool_size),
            database_max_overflow=_int_env("TUNEFORGE_DATABASE_MAX_OVERFLOW", cls.database_max_overflow),
            database_pool_timeout_seconds=_float_env(
                "TUNEFORGE_DATABASE_POOL_TIMEOUT_SECONDS", cls.database_pool_timeout_seconds
            ),
            max_upload_bytes=_int_env("TUNEFORGE_MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
            train_command=_command_from_env("TUNEFORGE_TRAIN_COMMAND", cls().train_command),
            validate_command=_command_from_env("TUNEFORGE_VALIDATE_COMMAND", cls().validate_command),
            inference_command=_command_from_env("TUNEFORGE_INFERENCE_COMMAND", cls().inference_command),
            compare_command=_command_from_env("TUNEFORGE_COMPARE_COMMAND", cls().compare_command),
            preview_command=_command_from_env("TUNEFORGE_PREVIEW_COMMAND", cls().preview_command),
            export_command=_command_from_env("TUNEFORGE_EXPORT_COMMAND", cls().export_command),
            estimate=os.environ.get("TUNEFORGE_ESTIMATE", "1") not in ("0", "false", "no"),
            forgetting_policy=os.environ.get("TUNEFORGE_FORGETTING_POLICY") or "block",
            lease_seconds=_float_env("TUNEFORGE_LEASE_SECONDS", 30.0),
            poll_seconds=_float_env("TUNEFORGE_POLL_SECONDS", 1.0),
            max_steps=_int_env("TUNEFORGE_MAX_STEPS", None),
            save_every=_int_env("TUNEFORGE_SAVE_EVERY", 50),
            max_attempts=_int_env("TUNEFORGE_MAX_ATTEMPTS", 3),
        )
        if os.environ.get("TUNEFORGE_BASE_MODELS"):
            settings.base_models = tuple(m.strip() for m in os.environ["TUNEFORGE_BASE_MODELS"].split(",") if m.strip())
        settings.python_graders = os.environ.get("TUNEFORGE_PYTHON_GRADERS", "0").lower() in ("1", "true", "yes")
        settings.webhook_urls = _list_env("TUNEFORGE_WEBHOOK_URLS") or ()
        settings.webhook_secret = os.environ.get("TUNEFORGE_WEBHOOK_SECRET") or None
        settings.webhook_max_attempts = _int_env("TUNEFORGE_WEBHOOK_MAX_ATTEMPTS", settings.webhook_max_attempts)
        settings.webhook_retry_seconds = _float_env("TUNEFORGE_WEBHOOK_RETRY_SECONDS", settings.webhook_retry_seconds)
        settings.gpus = _list_env("TUNEFORGE_GPUS")
        settings.gpus_per_worker = _int_env("TUNEFORGE_GPUS_PER_WORKER", None)
        settings.inference_gpu = os.environ.get("TUNEFORGE_INFERENCE_GPU") or None
        settings.max_cpu_processes = _int_env("TUNEFORGE_MAX_CPU_PROCESSES", settings.max_cpu_processes)
        settings.chat_max_pending = _int_env("TUNEFORGE_CHAT_MAX_PENDING", settings.chat_max_pending)
        settings.chat_retry_after_seconds = _int_env("TUNEFORGE_CHAT_RETRY_AFTER_SECONDS", settings.chat_retry_after_seconds)
        settings.chat_timeout_seconds = _float_env("TUNEFORGE_CHAT_TIMEOUT_SECONDS", settings.chat_timeout_seconds)
        for name in LIMIT_FIELDS:
            setattr(settings, name, _int_env(f"TUNEFORGE_{name.upper()}", getattr(settings, name)))
        settings.allowed_hosts = _list_env("TUNEFORGE_ALLOWED_HOSTS") or ()
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        settings.data_dir = Path(settings.data_dir).expanduser().resolve()
        return settings

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL: SQLite under the data dir unless a database URL was given."""
        if not self.database_url:
            return f"sqlite:///{self.data_dir / 'tuneforge.db'}"
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def ensure_dirs(self) -> None:
        """The data directories (0700: other users on the machine read neither uploads nor runs) and, for
        SQLite, the database file (0600; SQLite gives its -wal and -shm files the database's mode)."""
        for directory in (self.data_dir, self.files_dir, self.runs_dir):
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.database_url:
            database = self.data_dir / "tuneforge.db"
            if not database.exists():
                os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
        # Folders and a database an older version made world-readable are tightened too (when they are ours).
        for path, mode in ((self.files_dir, 0o700), (self.runs_dir, 0o700), (self.data_dir / "tuneforge.db", 0o600)):
            try:
                if path.exists() and path.stat().st_uid == os.getuid():
                    path.chmod(mode)
            except OSError:
                pass

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process (an embedded worker) see these same settings."""
        env = {
            "TUNEFORGE_HOME": str(self.data_dir),
            "TUNEFORGE_TRAIN_COMMAND": json.dumps(self.train_command),
            "TUNEFORGE_VALIDATE_COMMAND": json.dumps(self.validate_command),
            "TUNEFORGE_INFERENCE_COMMAND": json.dumps(self.inference_command),
            "TUNEFORGE_COMPARE_COMMAND": json.dumps(self.compare_command),
            "TUNEFORGE_PREVIEW_COMMAND": json.dumps(self.preview_command),
            "TUNEFORGE_EXPORT_COMMAND": json.dumps(self.export_command),
            "TUNEFORGE_ESTIMATE": "1" if self.estimate else "0",
            "TUNEFORGE_FORGETTING_POLICY": self.forgetting_policy,
            "TUNEFORGE_LEASE_SECONDS": str(self.lease_seconds),
            "TUNEFORGE_POLL_SECONDS": str(self.poll_seconds),
            "TUNEFORGE_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "TUNEFORGE_BASE_MODELS": ",".join(self.base_models),
        }
        if self.database_url:
            env["TUNEFORGE_DATABASE_URL"] = self.database_url
        if self.max_steps is not None:
            env["TUNEFORGE_MAX_STEPS"] = str(self.max_steps)
        env["TUNEFORGE_SAVE_EVERY"] = str(self.save_every)
        env["TUNEFORGE_MAX_ATTEMPTS"] = str(self.max_attempts)
        env["TUNEFORGE_PYTHON_GRADERS"] = "1" if self.python_graders else "0"
        # Devices are not passed on: `serve` gives each embedded worker its own share (devices.py).
        env["TUNEFORGE_MAX_CPU_PROCESSES"] = str(self.max_cpu_processes)
        for name in LIMIT_FIELDS:
            env[f"TUNEFORGE_{name.upper()}"] = str(getattr(self, name))
        return env
