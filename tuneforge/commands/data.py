"""The data verbs:  tuneforge validate | preview | split | dedup | convert   (see each command's --help)

    tuneforge validate train.jsonl --model smollm2-135m-instruct        # exit 0 ok, 1 findings, 2 usage
    tuneforge validate data.parquet --estimate                          # also measure time and memory on the model
    tuneforge preview train.jsonl --n 3 --html preview.html                # --json: tokens and which are trained
    tuneforge split data.jsonl --validation-fraction 0.1 --seed 42 --train-out train.jsonl --validation-out valid.jsonl
    tuneforge dedup data.jsonl --output clean.jsonl --near
    tuneforge convert sharegpt.json train.jsonl                          # any format and container -> OpenAI JSONL
"""

from __future__ import annotations

import json
import sys

from tuneforge.errors import UserError


def add_validate_command(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check a training file (format, template, mask, lengths); --estimate: time it")
    p.add_argument("file", help="JSONL, JSON, CSV/TSV, Parquet, a datasets folder (save_to_disk), or a hub id "
                   "(owner/name[:split]) in the local datasets cache, read offline")
    p.add_argument("--model", help="render with this model's tokenizer (default smollm2-135m-instruct)")
    p.add_argument("--chat-template", help="a built-in template name or a Jinja file, as train's chat_template=")
    p.add_argument("--method", default="sft", choices=("sft", "dpo", "reward", "grpo"),
                   help="sft (default); dpo and reward take preference rows; grpo takes prompts (OpenAI "
                   "reinforcement rows)")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per example in training (default 2048)")
    p.add_argument("--validation-file", "--validation-data", dest="validation_file",
                   help="also check this validation file, and its overlap with FILE (--validation-data as in train)")
    p.add_argument("--columns", metavar="KNOWN:YOURS,...",
                   help="read the file's own field names as a format's, e.g. prompt:question,completion:answer "
                   "(train's columns=; default: none)")
    estimate = p.add_mutually_exclusive_group()
    estimate.add_argument("--estimate", action="store_true",
                          help="also load the model and run two training steps to estimate time and peak memory")
    estimate.add_argument("--no-estimate", action="store_true", help="no estimate (the default; kept for scripts)")
    p.add_argument("--epochs", type=float, help=f"epochs for the estimate (default: train's, {_train_default('epochs'):g})")
    p.add_argument("--batch-size", type=int, default=_train_default("batch_size"),
                   help=f"examples per step for the estimate (default: train's, {_train_default('batch_size')})")
    p.add_argument("--min-examples", type=int, default=10,
                   help="fewer examples than this is an error (default 10; 1 for a validation file)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=run_validate)


def add_preview_command(subparsers) -> None:
    p = subparsers.add_parser("preview", help="show examples as the model sees them, trained tokens highlighted")
    p.add_argument("file", help="any file validate reads")
    p.add_argument("--n", type=int, default=3, help="how many examples (default 3)")
    p.add_argument("--model", help="default smollm2-135m-instruct")
    p.add_argument("--chat-template", help="a built-in template name or a Jinja file, as train's chat_template=")
    p.add_argument("--method", default="sft", choices=("sft", "dpo", "reward"),
                   help="sft (default): chat rows; dpo and reward: preference rows")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML page")
    p.add_argument("--columns", metavar="KNOWN:YOURS,...",
                   help="read the file's own field names as a format's, e.g. prompt:question,completion:answer "
                   "(train's columns=; default: none)")
    p.add_argument("--boundaries", action="store_true", help="mark token boundaries with | when not coloured")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the trained tokens (default auto: when writing to a terminal)")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout: each example's tokens and whether each is trained")
    p.set_defaults(func=run_preview)


def add_split_command(subparsers) -> None:
    p = subparsers.add_parser("split", help="split a JSONL file into train and validation files, deterministic by seed")
    p.add_argument("file")
    p.add_argument("--validation-fraction", "--validation-split", dest="validation_fraction", type=float, default=0.1,
                   help="share of the rows held out (--validation-split as in train; default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="the same seed holds out the same rows (default 42, as train)")
    p.add_argument("--train-out", required=True, help="where the training rows go (may be FILE itself: replaced at the end)")
    p.add_argument("--validation-out", required=True, help="where the held-out rows go")
    p.set_defaults(func=run_split)


def add_dedup_command(subparsers) -> None:
    p = subparsers.add_parser("dedup", help="drop repeated examples (exact, or with --near same words)")
    p.add_argument("file")
    p.add_argument("--output", required=True, help="the rows kept (may be FILE itself: replaced at the end)")
    p.add_argument("--near", action="store_true", help="also drop examples with the same words (case, punctuation aside)")
    p.set_defaults(func=run_dedup)


def add_convert_command(subparsers) -> None:
    p = subparsers.add_parser("convert", help="write any supported file (ShareGPT, Alpaca, CSV, Parquet, ...) as "
                              "OpenAI JSONL")
    p.add_argument("file", help="JSONL, JSON, CSV/TSV, Parquet, a datasets folder or a cached hub id; any format "
                   "validate reads")
    p.add_argument("output", help="the JSONL file to write (may be FILE itself)")
    p.add_argument("--columns", metavar="KNOWN:YOURS,...",
                   help="read the file's own field names as a format's, e.g. prompt:question,completion:answer "
                   "(train's columns=; default: none)")
    p.set_defaults(func=run_convert)


def _train_default(key: str):
    """What `tuneforge train` uses when not told (TrainConfig's default), so the estimate is of that run."""
    from tuneforge.config import TrainConfig

    return getattr(TrainConfig(), key)


def _load_tokenizer(model: str | None, chat_template: str | None = None):
    """(tokenizer, model config, spec) for an explicit --model; the default model only if it is available."""
    from tuneforge.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    try:
        resolved = resolve_model(model)
        tokenizer = load_tokenizer(resolved.path, chat_template)
    except Exception:  # noqa: BLE001 - an explicit --model (or template) must load; the implicit default may be absent
        if model is not None or chat_template is not None:
            raise
        return None, None, DEFAULT_MODEL
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolved.path)
    except Exception:  # noqa: BLE001 - the eos ids from config are a bonus, the tokenizer's suffice
        config = None
    return tokenizer, config, model or DEFAULT_MODEL


def _mapped(path, columns: str | None):
    """`path` read with --columns: the file's own field names mapped onto a format's (data/readers.py)."""
    from tuneforge.data.readers import parse_columns, with_columns

    if path is None:
        return None
    try:
        return with_columns(path, parse_columns(columns))
    except ValueError as exc:
        raise UserError(f"--columns: {exc}", code="bad_columns") from None


def run_validate(args) -> int:
    from tuneforge.data.validate import validate_file

    if args.max_length < 8:
        raise UserError("--max-length must be >= 8")
    data, validation_file = _mapped(args.file, args.columns), _mapped(args.validation_file, args.columns)
    tokenizer, model_config, spec = _load_tokenizer(args.model, args.chat_template)
    report = validate_file(data, args.method, tokenizer, args.max_length, validation_file,
                           progress=True, model_config=model_config, min_examples=args.min_examples)
    if tokenizer is None:
        report.add(0, "tokenizer_unavailable", f"could not load the tokenizer of {spec}; token checks skipped")
    if args.estimate and report.ok and tokenizer is not None:
        from tuneforge.estimate import estimate_training

        epochs = args.epochs if args.epochs is not None else _train_default("epochs")
        try:
            report.estimate = estimate_training(report, spec, epochs, args.batch_size)
        except Exception as exc:  # noqa: BLE001 - the estimate is advice; a failure must not hide the report
            report.estimate = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    result = report.to_dict()
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result, estimate_asked=args.estimate))
    return 0 if result["ok"] else 1


