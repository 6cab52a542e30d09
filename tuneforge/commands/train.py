"""The `tuneforge train` verb:  tuneforge train --data train.jsonl --output runs/demo [--method dpo] [key=value ...]

Config layers (YAML, key=value, flags) -> `config.build_config`; the training files are checked with
validate's messages before the model loads; then the method's recipe runs (`recipes_by_method`), under torchrun
when --nproc asks for it. Prints one JSON line of the summary; exit 1 when the forgetting gate fails.
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
    "reward": "reward",
    "reward_model": "reward_model",
}
SUMMARY_KEYS = ("status", "output", "steps", "trained_tokens", "tokens_per_second", "final_train_loss",
                "final_valid_loss", "eval", "forgetting")


def recipes_by_method() -> dict:
    """method -> its recipe's `train(config) -> summary`. Imported when a run starts: the recipes import torch."""
    from tuneforge.recipes import dpo, grpo, reward, sft

    return {"sft": sft.train, "dpo": dpo.train, "reward": reward.train, "grpo": grpo.train}


def add_train_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model (SFT with LoRA or full; dpo, reward, grpo)",
        epilog="Every config key, with its type, default and the methods that use it: tuneforge config [--method M]",
    )
    p.add_argument("--data", help="training JSONL (OpenAI chat or prompt/completion format)")
    p.add_argument("--validation-data", help="validation JSONL; its loss is logged at intervals")
    p.add_argument("--validation-split", type=float, help="hold out this fraction of --data for validation (by seed)")
    p.add_argument("--model", help="alias, HF model dir, .gguf file or cached hub id (default smollm2-135m-instruct)")
    p.add_argument("--method", help="sft (default), dpo, reward or grpo")
    p.add_argument("--full", action="store_true", default=None, help="full fine-tuning instead of LoRA")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="examples per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 LoRA, 5e-5 full)")
    p.add_argument("--output", help="output directory (default runs/latest)")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int, help="write a resumable checkpoint every N steps")
    p.add_argument("--resume", help="'auto' (latest checkpoint in --output) or a checkpoint directory")
    p.add_argument("--eval-data", help="evaluate on this test JSONL after training (results in summary.json)")
    p.add_argument("--init-adapter", help="start from this LoRA adapter (e.g. an SFT run before DPO)")
    p.add_argument("--beta", type=float, help="preference-tuning temperature (dpo)")
    p.add_argument("--replay", help="general data mixed into training against forgetting (JSONL/text, builtin:pydoc, or builtin:self: the model's own answers to general prompts)")
    p.add_argument("--replay-ratio", type=float, help="replay examples per training example (e.g. 0.25)")
    p.add_argument(
        "--max-forgetting", type=float, help="fail (exit 1) if general-text perplexity rises more than PCT%%"
    )
    p.add_argument("--reward", help="grpo reward: exact_match, json_format, json_fields or module:function")
    p.add_argument("--reward-model", help="grpo reward: a directory written by --method reward")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--nproc", type=int, help="train on N local processes (torchrun --standalone; DDP / FSDP2)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. lora_r=32 max_length=1024")
    p.set_defaults(func=run_train)


def train_config_from_args(args):
    from tuneforge.config import build_config, load_yaml, parse_overrides

    file_layer = load_yaml(args.config) if args.config else {}
    flag_layer = {
        key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest, None) is not None
    }
    return build_config(file_layer, parse_overrides(args.overrides), flag_layer)


def run_train(args) -> int:
    config = train_config_from_args(args)
    from tuneforge.distributed import World, check_distributed_config, launched_world, leave

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
    from tuneforge.data.validate import CODES, MIN_EXAMPLES, summarise_errors, validate_file
    from tuneforge.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model).path, config.chat_template)
    for label, path in (("training", config.data), ("validation", config.validation_data)):
        if not path:
            continue
        # A small validation file is fine; training needs MIN_EXAMPLES.
        min_examples = 1 if label == "validation" else MIN_EXAMPLES
        report = validate_file(path, config.method, tokenizer, config.max_length, min_examples=min_examples)
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
