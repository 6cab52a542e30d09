"""The evaluation verbs:  tuneforge eval --data test.jsonl --adapter runs/demo [--json]

    tuneforge eval --data test.jsonl --adapter runs/demo --json          # exact match (and JSON validity)
    tuneforge compare --data test.jsonl --adapter runs/demo --shots 4 --shots-from train.jsonl

compare prints a one-line verdict and writes report.json, report.html and plots to --output (default
ADAPTER/report); its exit code is 1 when a forgetting gate is given and the fine-tuned model misses it:
--max-forgetting PCT (general-text perplexity rise) or --max-general-drop POINTS (fall in correct answers to
the general questions, in percentage points).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_eval_command(subparsers) -> None:
    p = subparsers.add_parser("eval", help="exact match (and JSON validity) of greedy answers on a test JSONL")
    p.add_argument("--data", required=True, help="test JSONL (the last assistant turn is the reference)")
    p.add_argument("--model", help="base model (default: the adapter's base, else smollm2-135m-instruct)")
    p.add_argument("--adapter", help="LoRA adapter dir or full fine-tuned model dir (default: none, the base model)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts answered together (default: %(default)s)")
    p.add_argument("--predictions",
                   help="write each prompt, reference and prediction to this JSONL (default: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from tuneforge.data.outputs import refuse_same
    from tuneforge.evaluate.run import evaluate, load_eval_set, write_predictions
    from tuneforge.models import load_model

    load_eval_set(args.data)  # fail on bad data before spending time on the model
    if args.predictions:  # the test file is the input: never overwrite it with predictions
        refuse_same(args.data, args.predictions, "--predictions would overwrite --data; write them to another file")
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


def add_compare_command(subparsers) -> None:
    p = subparsers.add_parser("compare", help="base zero-shot vs few-shot vs fine-tuned, plus forgetting; HTML report")
    p.add_argument("--data", help="test JSONL (the last assistant turn is the reference) (default: none, only "
                   "forgetting is measured)")
    p.add_argument("--adapter", required=True, help="LoRA adapter dir or full fine-tuned model dir")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.add_argument("--shots", type=int, default=0,
                   help="few-shot examples in the prompt (needs --shots-from) (default: %(default)s)")
    p.add_argument("--shots-from",
                   help="JSONL to draw few-shot examples from, usually the training file (default: none)")
    p.add_argument("--output", help="report folder (default: ADAPTER/report)")
    p.add_argument("--format-regex", help="an answer is format-valid when it fully matches this regex (default: none)")
    p.add_argument("--json-schema",
                   help="an answer is format-valid when it is JSON valid against this schema file (default: none)")
    p.add_argument(
        "--max-forgetting", type=float,
        help="fail (exit 1) when general-text perplexity rises more than PCT%% (default: none, no gate)",
    )
    p.add_argument(
        "--max-general-drop", type=float, metavar="POINTS",
        help="fail (exit 1) when the share of general questions answered correctly falls more than POINTS "
             "percentage points below the base model's (default: none, no gate)",
    )
    p.add_argument("--limit", type=int, help="only the first N test examples (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts answered together (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--latency-samples", type=int, default=8,
                   help="prompts answered one at a time for latency p50/p95 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which few-shot examples are drawn (default: %(default)s)")
    p.add_argument("--forgetting-windows", type=int, default=32,
                   help="general-text windows for perplexity and KL (default: %(default)s)")
    p.add_argument("--window-tokens", type=int, default=128,
                   help="tokens per general-text window (default: %(default)s)")
    p.add_argument("--no-forgetting", action="store_true", help="skip the forgetting measurements")
    p.add_argument("--consistency", type=int, default=0, metavar="N",
                   help="also sample N answers per input (prompted base and fine-tune) and answer paraphrased "
                        "inputs: agreement, format and style under sampling, answer-length spread (default: off)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature for --consistency (default: %(default)s)")
    p.add_argument("--consistency-inputs", type=int, default=32,
                   help="first test inputs measured for --consistency (default: %(default)s)")
    p.add_argument("--paraphrases", type=int, default=2,
                   help="rule-based paraphrases per input for --consistency (default: %(default)s)")
    p.add_argument("--paraphrase-file", help='your own paraphrases, JSONL of {"input": ..., "paraphrases": [...]} '
                   "(default: rule-based)")
    p.add_argument("--style-regex", help="style: an answer passes when this regex matches in it (default: none)")
    p.add_argument("--style-schema", help="style: an answer passes when it is JSON valid against this schema file "
                   "(default: none)")
    p.add_argument("--style-python", help="style: a Python file defining check(answer) -> bool, run in its own "
                   "process (default: none)")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from tuneforge.errors import UserError
    from tuneforge.evaluate.compare import compare
    from tuneforge.evaluate.report import write_report
    from tuneforge.evaluate.run import load_eval_set
    from tuneforge.evaluate.run_card import record_consistency, write_run_card

    if args.data:
        load_eval_set(args.data)  # bad data fails before any model loads
    elif args.no_forgetting:
        raise UserError("nothing to measure: give --data TEST.jsonl, or drop --no-forgetting")
    if not Path(args.adapter).is_dir():
        raise UserError(f"{args.adapter}: adapter directory not found")
    if args.shots < 0 or (args.limit is not None and args.limit < 1):
        raise UserError("--shots must be >= 0 and --limit >= 1")
    if args.max_general_drop is not None and args.no_forgetting:
        raise UserError("--max-general-drop gates the forgetting measurement; drop --no-forgetting")
    if args.consistency < 0 or args.temperature <= 0 or args.consistency_inputs < 1 or args.paraphrases < 0:
        raise UserError("--consistency, --paraphrases must be >= 0, --temperature > 0, --consistency-inputs >= 1")
    from tuneforge.evaluate.consistency import style_check

    style = style_check(args.style_regex, args.style_schema, args.style_python)
    if style is not None and not args.consistency:
        raise UserError("--style-* is scored across --consistency samples: add --consistency N")
    report = compare(
        args.data,
        args.adapter,
        model=args.model,
        shots=args.shots,
        shots_from=args.shots_from,
        format_regex=args.format_regex,
        json_schema=args.json_schema,
        max_forgetting=args.max_forgetting,
        max_general_drop=args.max_general_drop,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        latency_samples=args.latency_samples,
        seed=args.seed,
        forgetting_windows=args.forgetting_windows,
        window_tokens=args.window_tokens,
        forgetting=not args.no_forgetting,
        consistency=args.consistency,
        temperature=args.temperature,
        paraphrases=args.paraphrases,
        paraphrase_file=args.paraphrase_file,
        style=style,
        consistency_inputs=args.consistency_inputs,
        progress=lambda message: print(f"tuneforge compare: {message}", file=sys.stderr),
    )
    output = Path(args.output) if args.output else Path(args.adapter) / "report"
    paths = write_report(report, output)
    card = write_run_card(args.adapter, report)
    record_consistency(args.adapter, report)
    print(report["verdict"])
    if report["passed"] is False:
        from tuneforge.evaluate.compare import FORGETTING_HINT

        print(FORGETTING_HINT, file=sys.stderr)
    print(f"report: {paths['html']}" + (f"; run card: {card['md']}" if card else ""), file=sys.stderr)
    return 1 if report["passed"] is False else 0
