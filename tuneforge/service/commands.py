"""The `serve`, `worker` and `keys` subcommands; tuneforge/cli.py registers them with add_service_commands.

tuneforge serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR] [--workers N] [--database-url URL]
                [--gpus 0,1] [--gpus-per-worker N] [--inference-gpu ID] [--webhook-url URL ...] [--webhook-secret S]
                [--allowed-host NAME ...]
tuneforge worker [--data-dir DIR] [--database-url URL] [--once] [--gpus 0,1]
tuneforge keys create --org NAME [--name NAME] | list [--org NAME] | revoke ID | rotate ID   [--data-dir ...]

Every command here runs with umask 077: the database, uploads, runs and logs it (or its workers and trainers)
create are its user's alone (0600 files, 0700 folders).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def _settings(args):
    from tuneforge.service.settings import Settings

    # Every command of the service starts here: what it and its children create is private (0600/0700).
    os.umask(0o077)
    return Settings.from_env(
        data_dir=args.data_dir,
        database_url=args.database_url,
        gpus=getattr(args, "gpus", None),
        gpus_per_worker=getattr(args, "gpus_per_worker", None),
        inference_gpu=getattr(args, "inference_gpu", None),
        webhook_urls=tuple(getattr(args, "webhook_url", None) or ()) or None,
        webhook_secret=getattr(args, "webhook_secret", None),
        allowed_hosts=tuple(getattr(args, "allowed_host", None) or ()) or None,
        bind_host=getattr(args, "host", None),
    )


def _gpu_list(text: str) -> tuple[str, ...]:
    from tuneforge.service.devices import parse_gpus

    try:
        return parse_gpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="where files, runs and the SQLite database live (default: $TUNEFORGE_HOME or ~/.cache/tuneforge)",
    )
    parser.add_argument(
        "--database-url",
        help="postgresql://user@host:port/db to share jobs between machines (default: SQLite under the data dir)",
    )


def _add_gpu_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus",
        type=_gpu_list,
        help="GPUs to train on, as nvidia-smi numbers them (0,1) or none (default: those CUDA_VISIBLE_DEVICES "
        "or nvidia-smi show)",
    )


def serve(args) -> int:
    import uvicorn

    from tuneforge.service.app import create_app
    from tuneforge.service.devices import split_devices, worker_env
    from tuneforge.service.http_server import EnvelopeHTTPProtocol, install_log_redaction
    from tuneforge.service.webhooks import Deliverer, new_secret

    settings = _settings(args)
    settings.ensure_dirs()  # the webhook deliverer opens the database, which lives in the data dir
    if settings.webhook_urls and not settings.webhook_secret:
        print(
            "tuneforge serve: webhooks are signed: add --webhook-secret (or TUNEFORGE_WEBHOOK_SECRET), "
            f"e.g. this fresh one: {new_secret()}",
            file=sys.stderr,
        )
        return 2
    try:
        shares, note = split_devices(settings, args.workers)
        deliverer = Deliverer(settings)
    except ValueError as exc:
        print(f"tuneforge serve: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"tuneforge serve: {note}", file=sys.stderr)
    settings.ensure_dirs()
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turning that into SystemExit lets the
    # `finally` below stop the embedded workers, which hand their running jobs back to the queue.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    workers = []
    env = dict(os.environ, **settings.to_env(), TUNEFORGE_PARENT_PID=str(os.getpid()))
    for index in range(args.workers):
        # Each worker's devices are in its environment, so the trainers it starts inherit them.
        worker_environment = dict(env, **worker_env(shares[index])) if shares is not None else env
        workers.append(subprocess.Popen([sys.executable, "-m", "tuneforge.service.worker"], env=worker_environment))
    # Webhooks go out from this process (webhooks.py says why); the outbox rows outlive it.
    deliverer.start()
    try:
        print(
            f"tuneforge: serving on http://{args.host}:{args.port} (data in {settings.data_dir}, "
            f"{args.workers} embedded workers)",
            file=sys.stderr,
            flush=True,
        )
        config = uvicorn.Config(
            create_app(settings), host=args.host, port=args.port, log_level=args.log_level, http=EnvelopeHTTPProtocol
        )
        install_log_redaction()  # after Config: it (re)configures uvicorn's loggers
        uvicorn.Server(config).run()
    finally:
        deliverer.stop()
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


def worker(args) -> int:
    from tuneforge.service.devices import worker_env
    from tuneforge.service.worker import run_worker

    settings = _settings(args)
    if settings.gpus is not None:
        os.environ.update(worker_env(settings.gpus))  # the trainers this worker starts inherit its devices
    return run_worker(settings, once=args.once)


def _key_sessions(args):
    from tuneforge.service.store import make_engine, make_sessionmaker

    settings = _settings(args)
    settings.ensure_dirs()
    return make_sessionmaker(make_engine(settings.url))


def keys(args) -> int:
    from tuneforge.errors import UserError
    from tuneforge.service.keys import create_key

    try:
        with _key_sessions(args)() as session:
            key = create_key(session, args.org, args.name)
    except UserError as exc:
        print(f"tuneforge keys: {exc}", file=sys.stderr)
        return 2
    print(f"Created an API key for org {args.org!r}. It is shown only once; store it now:")
    print(key)
    return 0


def _when(timestamp: int | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def keys_list(args) -> int:
    import json

    from tuneforge.service.keys import list_keys

    with _key_sessions(args)() as session:
        rows = list_keys(session, args.org)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':18} {'ORG':16} {'NAME':20} {'PREFIX':10} {'CREATED':19}  {'LAST USED':19}  REVOKED")
    for row in rows:
        print(
            f"{row['id']:18} {row['org']:16} {row['name'] or '-':20} {row['prefix'] + '...':10} "
            f"{_when(row['created_at']):19}  {_when(row['last_used_at']):19}  {_when(row['revoked_at'])}"
        )
    return 0


def keys_revoke(args) -> int:
    from tuneforge.errors import UserError
    from tuneforge.service.keys import revoke_key

    try:
        with _key_sessions(args)() as session:
            done = revoke_key(session, args.id)
    except UserError as exc:
        print(f"tuneforge keys: {exc}", file=sys.stderr)
        return 2
    print(f"Revoked {done['id']}: its requests now answer 401.")
    return 0


def keys_rotate(args) -> int:
    from tuneforge.errors import UserError
    from tuneforge.service.keys import rotate_key

    try:
        with _key_sessions(args)() as session:
            key, new_id = rotate_key(session, args.id)
    except UserError as exc:
        print(f"tuneforge keys: {exc}", file=sys.stderr)
        return 2
    print(f"Revoked {args.id}; its successor {new_id} is shown only once; store it now:")
    print(key)
    return 0


def add_service_commands(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the OpenAI-compatible fine-tuning API and dashboard")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="embedded workers that run jobs (0: run `tuneforge worker` separately)"
    )
    parser.add_argument(
        "--log-level", default="info", help="uvicorn log level: debug, info, warning, error (default info)"
    )
    _add_gpu_option(parser)
    parser.add_argument(
        "--gpus-per-worker",
        type=int,
        help="GPUs each embedded worker gets from --gpus (default 1; its jobs' max processes)",
    )
    parser.add_argument("--inference-gpu", help="the GPU chat completions run on (default: the default device)")
    parser.add_argument(
        "--webhook-url",
        action="append",
        help="POST fine_tuning.job.succeeded/failed/cancelled here (repeat for several; env TUNEFORGE_WEBHOOK_URLS)",
    )
    parser.add_argument(
        "--webhook-secret", help="whsec_... secret that signs webhooks (better: env TUNEFORGE_WEBHOOK_SECRET)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name clients may use besides loopback's (repeat; '*' for any; env TUNEFORGE_ALLOWED_HOSTS); "
        "bound to a non-loopback --host without this, any name is answered",
    )
    _add_store_options(parser)
    parser.set_defaults(func=serve)

    parser = subparsers.add_parser("worker", help="run fine-tuning jobs from the service's queue")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    _add_gpu_option(parser)
    _add_store_options(parser)
    parser.set_defaults(func=worker)

    parser = subparsers.add_parser("keys", help="manage API keys for the service")
    key_commands = parser.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key for an org (printed on the last line)")
    create.add_argument("--org", required=True, help="org name: lowercase letters, digits, '-' or '_'")
    create.add_argument("--name", help="what the key is for (shown by `keys list`), e.g. 'ci' or 'alice laptop'")
    _add_store_options(create)
    create.set_defaults(func=keys)
    listing = key_commands.add_parser("list", help="every key: id, org, name, prefix, created, last used, revoked")
    listing.add_argument("--org", help="only this org's keys")
    listing.add_argument("--json", action="store_true", help="as JSON")
    _add_store_options(listing)
    listing.set_defaults(func=keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key now (by the id `keys list` shows)")
    revoke.add_argument("id", help="key-... as `tuneforge keys list` shows it")
    _add_store_options(revoke)
    revoke.set_defaults(func=keys_revoke)
    rotate = key_commands.add_parser("rotate", help="a new key for the same org and name; the old one is revoked")
    rotate.add_argument("id", help="key-... as `tuneforge keys list` shows it")
    _add_store_options(rotate)
    rotate.set_defaults(func=keys_rotate)

    parser = subparsers.add_parser("orgs", help="an organisation's policies")
    org_commands = parser.add_subparsers(dest="orgs_command", required=True)
    policy = org_commands.add_parser("policy", help="what happens to a fine-tune that fails the forgetting gate")
    policy.add_argument("--org", required=True, help="org name, as given to `keys create`")
    policy.add_argument(
        "--on-forgetting-failure",
        required=True,
        choices=("block", "publish", "default"),
        help="block: the job fails and no model is published; publish: it succeeds, saying the gate failed; "
        "default: the job's own choice, else the server's (TUNEFORGE_FORGETTING_POLICY, block)",
    )
    _add_store_options(policy)
    policy.set_defaults(func=orgs_policy)


def orgs_policy(args) -> int:
    from sqlalchemy import select

    from tuneforge.service.store import Org, make_engine, make_sessionmaker

    settings = _settings(args)
    settings.ensure_dirs()
    sessions = make_sessionmaker(make_engine(settings.url))
    with sessions() as session:
        org = session.scalar(select(Org).where(Org.name == args.org))
        if org is None:
            print(f"tuneforge orgs: no org named {args.org!r} (create it with `tuneforge keys create --org`)",
                  file=sys.stderr)
            return 2
        org.forgetting_policy = None if args.on_forgetting_failure == "default" else args.on_forgetting_failure
        session.commit()
    print(f"org {args.org!r}: a fine-tune that fails the forgetting gate: {args.on_forgetting_failure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tuneforge.service ...`: the same commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="tuneforge")
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
