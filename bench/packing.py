"""Packed vs padded SFT, one after the other in one process:  python bench/packing.py [--steps 6] [--model M]

The embedded SmolLM2-135M-Instruct, LoRA r=16 (tuneforge's defaults), batch 8, the forgetting guard off (it
batches its own conversations either way). Two data sets: the demo tickets as they are (similar lengths:
the length-grouped planner leaves little padding) and "spread", the same tickets as conversations of 1 to 6
ticket exchanges (lengths 1x-6x, what chat logs look like). For each: the share of padding the padded
micro-batches would carry (`data.batching.padding_share`, what `packing=auto` reads) and the training tokens/s
of packing=off and packing=on over the same steps, after one warm-up run. Prints one JSON line per run and a
table; the numbers go to docs/benchmarks.md and `PACKING_MIN_PADDING_SHARE` in tuneforge/recipes/sft.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support_tickets" / "train.jsonl"
sys.path.insert(0, str(ROOT))


def spread_rows(rows: list[dict], n: int) -> list[dict]:
    """Conversations of 1..6 ticket exchanges (one system message), cycling through the demo rows."""
    out, position = [], 0
    for i in range(n):
        turns = 1 + (i * 5) % 6
        messages = [rows[0]["messages"][0]]
        for _ in range(turns):
            messages += rows[position % len(rows)]["messages"][1:]
            position += 1
        out.append({"messages": messages})
    return out


def train_once(data: Path, output: Path, packing: str, steps: int, model: str, micro_batch_tokens: int | None) -> dict:
    from tuneforge.config import build_config
    from tuneforge.recipes.sft import train

    layer = {"data": str(data), "output": str(output), "model": model, "max_steps": steps, "batch_size": 8,
             "packing": packing, "forgetting_guard": "off", "seed": 3}
    if micro_batch_tokens:
        layer["micro_batch_tokens"] = micro_batch_tokens
    return train(build_config(layer))


def padding_of(data: Path, model: str, micro_batch_tokens: int | None, steps: int) -> float:
    from tuneforge.config import build_config
    from tuneforge.data.batching import padding_share, plan_epoch
    from tuneforge.data.formats import load_conversations
    from tuneforge.models import load_tokenizer, resolve_model
    from tuneforge.recipes.sft import tokenize_all

    config = build_config({"data": str(data), "model": model, **({"micro_batch_tokens": micro_batch_tokens}
                                                                  if micro_batch_tokens else {})})
    tokenizer = load_tokenizer(resolve_model(model).path, None)
    examples = tokenize_all(tokenizer, load_conversations(str(data)), config.max_length, str(data))
    lengths = [len(e.input_ids) for e in examples]
    plan = plan_epoch(lengths, 8, 3, 0)[:steps]
    return padding_share(plan, lengths, config.resolved_micro_batch_tokens("cpu"), 8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--micro-batch-tokens", type=int, default=None)
    parser.add_argument("--sets", default="demo,spread")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="tuneforge-packing-") as scratch:
        scratch = Path(scratch)
        sets = {"demo": DATA}
        spread = scratch / "spread.jsonl"
        spread.write_text("".join(json.dumps(r) + "\n" for r in spread_rows(rows, 200)))
        sets["spread"] = spread
        train_once(DATA, scratch / "warmup", "off", 1, args.model, args.micro_batch_tokens)  # load, caches, threads
        for name in args.sets.split(","):
            share = padding_of(sets[name], args.model, args.micro_batch_tokens, args.steps)
            for packing in ("off", "on"):
                summary = train_once(sets[name], scratch / f"{name}-{packing}", packing, args.steps, args.model,
                                     args.micro_batch_tokens)
                record = {"data": name, "packing": packing, "padding_share": round(share, 3),
                          "tokens_per_second": summary["tokens_per_second"], "train_seconds": summary["train_seconds"],
                          "final_train_loss": summary["final_train_loss"], "cpu": cpu}
                print(json.dumps(record), flush=True)
                results.append(record)
    print(f"\n{cpu}, {args.model}, {args.steps} steps of batch 8")
    print("| data | padding share (padded) | padded tokens/s | packed tokens/s | packed / padded |")
    print("|---|---|---|---|---|")
    for name in args.sets.split(","):
        off, on = (next(r for r in results if r["data"] == name and r["packing"] == p) for p in ("off", "on"))
        print(f"| {name} | {off['padding_share']:.0%} | {off['tokens_per_second']:.0f} | {on['tokens_per_second']:.0f} "
              f"| {on['tokens_per_second'] / off['tokens_per_second']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
