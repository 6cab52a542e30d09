"""The `tuneforge` command: parse arguments, call one function per verb, turn user errors into one line.

    tuneforge train --data train.jsonl --output runs/demo
    tuneforge eval --data test.jsonl --adapter runs/demo --json
    tuneforge generate --adapter runs/demo "Where is my order?"

This file is the table of contents: `VERBS` names each verb's module under tuneforge/commands/, in the
order `tuneforge --help` lists them; the service's verbs follow when the service is part of the build.
Heavy imports (torch, transformers) happen inside the verbs only. A verb with an `overrides` list (train)
takes its positional words anywhere on the line: argparse keeps one run of positionals together, so those
after a later flag come back unparsed and are handed over here.
"""

from __future__ import annotations

import argparse
import sys

from tuneforge import __version__
from tuneforge.commands import advise, config, data, evaluate, export, generate, train
from tuneforge.errors import UserError

# Each function adds one verb's parser; the verb runs as `args.func(args)`.
VERBS = (
    train.add_train_command,
    generate.add_generate_command,
    evaluate.add_eval_command,
    data.add_validate_command,
    advise.add_advise_command,
    data.add_preview_command,
    data.add_split_command,
    data.add_dedup_command,
    data.add_convert_command,
    evaluate.add_compare_command,
    export.add_export_command,
    config.add_config_command,
)


def add_service_verbs(subparsers) -> None:
    """serve, worker and keys (tuneforge/service/commands.py), unless the service is not in this build."""
    try:
        from tuneforge.service.commands import add_service_commands
    except ModuleNotFoundError as exc:
        if exc.name in ("tuneforge.service", "tuneforge.service.commands"):
            return
        raise
    add_service_commands(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune language models on your own data.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_verb in VERBS:
        add_verb(subparsers)
    add_service_verbs(subparsers)
    return parser


def verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    if unparsed:
        verb_parser = verb_parsers(parser).get(args.command, parser)
        if not isinstance(getattr(args, "overrides", None), list) or any(item.startswith("-") for item in unparsed):
            verb_parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
        args.overrides += unparsed
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"tuneforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
