"""A stand-in for `tuneforge compare --adapter RUN --output RUN/report [--data VALID] [--max-forgetting PCT] ...`:
writes report.json and report.html as the real one does, in milliseconds.

The figures are set by the environment so tests can choose the outcome: FAKE_PERPLEXITY_CHANGE (default 1.0,
in %) decides the forgetting gate against --max-forgetting, and the exit code follows it (1: gate failed).
"""

import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--adapter", required=True)
parser.add_argument("--output", required=True)
parser.add_argument("--data")
parser.add_argument("--model")
parser.add_argument("--shots", type=int, default=0)
parser.add_argument("--shots-from")
parser.add_argument("--limit", type=int)
parser.add_argument("--max-forgetting", type=float)
parser.add_argument("--max-general-drop", type=float)
args = parser.parse_args()

change = float(os.environ.get("FAKE_PERPLEXITY_CHANGE", "1.0"))
passed = None if args.max_forgetting is None else change <= args.max_forgetting
variants = {}
if args.data:
    n = sum(1 for line in open(args.data) if line.strip())
    variants = {"zero_shot": {"n": n, "exact_match": 0.1}, "fine_tuned": {"n": n, "exact_match": 0.9}}
    if args.shots:
        variants["few_shot"] = {"n": n, "exact_match": 0.2}
report = {
    "variants": variants,
    "n": len(variants) and variants["fine_tuned"]["n"],
    "shots": args.shots,
    "forgetting": {"perplexity_change_pct": change, "max_forgetting_pct": args.max_forgetting, "passed": passed,
                   "general_drop_points": 0.0, "max_general_drop_points": args.max_general_drop},
    "passed": passed,
    "verdict": f"fake verdict: forgetting {change:+.1f}% perplexity",
    "argv": sys.argv[1:],
}
output = Path(args.output)
output.mkdir(parents=True, exist_ok=True)
(output / "report.json").write_text(json.dumps(report))
lines = "".join(f"<p>{name}: exact match {v['exact_match']}</p>" for name, v in variants.items())
(output / "report.html").write_text(f"<!doctype html><title>report</title><p>{report['verdict']}</p>{lines}")
sys.exit(1 if passed is False else 0)
