"""What the forgetting guard costs in training time:  python bench/forgetting_guard.py [--epochs 2] [--out DIR]

The demo's training (400 support tickets, 5% held out, default settings) three times, one after another on
an otherwise idle machine: the guard off (`forgetting_guard=off`), the guard on with its cache cold (this
base's cached answers deleted first) and the guard on with the cache warm (the run just before filled it).
Each is timed as a whole `tuneforge train` process (load, the guard's answers, training, saving; no
end-of-training evaluation), and the summary's own train_seconds and forgetting_guard block are kept.
Prints one JSON object and writes it to OUT/forgetting_guard_bench.json; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support_tickets" / "train.jsonl"


def train(output: Path, epochs: float, *overrides: str) -> dict:
    command = [sys.executable, "-m", "tuneforge", "train", "--data", str(DATA), "--output", str(output),
               "--epochs", str(epochs), "--validation-split", "0.05", *overrides]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((output / "summary.json").read_text())
    return {"wall_seconds": round(wall, 1), "train_seconds": summary["train_seconds"], "steps": summary["steps"],
            "final_valid_loss": summary.get("final_valid_loss"), "forgetting_guard": summary["forgetting_guard"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--out", default="/tmp/tuneforge-guard-bench")
    parser.add_argument("--guard", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of the two guarded runs, e.g. forgetting_guard_ratio=0.25")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    off = train(out / "off", args.epochs, "forgetting_guard=off")
    # Cold: forget this base's cached answers (the cache file the warm-up names), then train with the guard.
    warm_up = train(out / "probe", 0.01)
    Path(warm_up["forgetting_guard"]["cache_file"]).unlink()
    cold = train(out / "cold", args.epochs, *args.guard)
    warm = train(out / "warm", args.epochs, *args.guard)
    result = {
        "cpu": os.popen("lscpu | grep 'Model name' | head -1").read().split(":")[-1].strip(),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "guard_settings": args.guard,
        "off": off, "cold": cold, "warm": warm,
        "cold_vs_off_wall": round(cold["wall_seconds"] / off["wall_seconds"], 3),
        "warm_vs_off_wall": round(warm["wall_seconds"] / off["wall_seconds"], 3),
        "warm_vs_off_train": round(warm["train_seconds"] / off["train_seconds"], 3),
    }
    (out / "forgetting_guard_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
