"""The `tuneforge config` verb:  tuneforge config [--method dpo] [--json]

Lists every training config key (for --config FILE.yaml and key=value): its type, default, the methods
that use it and what it does, from the fields of `config.TrainConfig`. With --method, only the keys that
method uses; setting any other is an error in `tuneforge train`.
"""

from __future__ import annotations

import json

from tuneforge.config import METHODS, describe_keys

COLUMNS = ("key", "type", "default", "methods", "description")


def add_config_command(subparsers) -> None:
    p = subparsers.add_parser("config", help="list every training config key: type, default, methods, meaning")
    p.add_argument("--method", choices=METHODS, help="only the keys this method uses")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=run_config)


def run_config(args) -> int:
    keys = describe_keys(args.method)
    if args.json:
        print(json.dumps({"method": args.method, "keys": keys}))
    else:
        print(format_keys(keys))
    return 0


def format_keys(keys: list[dict]) -> str:
    """One aligned line per key; defaults as YAML/JSON would write them, so they can be pasted."""
    rows = [COLUMNS] + [
        (k["key"], k["type"], json.dumps(k["default"]),
         "all" if tuple(k["methods"]) == METHODS else ", ".join(k["methods"]), k["description"])
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    widths[-1] = 0  # the description runs to the end of the line
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
