"""The `tuneforge` command: parse arguments, call one function per verb, turn user errors into one line.

    tuneforge train --data train.jsonl --output runs/demo
    tuneforge eval --data test.jsonl --adapter runs/demo --json
    tuneforge generate --adapter runs/demo "Where is my order?"

Feature areas register their own verbs through `add_commands(subparsers)` (see COMMAND_MODULES), so this
file stays a table of contents. Heavy imports (torch, transformers) happen inside the verbs only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from tuneforge.errors import UserError

# Modules that add verbs of their own; each has `add_commands(subparsers)`.
COMMAND_MODULES = (
    "tuneforge.data.commands",
    "tuneforge.evaluate.commands",
    "tuneforge.export.commands",
    "tuneforge.service.commands",
)

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


def add_train_command(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune a model (SFT with LoRA or full; dpo, reward, grpo)")
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
        from tuneforge.data.validate import check_training_files

        check_training_files(config)  # refuse an invalid file with validate's messages, before the model loads
    recipe = importlib.import_module(f"tuneforge.recipes.{config.method}")
    summary = recipe.train(config)
    if not world.is_main:  # under torchrun rank 0 reports for all
        leave(world, 0)
        return 0
    exit_code = 1 if (summary.get("forgetting") or {}).get("passed") is False else 0
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "status",
                    "output",
                    "steps",
                    "trained_tokens",
                    "tokens_per_second",
                    "final_train_loss",
                    "final_valid_loss",
                    "eval",
                    "forgetting",
                )
                if k in summary
            }
        )
    )
    leave(world, exit_code)  # under torchrun: exit now, everything is written
    return exit_code


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


def add_generate_command(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer a prompt (or chat in a REPL) with a base model or adapter")
    p.add_argument("prompt", nargs="?", help="the user message; omit for an interactive chat")
    p.add_argument("--model", help="base model (default: the adapter's base, else smollm2-135m-instruct)")
    p.add_argument("--adapter", help="LoRA adapter dir or full fine-tuned model dir")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from tuneforge.evaluate.generation import generate_chat
    from tuneforge.models import load_model

    model, tokenizer = load_model(args.model, args.adapter)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(messages):
        def stream(_index, piece):
            sys.stdout.write(piece)
            sys.stdout.flush()

        out = generate_chat(
            model,
            tokenizer,
            [messages],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            on_token=stream,
        )[0]
        sys.stdout.write("\n")
        return out["text"]

    if args.prompt is not None:
        answer(history + [{"role": "user", "content": args.prompt}])
        return 0
    print("tuneforge chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if not line.strip():
            return 0
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": answer(history)})


def add_eval_command(subparsers) -> None:
    p = subparsers.add_parser("eval", help="exact match (and JSON validity) of greedy answers on a test JSONL")
    p.add_argument("--data", required=True)
    p.add_argument("--model")
    p.add_argument("--adapter")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predictions", help="write each prompt, reference and prediction to this JSONL")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from tuneforge.evaluate.run import evaluate, load_eval_set, write_predictions
    from tuneforge.models import load_model

    load_eval_set(args.data)  # fail on bad data before spending time on the model
    model, tokenizer = load_model(args.model, args.adapter)
    result = evaluate(model, tokenizer, args.data, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.predictions:
        write_predictions(args.predictions, result)
    examples = result.pop("examples")
    result.update(model=args.model or "default", adapter=args.adapter)
    if args.json:
        print(json.dumps(result))
    else:
        for example in examples[:3]:
            print(
                f"- prompt: {example['prompt'][:80]!r}\n  expected: {example['reference'][:80]!r}\n  got:      {example['prediction'][:80]!r}"
            )
        line = f"exact_match {result['exact_match']:.1%} on {result['n']} examples"
        if "json_valid" in result:
            line += f", json_valid {result['json_valid']:.1%}"
        print(line + f" ({result['seconds']:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune language models on your own data.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_command(subparsers)
    add_generate_command(subparsers)
    add_eval_command(subparsers)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name + ".").startswith(exc.name + "."):  # feature area not in this build
                continue
            raise
        (getattr(module, "add_commands", None) or module.add_service_commands)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
