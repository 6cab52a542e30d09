"""A stand-in for `tuneforge validate FILE --json`: every line must be a JSON object with `messages`
(sft) or `prompt`/`chosen`/`rejected` (dpo)."""

import json
import sys

path = sys.argv[1]
method = sys.argv[sys.argv.index("--method") + 1] if "--method" in sys.argv else "sft"
errors = []
count = 0
with open(path) as handle:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append({"line": number, "code": "invalid_json", "message": f"not valid JSON ({exc.msg})"})
            continue
        needed = ("prompt", "chosen", "rejected") if method == "dpo" else ("messages",)
        missing = [key for key in needed if key not in row]
        if missing:
            errors.append({"line": number, "code": "missing_field", "message": f"missing field {missing[0]!r}"})
        count += 1
print(
    json.dumps(
        {
            "ok": not errors,
            "n_examples": count,
            "n_tokens": 10 * count,
            "n_trained_tokens": 5 * count,
            "errors": errors,
            "warnings": [],
            "estimate": {},
        }
    )
)
sys.exit(1 if errors else 0)
