"""python bench/qlora_memory.py [--steps 6]: peak resident memory of LoRA training on the embedded model with a
4-bit NF4 base (quantize=4bit, bitsandbytes) against the 16-bit base (quantize=none), same data, one after the
other.

Each set-up is `tuneforge train` in a fresh process (RSS is only comparable from a clean start), batch 8,
LoRA r=16 all linear, the forgetting guard off (it would add generation to both). The figure is summary.json's
peak_rss_mb (the process's ru_maxrss). Results go in docs/benchmarks.md with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "support_tickets" / "train.jsonl"


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(quantize: str, steps: int, folder: Path) -> dict:
    output = folder / quantize
    command = [sys.executable, "-m", "tuneforge", "train", "--data", str(DATA), "--output", str(output),
               "--max-steps", str(steps), "--batch-size", "8", "forgetting_guard=off", f"quantize={quantize}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{quantize}: {done.stderr[-2000:]}")
    summary = json.loads((output / "summary.json").read_text())
    return {key: summary[key] for key in ("peak_rss_mb", "dtype", "tokens_per_second", "final_train_loss", "steps")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {}
        for quantize in ("none", "4bit"):
            results[quantize] = run(quantize, args.steps, Path(folder))
            print(quantize, results[quantize], file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_name(), "steps": args.steps, **results}, indent=2))


if __name__ == "__main__":
    main()
