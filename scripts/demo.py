"""The demo behind `make demo`: fine-tune the embedded model to turn support tickets into JSON.

1. The base model (SmolLM2-135M-Instruct) answers the held-out tickets: it does not know the fields.
2. LoRA fine-tuning on the 400 bundled training tickets.
3. The fine-tuned model answers the same held-out tickets.
Prints a few answers before and after, and exact match on all held-out examples.
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


def main() -> int:
    from tuneforge.config import build_config
    from tuneforge.evaluate.run import evaluate
    from tuneforge.models import load_model
    from tuneforge.recipes.sft import train

    started = time.perf_counter()
    print("== 1/3 base model on the held-out tickets", flush=True)
    model, tokenizer = load_model()
    before = evaluate(model, tokenizer, DATA / "test.jsonl")
    del model

    print(f"== 2/3 LoRA fine-tuning on {DATA / 'train.jsonl'} -> {OUTPUT}", flush=True)
    config = build_config({"data": str(DATA / "train.jsonl"), "output": str(OUTPUT), "epochs": EPOCHS, "validation_split": 0.05})
    summary = train(config)

    print("== 3/3 fine-tuned model on the same held-out tickets", flush=True)
    model, tokenizer = load_model(adapter=str(OUTPUT))
    after = evaluate(model, tokenizer, DATA / "test.jsonl")

    for b, a in list(zip(before["examples"], after["examples"], strict=True))[:3]:
        print(f"\nticket:     {b['prompt']}\nexpected:   {b['reference']}\nbase:       {b['prediction'][:160]!r}\nfine-tuned: {a['prediction']}")
    print(
        f"\nexact match on {after['n']} held-out tickets: base {before['exact_match']:.0%} -> fine-tuned {after['exact_match']:.0%}"
        f" (valid JSON: {before.get('json_valid', 0):.0%} -> {after.get('json_valid', 0):.0%})"
    )
    print(
        f"training: {summary['steps']} steps, {summary['trained_tokens']} tokens in {summary['train_seconds']:.0f}s "
        f"({summary['tokens_per_second']:.0f} tokens/s), final loss {summary['final_train_loss']}, "
        f"valid loss {summary['final_valid_loss']}; whole demo {time.perf_counter() - started:.0f}s"
    )
    results = {"base": {k: v for k, v in before.items() if k != "examples"},
               "fine_tuned": {k: v for k, v in after.items() if k != "examples"}, "train": summary}
    (OUTPUT / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if after["exact_match"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
