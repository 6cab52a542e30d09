"""Build the demo preference pairs:  python scripts/make_preference_data.py

From the support-ticket task (ticket -> compact JSON) make pairs in OpenAI's DPO format: the preferred
answer is the reference JSON; the rejected one is the same JSON with a wrong category, a wrong priority,
or broken formatting (pretty-printed, single quotes, or a missing closing brace), chosen by a fixed seed
so the files are identical on every run. 200 train pairs from train.jsonl, 50 test pairs from test.jsonl.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "support_tickets"
CATEGORIES = ["refund", "shipping", "billing", "account", "technical"]
PRIORITIES = ["low", "normal", "high"]
SEED = 7


def compact(fields: dict) -> str:
    return json.dumps(fields, separators=(",", ":"))


def rejected_answer(fields: dict, kind: str, rng: random.Random) -> str:
    if kind == "category":
        return compact({**fields, "category": rng.choice([c for c in CATEGORIES if c != fields["category"]])})
    if kind == "priority":
        return compact({**fields, "priority": rng.choice([p for p in PRIORITIES if p != fields["priority"]])})
    if kind == "pretty":
        return json.dumps(fields, indent=2)
    if kind == "single_quotes":
        return compact(fields).replace('"', "'")
    return compact(fields)[:-1]  # missing closing brace


KINDS = ["category", "priority", "category", "priority", "pretty", "single_quotes", "truncated"]


def make_pairs(source: Path, limit: int, rng: random.Random) -> list[dict]:
    pairs = []
    for line in source.read_text().splitlines()[:limit]:
        messages = json.loads(line)["messages"]
        prompt, answer = messages[:-1], messages[-1]["content"]
        fields = json.loads(answer)
        kind = KINDS[len(pairs) % len(KINDS)]
        pairs.append({
            "input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": rejected_answer(fields, kind, rng)}],
        })
    return pairs


def main() -> None:
    rng = random.Random(SEED)
    for source, target, limit in (("train.jsonl", "prefs_train.jsonl", 200), ("test.jsonl", "prefs_test.jsonl", 50)):
        pairs = make_pairs(FOLDER / source, limit, rng)
        (FOLDER / target).write_text("".join(json.dumps(p) + "\n" for p in pairs))
        print(f"wrote {len(pairs)} pairs to {FOLDER / target}")


if __name__ == "__main__":
    main()
