"""The `tuneforge train` verb:  tuneforge train [run.yaml] --data train.jsonl --output runs/demo [key=value ...]

Config layers (a YAML file, key=value, flags) -> `config.build_config`; key=value overrides may stand
anywhere on the line (`cli.main` hands over the ones argparse leaves). The trackers' packages are checked
and the training files with validate's messages before the model loads; then the method's recipe runs
(`recipes_by_method`), under torchrun when --nproc asks for it. Prints one JSON line of the summary; exit 1
when the forgetting gate fails.
"""

from __future__ import annotations

import json
import sys

from tuneforge.errors import UserError

TRAIN_FLAGS = {
    # flag dest -> config key
    "data": "data",
    "validation_data": "validation_data",
    "validation_split": "validation_split",
    "model": "model",
    "method": "method",
    "full": "full",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "output": "output",
    "seed": "seed",
    "save_every": "save_every",
    "resume": "resume",
    "eval_data": "eval_data",
    "init_adapter": "init_adapter",
    "beta": "beta",
    "replay": "replay",
    "replay_ratio": "replay_ratio",
    "max_forgetting": "max_forgetting",
    "forgetting_guard": "forgetting_guard",
    "max_general_drop": "max_general_drop",
    "reward": "reward",
    "reward_model": "reward_model",
    "grader": "grader",
    # The same spellings as validate / preview / convert take them.
    "chat_template": "chat_template",
    "columns": "columns",
}
# Other spellings of a flag: those of tuneforge's other verbs (validate --validation-file, split
# --validation-fraction), so one habit works everywhere.
FLAG_ALIASES = {"validation_data": ["--validation-file"], "validation_split": ["--validation-fraction"]}
FLAG_TYPES = {"validation_split": float, "epochs": float, "max_steps": int, "batch_size": int, "lr": float,
              "seed": int, "save_every": int, "beta": float, "replay_ratio": float, "max_forgetting": float,
              "max_general_drop": float}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # a run's train_config.json is a config file too
SUMMARY_KEYS = ("status", "output", "steps", "trained_tokens", "tokens_per_second", "final_train_loss",
                "final_valid_loss", "eval", "forgetting", "forgetting_guard")


def recipes_by_method() -> dict:
    """method -> its recipe's `train(config) -> summary`. Imported when a run starts: the recipes import torch."""
    from tuneforge.recipes import dpo, grpo, reward, sft

    return {"sft": sft.train, "dpo": dpo.train, "reward": reward.train, "grpo": grpo.train}


def add_train_command(subparsers) -> None:
    from tuneforge.config import FIELDS, default_value

    p = subparsers.add_parser(
        "train",
        help="fine-tune a model (SFT with LoRA or full; dpo, reward, grpo)",
        usage="tuneforge train [CONFIG.yaml] [options] [key=value ...]",
        epilog="Every config key, with its type, default and the methods that use it: tuneforge config [--method M]. "
        "A commented example: tuneforge config --example sft|dpo|reward|grpo. Options and key=value may come in "
        "any order; flags win over key=value, which wins over the file.",
    )
    for dest, key in TRAIN_FLAGS.items():
        flag = "--" + dest.replace("_", "-")
        # The help of a flag is its config key's, so `--help` and `tuneforge config` say the same.
        text = f"{FIELDS[key].metadata['doc']} (default: {shown_default(default_value(key))})".replace("%", "%%")
        if dest == "full":
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, *FLAG_ALIASES.get(dest, []), dest=dest, type=FLAG_TYPES.get(dest), help=text)
    p.add_argument("--config", help="YAML file of config keys, the same as the CONFIG.yaml argument (default: none)")
    p.add_argument("--nproc", type=int,
                   help="train on N local processes (torchrun --standalone; DDP / FSDP2) (default: 1)")
    p.add_argument("overrides", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="a YAML config file, then any config key, e.g. lora_r=32 max_length=1024 (anywhere on the line)")
    p.set_defaults(func=run_train)


def shown_default(value) -> str:
    """A default as a user would type it: none, true/false, a comma-separated list."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value) or "none"
    return str(value)


def train_config_from_args(args):
    from tuneforge.config import build_config, load_yaml, parse_overrides

    files = [item for item in args.overrides if "=" not in item]
    for item in files:
        if not item.lower().endswith(CONFIG_SUFFIXES):
            hint = " (training data goes in --data FILE)" if item.lower().endswith((".jsonl", ".txt")) else ""
            raise UserError(f"'{item}': expected a config file ({', '.join(CONFIG_SUFFIXES)}) or key=value{hint}",
                            code="bad_override")
    if args.config:
        files.insert(0, args.config)
    if len(files) > 1:
        raise UserError(f"one config file per run, got {' and '.join(files)}: merge them, or override keys with "
                        "key=value", code="bad_override")
    file_layer = load_yaml(files[0]) if files else {}
    flag_layer = {
        key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest, None) is not None
    }
    return build_config(file_layer, parse_overrides([item for item in args.overrides if "=" in item]), flag_layer)


def run_train(args) -> int:
    config = train_config_from_args(args)
    from tuneforge.distributed import World, check_distributed_config, launched_world, leave
    from tuneforge.tracking import require_packages

    require_packages(config.report_to)  # say what to install now, not after the model has loaded
    if args.nproc and args.nproc > 1:
        check_distributed_config(config, World(0, args.nproc, 0))  # say it once, before torchrun starts N copies
        return launch_torchrun(args.nproc, args.argv)
    world = launched_world()
    check_distributed_config(config, world)
    if config.method in ("sft", "dpo", "reward"):  # grpo takes prompt-only rows
        check_training_files(config)  # refuse an invalid file with validate's messages, before the model loads
    summary = recipes_by_method()[config.method](config)
    if not world.is_main:  # under torchrun rank 0 reports for all
        leave(world, 0)
        return 0
    exit_code = 1 if (summary.get("forgetting") or {}).get("passed") is False else 0
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS if k in summary}))
    leave(world, exit_code)  # under torchrun: exit now, everything is written
    return exit_code


def check_training_files(config) -> None:
    """Refuse an invalid training (or validation) file with validate's messages, before the model loads."""
    from tuneforge.data.readers import with_columns
    from tuneforge.data.validate import CODES, MIN_EXAMPLES, summarise_errors, validate_file
    from tuneforge.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model).path, config.chat_template)
    for label, path in (("training", config.data), ("validation", config.validation_data)):
        if not path:
            continue
        # A small validation file is fine; training needs MIN_EXAMPLES.
        min_examples = 1 if label == "validation" else MIN_EXAMPLES
        report = validate_file(with_columns(path, config.columns), config.method, tokenizer, config.max_length,
                               min_examples=min_examples)
        if not report.ok:
            raise UserError(summarise_errors(report, path), path=str(path), code="invalid_file")
        n_warnings = sum(n for code, n in report.counts.items() if CODES[code][0] == "warning")
        if n_warnings:
            print(f"tuneforge: {path}: {n_warnings} warning(s) ({', '.join(sorted(report.counts))}); "
                  f"see `tuneforge validate {path}`", file=sys.stderr)


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`tuneforge train --nproc N ...` is `torchrun --standalone --nproc-per-node N -m tuneforge train ...`."""
    import subprocess

    rest, skip = [], False
    for item in argv:  # the same arguments without --nproc (each rank is one process)
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call(launcher + ["-m", "tuneforge", *rest])
