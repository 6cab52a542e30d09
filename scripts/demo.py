"""The demo behind `make demo`: ask `tuneforge advise` whether to fine-tune, fine-tune the embedded model to turn
support tickets into JSON, then answer the builder's question again with `tuneforge compare`.

0. `tuneforge advise` on the training tickets, before any training: 50 held out, the base zero-shot and 1/2/4-shot
   on them, the measured cost of the training, the break-even, and a learning curve of short trainings on
   nested 12.5-100% subsets (its cost is printed first). It must say "fine-tune" (the base few-shot is ~5%).
1. LoRA fine-tuning of SmolLM2-135M-Instruct on the 400 bundled training tickets (5% held out for the
   validation-loss curve), with the default settings: the forgetting guard holds the model to the base's
   own behaviour on general prompts while it learns the tickets (tuneforge/forgetting_guard.py).
2. `compare` on the 100 held-out tickets: the base model zero-shot, the base model with 4 training
   examples in the prompt, and the fine-tuned model — exact match, valid JSON, prompt tokens, latency —
   plus forgetting: general-text perplexity and KL (gated at 5%), several hundred general questions by
   category (gated at a 3-point drop) and instruction-following checks.
   Consistency: the 4-shot base and the fine-tune answer the first 24 tickets 4 times at temperature 0.7
   and under 2 rule-based paraphrases each.
3. The report: runs/demo/report/report.html (self-contained, opens offline, with the advice and its learning
   curve) and report.json; the run card runs/demo/run_card.md beside the adapter.
Prints a few answers before and after, the verdict, and exits 1 if the fine-tune misses 90% exact.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support_tickets"
OUTPUT = Path(os.environ.get("TUNEFORGE_DEMO_OUTPUT", ROOT / "runs" / "demo"))
EPOCHS = float(os.environ.get("TUNEFORGE_DEMO_EPOCHS", "2"))
SHOTS = 4
MAX_FORGETTING = 5.0
MAX_GENERAL_DROP = 3.0  # points of general questions answered correctly
CONSISTENCY_SAMPLES, CONSISTENCY_INPUTS = 4, 24


def main() -> int:
    from tuneforge.cli import main as tuneforge
    from tuneforge.config import build_config
    from tuneforge.evaluate.compare import compare
    from tuneforge.evaluate.consistency import consistency_line
    from tuneforge.evaluate.report import write_report
    from tuneforge.evaluate.run_card import record_consistency, write_run_card
    from tuneforge.recipes.sft import train

    started = time.perf_counter()
    print("== 0/2 before training: should these tickets be fine-tuned? (tuneforge advise)", flush=True)
    (OUTPUT / "advice.json").unlink(missing_ok=True)
    tuneforge(["advise", str(DATA / "train.jsonl"), "--learning-curve", "--epochs", f"{EPOCHS:g}", "--output", str(OUTPUT)])
    advice = json.loads((OUTPUT / "advice.json").read_text())
    advice_seconds = time.perf_counter() - started
    print(f"== 1/2 LoRA fine-tuning on {DATA / 'train.jsonl'} -> {OUTPUT}", flush=True)
    config = build_config({"data": str(DATA / "train.jsonl"), "output": str(OUTPUT), "epochs": EPOCHS, "validation_split": 0.05})
    summary = train(config)

    print(f"== 2/2 zero-shot vs {SHOTS}-shot vs fine-tuned on the held-out tickets, and forgetting", flush=True)
    report = compare(
        str(DATA / "test.jsonl"), str(OUTPUT), shots=SHOTS, shots_from=str(DATA / "train.jsonl"),
        max_forgetting=MAX_FORGETTING, max_general_drop=MAX_GENERAL_DROP, progress=lambda message: print(f"   {message}", flush=True),
        consistency=CONSISTENCY_SAMPLES, consistency_inputs=CONSISTENCY_INPUTS,
    )
    paths = write_report(report, OUTPUT / "report")
    card = write_run_card(OUTPUT, report)
    record_consistency(OUTPUT, report)

    variants = report["variants"]
    zero, few, tuned = variants["zero_shot"], variants.get("few_shot"), variants["fine_tuned"]
    for b, a in list(zip(zero["examples"], tuned["examples"], strict=True))[:3]:
        print(f"\nticket:     {b['prompt']}\nexpected:   {b['reference']}\nbase:       {b['prediction'][:160]!r}\nfine-tuned: {a['prediction']}")
    print(f"\nexact match on {tuned['n']} held-out tickets: base zero-shot {zero['exact_match']:.0%}"
          + (f", base {SHOTS}-shot {few['exact_match']:.0%}" if few else "")
          + f" -> fine-tuned {tuned['exact_match']:.0%} (valid JSON: {zero.get('json_valid', 0):.0%} -> {tuned.get('json_valid', 0):.0%})")
    print(f"advice before training: {advice['summary']} ({advice_seconds:.0f}s)")
    print(f"verdict: {report['verdict']}")
    if report["passed"] is False:
        from tuneforge.evaluate.compare import FORGETTING_HINT

        print(FORGETTING_HINT)
    print(
        f"training: {summary['steps']} steps, {summary['trained_tokens']} tokens in {summary['train_seconds']:.0f}s "
        f"({summary['tokens_per_second']:.0f} tokens/s), final loss {summary['final_train_loss']}, "
        f"valid loss {summary['final_valid_loss']}; whole demo {time.perf_counter() - started:.0f}s"
    )
    print(f"report: {paths['html']}; run card: {card['md']}")
    results = {
        "base": {k: v for k, v in zero.items() if k != "examples"},
        "few_shot": {k: v for k, v in few.items() if k != "examples"} if few else None,
        "fine_tuned": {k: v for k, v in tuned.items() if k != "examples"},
        "forgetting": report["forgetting"],
        "verdict": report["verdict"],
        "advice": {k: advice[k] for k in ("summary", "decision", "prompting", "learning_curve", "break_even", "cost")},
        "consistency": consistency_line(report["consistency"]),
        "advice_seconds": round(advice_seconds, 1),
        "train": summary,
    }
    (OUTPUT / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    if advice["decision"] != "fine-tune":  # the measured base few-shot (~5%) should make it say so: look into it
        print(f"note: the advice before training was {advice['decision']!r}, not 'fine-tune'")
    # The demo's promise is the fine-tune's exact match; the advice is a measurement, printed above, not a gate.
    return 0 if tuned["exact_match"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