def format_report(result: dict, estimate_asked: bool = False) -> str:
    """The text report: the file, its format and counts, file-level findings first, then each code's fix once."""
    from tuneforge.data.formats import FORMATS
    from tuneforge.data.readers import CONTAINERS
    from tuneforge.data.validate import CODES

    container, formats = result["container"], result["formats"]
    kinds = ", ".join(f"{name} {count}" for name, count in formats.items()) if len(formats) > 1 else \
        FORMATS.get(result["format"] or "", "no known format")
    lines = [f"{result['path']}: {result['n_examples']} examples ({result['method']}), {kinds}; "
             f"{CONTAINERS.get(container, container)}, positions are {'lines' if container == 'jsonl' else 'rows from 0'}"]
    stats = result["tokens_per_example"]
    if stats:
        lines.append(f"  tokens per example: min {stats['min']}, mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}")
        lines.append(f"  tokens: {result['n_tokens']} in total, {result['n_trained_tokens']} trained (max length {result['max_length']})")
    if result["auto_epochs"]:
        lines.append(f"  epochs 'auto' would pick: {result['auto_epochs']}")
    estimate = result["estimate"]
    if estimate.get("train_seconds") is not None:
        lines.append(f"  estimate on {estimate['device']}/{estimate['dtype']}: ~{_duration(estimate['train_seconds'])} for "
                     f"{estimate['epochs']:g} epochs ({estimate['seconds_per_token'] * 1000:.2f} ms/token measured), "
                     f"peak memory ~{estimate['peak_memory_mb']:.0f} MB")
    elif estimate.get("error"):
        lines.append(f"  estimate failed: {estimate['error']}")
    elif not estimate_asked and result["ok"] and result["n_tokens"] is not None:
        lines.append("  time and memory: not estimated (--estimate loads the model and runs two training steps)")
    findings = [(kind[:-1], finding) for kind in ("errors", "warnings") for finding in result[kind]]
    findings.sort(key=lambda item: item[1]["line"] != 0 or "row" in item[1])  # the whole file's first, once
    fixes: dict[str, str] = {}
    for severity, finding in findings:
        where = finding.get("where") or f"line {finding['line']}"
        where = f"validation file, {where}" if finding.get("file") else where
        lines.append(f"  {severity}: {where}: {finding['message']} [{finding['code']}]")
        fixes.setdefault(finding["code"], CODES[finding["code"]][2])
    listed = len(result["errors"]) + len(result["warnings"])
    total = sum(result["finding_counts"].values())
    if total > listed:
        lines.append(f"  ({total - listed} more; counts by code: {result['finding_counts']})")
    lines += [f"  fix [{code}]: {fix}" for code, fix in fixes.items()]
    n_errors = sum(n for code, n in result["finding_counts"].items() if CODES[code][0] == "error")
    n_warnings = total - n_errors
    lines.append(f"OK ({n_warnings} warnings)" if result["ok"] else f"INVALID: {n_errors} errors, {n_warnings} warnings")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_preview(args) -> int:
    from tuneforge.data.outputs import refuse_same, replacing
    from tuneforge.data.preview import format_html, format_text, preview_dict, preview_examples
    from tuneforge.data.readers import open_rows
    from tuneforge.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    if args.html:  # before the model loads: the page must never land on the data
        refuse_same(args.file, args.html, "--html is the data file itself: give the page another name")
    data = _mapped(args.file, args.columns)
    for code, message in open_rows(data).notes:
        print(f"tuneforge: {args.file}: {message} [{code}]", file=sys.stderr)
    tokenizer = load_tokenizer(resolve_model(args.model).path, args.chat_template)
    examples = preview_examples(data, tokenizer, args.n, "dpo" if args.method in ("dpo", "reward") else "sft")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    if args.json:
        print(json.dumps(preview_dict(examples, args.model or DEFAULT_MODEL, args.method)))
    for example in examples if not args.json else ():
        print(format_text(example, color=color, show_boundaries=args.boundaries))
        print()
    if args.html:
        with replacing(args.html) as out:
            out.write(format_html(examples, args.file, args.model or DEFAULT_MODEL).encode("utf-8"))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def run_split(args) -> int:
    from tuneforge.data.curation import split_file

    n_train, n_valid = split_file(args.file, args.validation_fraction, args.seed, args.train_out, args.validation_out)
    print(json.dumps({"train": n_train, "validation": n_valid, "train_out": args.train_out,
                      "validation_out": args.validation_out}))
    return 0


def run_dedup(args) -> int:
    from tuneforge.data.curation import dedup_file

    print(json.dumps(dedup_file(args.file, args.output, args.near)))
    return 0


def run_convert(args) -> int:
    from tuneforge.data.convert import convert_file

    print(json.dumps(convert_file(_mapped(args.file, args.columns), args.output)))
    return 0
