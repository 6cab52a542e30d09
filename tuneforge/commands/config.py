"""The `tuneforge config` verb:  tuneforge config [--method dpo] [--json] | --example sft

Lists every training config key (for `tuneforge train FILE.yaml` and key=value): its type, default, the
methods that use it, what it does and the other names it answers to (`config.ALIASES`: those of TRL,
Axolotl and LLaMA-Factory), from the fields of `config.TrainConfig`. With --method, only the keys that
method uses; setting any other is an error in `tuneforge train`. --example prints a method's commented
example config (tuneforge/configs/METHOD.yaml) to start a file from.
"""

from __future__ import annotations

import json

from tuneforge.config import METHODS, describe_keys, example_config

COLUMNS = ("key", "type", "default", "methods", "description")


def add_config_command(subparsers) -> None:
    p = subparsers.add_parser(
        "config", help="list every training config key: type, default, methods, meaning, aliases",
        epilog="A key's aliases (e.g. num_train_epochs for epochs) are accepted wherever the key is.",
    )
    p.add_argument("--method", choices=METHODS, help="only the keys this method uses (default: every key)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--example", choices=METHODS, metavar="METHOD",
                   help=f"print the commented example config of METHOD ({', '.join(METHODS)}) instead, e.g. "
                   "tuneforge config --example sft > my-run.yaml (default: the key listing)")
    p.set_defaults(func=run_config)


def run_config(args) -> int:
    if args.example:
        print(example_config(args.example).read_text(), end="")
        return 0
    keys = describe_keys(args.method)
    if args.json:
        print(json.dumps({"method": args.method, "keys": keys}))
    else:
        print(format_keys(keys))
    return 0


def format_keys(keys: list[dict]) -> str:
    """One aligned line per key; defaults as YAML/JSON would write them, so they can be pasted; aliases last."""
    rows = [COLUMNS] + [
        (k["key"], k["type"], json.dumps(k["default"]),
         "all" if tuple(k["methods"]) == METHODS else ", ".join(k["methods"]),
         k["description"] + (f" [also: {', '.join(k['aliases'])}]" if k["aliases"] else ""))
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    widths[-1] = 0  # the description runs to the end of the line
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
