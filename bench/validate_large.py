"""Peak memory of `tuneforge validate` on a large file:  python bench/validate_large.py [--size-mb 200] [--model M]

Writes a JSONL file of distinct support-ticket chat rows (about --size-mb MB) to a temporary directory,
then runs `python -m tuneforge validate FILE --json --no-estimate` in a child process and prints its wall
time and peak RSS (the child's ru_maxrss). Without --model the structural checks run (`--model none`
means: no tokenizer); with --model every row is also rendered with that model's chat template.
Results: docs/benchmarks.md, section "validate: streaming a large file".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "support_tickets" / "train.jsonl"

DRIVER = """
import json, sys
from tuneforge.data.validate import validate_file
path, spec = sys.argv[1], sys.argv[2]
tokenizer = None
if spec != "none":
    from tuneforge.models import load_tokenizer, resolve_model
    tokenizer = load_tokenizer(resolve_model(spec).path)
report = validate_file(path, "sft", tokenizer, progress=True).to_dict()
print(json.dumps({k: report[k] for k in ("ok", "n_examples", "n_tokens", "finding_counts")}))
"""


def write_file(path: Path, size_mb: float) -> int:
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    target, written, n = size_mb * 2**20, 0, 0
    with path.open("w") as handle:
        while written < target:
            row = rows[n % len(rows)]
            messages = [dict(m) for m in row["messages"]]
            messages[1]["content"] = f"[ticket {n}] " + messages[1]["content"]  # every row distinct
            line = json.dumps({"messages": messages}) + "\n"
            handle.write(line)
            written += len(line)
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--model", default="none", help="'none' (structure only) or a --model spec")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.jsonl"
        rows = write_file(path, args.size_mb)
        size = path.stat().st_size / 2**20
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(path), args.model], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"file_mb": round(size, 1), "rows": rows, "model": args.model, "seconds": round(seconds, 1),
                      "rows_per_second": round(rows / seconds), "peak_rss_mb": round(peak_mb, 1), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
