"""The `tuneforge advise` verb: should you fine-tune, before any training is paid for.

    tuneforge advise train.jsonl                                   # prompting vs target, cost, break-even
    tuneforge advise train.jsonl --learning-curve --output runs/x  # + what short fine-tunes reach; advice.json

The measurement is tuneforge/evaluate/advise.py; this verb wires in what lives above it: the SFT recipe for
the learning curve's short trainings and tuneforge.estimate for the cost. Prints the advice (or --json);
exit 0 whatever it advises, 2 for a usage or input error.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tuneforge.errors import UserError


def add_advise_command(subparsers) -> None:
    p = subparsers.add_parser("advise", help="before training: does prompting meet the target, what would a "
                              "fine-tune gain and cost, break-even; --learning-curve: how much data is enough")
    p.add_argument("data", help="the training data (chat or prompt/completion rows); part of it is held out")
    p.add_argument("--model", help="base model (default: smollm2-135m-instruct)")
    p.add_argument("--target", type=float, default=0.9, help="the metric prompting must reach (default: %(default)s)")
    p.add_argument("--metric", default="exact_match", choices=("exact_match", "json_match", "format_valid"),
                   help="task metric on the held-out part (default: %(default)s)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction held out, by seed (default: %(default)s)")
    p.add_argument("--max-held-out", type=int, default=50, help="at most this many held out (default: %(default)s)")
    p.add_argument("--shots", default="1,2,4", help="few-shot sizes measured; the best is chosen (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="held-out part, prompt examples, subsets (default: %(default)s)")
    p.add_argument("--format-regex", help="an answer is format-valid when it fully matches this regex")
    p.add_argument("--json-schema", help="an answer is format-valid when it is JSON valid against this schema file")
    p.add_argument("--epochs", type=float, help="epochs of the fine-tune whose cost is estimated (default: train's)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (default: %(default)s)")
    p.add_argument("--price-per-hour", type=float, default=1.0,
                   help="machine price per hour, training and serving (default: %(default)s)")
    p.add_argument("--price-per-1k-tokens", type=float, default=0.0002,
                   help="price of 1k prompt tokens (default: %(default)s)")
    p.add_argument("--no-estimate", action="store_true", help="skip the cost measurement (two training steps)")
    p.add_argument("--learning-curve", action="store_true",
                   help="short trainings on nested 12.5/25/50/100%% subsets, each measured on the held-out part")
    p.add_argument("--curve-epochs", type=float, default=1.0,
                   help="epochs of each learning-curve training (default: %(default)s)")
    p.add_argument("--curve-max-steps", type=int, default=32,
                   help="at most this many steps per learning-curve training (default: %(default)s)")
    p.add_argument("--eval-batch-size", type=int, default=16, help="prompts answered together (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer (default: %(default)s)")
    p.add_argument("--output", help="write advice.json (and learning_curve.png) here; a run folder also gets its "
                   "run card refreshed (default: print only)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_advise)


def _shots(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--shots takes comma-separated counts like 1,2,4; got {text!r}") from None
    if any(v < 1 for v in values):
        raise UserError("--shots counts must be >= 1")
    return values


def estimator(data: str, model: str | None, epochs: float, batch_size: int):
    """() -> tuneforge.estimate's figures for training on all of `data`, or {"error": ...}."""

    def estimate() -> dict:
        from tuneforge.data.validate import validate_file
        from tuneforge.estimate import estimate_training
        from tuneforge.models import DEFAULT_MODEL, load_tokenizer, resolve_model

        spec = model or DEFAULT_MODEL
        tokenizer = load_tokenizer(resolve_model(spec).path)
        report = validate_file(data, "sft", tokenizer)
        if not report.ok:
            return {"error": f"tuneforge validate {data} finds errors; the cost was not measured"}
        try:
            return estimate_training(report, spec, epochs, batch_size)
        except Exception as exc:  # noqa: BLE001 - the estimate is advice; a failure must not hide the rest
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}

    return estimate


def subset_trainer(folder: Path, model: str | None, seed: int, batch_size: int):
    """(rows, steps, index) -> adapter dir: the real SFT recipe on `rows`, without the forgetting guard (the
    curve measures the task) and without validation."""

    def train_subset(rows, steps: int, index: int) -> str:
        from tuneforge.config import build_config
        from tuneforge.recipes.sft import train

        run = folder / f"curve_{index}"
        run.mkdir(parents=True, exist_ok=True)
        data = run / "data.jsonl"
        with data.open("w") as handle:
            for row in rows:
                handle.write(json.dumps({"messages": row.messages, **({"tools": row.tools} if row.tools else {})})
                             + "\n")
        overrides = {"data": str(data), "output": str(run / "adapter"), "max_steps": steps, "batch_size": batch_size,
                     "forgetting_guard": "off", "seed": seed, "eval_every": steps}
        if model:
            overrides["model"] = model
        train(build_config(overrides))
        return str(run / "adapter")

    return train_subset


def run_advise(args) -> int:
    from tuneforge.config import TrainConfig
    from tuneforge.data.formats import load_conversations
    from tuneforge.evaluate.advise import advise, format_advice, write_advice

    if not Path(args.data).exists():
        raise UserError("file not found", path=args.data)
    if not 0 < args.target <= 1 or args.max_held_out < 1 or args.curve_max_steps < 1 or args.batch_size < 1:
        raise UserError("--target must be in (0, 1]; --max-held-out, --curve-max-steps, --batch-size >= 1")
    conversations = load_conversations(args.data)  # bad data fails before any model loads
    epochs = args.epochs if args.epochs is not None else TrainConfig().epochs

    def say(message: str) -> None:
        print(f"tuneforge advise: {message}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="tuneforge-advise-") as scratch:
        advice = advise(
            conversations, data=args.data, model=args.model, target=args.target, metric=args.metric,
            holdout=args.holdout, max_held_out=args.max_held_out, shots=_shots(args.shots), seed=args.seed,
            format_regex=args.format_regex, json_schema=args.json_schema, batch_size=args.eval_batch_size,
            max_new_tokens=args.max_new_tokens, price_per_hour=args.price_per_hour,
            price_per_1k_tokens=args.price_per_1k_tokens,
            estimate=None if args.no_estimate else estimator(args.data, args.model, epochs, args.batch_size),
            learning_curve=args.learning_curve,
            train_subset=subset_trainer(Path(scratch), args.model, args.seed, args.batch_size),
            curve_epochs=args.curve_epochs, curve_max_steps=args.curve_max_steps, train_batch_size=args.batch_size,
            progress=say,
        )
    advice["command"] = ["tuneforge", "advise", *args.argv[1:]] if getattr(args, "argv", None) else None
    if args.output:
        paths = write_advice(advice, args.output)
        from tuneforge.evaluate.run_card import write_run_card

        write_run_card(args.output)
        say(f"advice: {paths['json']}")
    print(json.dumps(advice) if args.json else format_advice(advice))
    return 0
