"""A stand-in for `tuneforge validate FILE --json`: every line must be a JSON object with `messages`
(sft) or `prompt`/`chosen`/`rejected` (dpo); a repeated line is a `duplicate` warning. Findings have the
real report's fields (line, code, message, where, fix)."""

import argparse
import json
import sys

parser = argparse.ArgumentParser()
parser.add_argument("path")
parser.add_argument("--method", default="sft")
parser.add_argument("--model")
parser.add_argument("--min-examples", type=int, default=10)
args, _unknown = parser.parse_known_args()  # --json, --no-estimate ... as the real verb takes them
path, method = args.path, args.method
errors, warnings, seen = [], [], {}
count = 0
with open(path) as handle:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append({"line": number, "code": "invalid_json", "message": f"not valid JSON ({exc.msg})",
                           "where": f"line {number}", "fix": "exactly one JSON object per line"})
            continue
        needed = ("prompt", "chosen", "rejected") if method == "dpo" else ("messages",)
        missing = [key for key in needed if key not in row]
        if missing:
            errors.append({"line": number, "code": "missing_field", "message": f"missing field {missing[0]!r}",
                           "where": f"line {number}", "fix": "add it (docs/data.md lists each format's fields)"})
        if line.strip() in seen:
            warnings.append({"line": number, "code": "duplicate", "where": f"line {number}",
                             "message": f"the same example as line {seen[line.strip()]}", "fix": "tuneforge dedup FILE"})
        seen.setdefault(line.strip(), number)
        count += 1
counts = {}
for finding in errors + warnings:
    counts[finding["code"]] = counts.get(finding["code"], 0) + 1
print(
    json.dumps(
        {
            "ok": not errors,
            "n_examples": count,
            "n_tokens": 10 * count,
            "n_trained_tokens": 5 * count,
            "errors": errors,
            "warnings": warnings,
            "finding_counts": counts,
            # --estimate: the real validator times two steps; this one claims 2 s per example and epoch.
            "estimate": {"train_seconds": 6.0 * count, "epochs": 3, "device": "cpu", "dtype": "float32",
                         "seconds_per_token": 0.001} if "--estimate" in sys.argv else {},
        }
    )
)
sys.exit(1 if errors else 0)
