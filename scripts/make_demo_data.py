"""Regenerate the bundled demo data:  python scripts/make_demo_data.py

Support tickets written in many styles -> one compact JSON line of fields. Names, e-mails and products
come from Faker with a fixed seed, so the files are identical on every run. The category and priority
follow from what the customer writes, so the mapping is learnable but not guessable from the prompt alone:
the base model does not know the exact keys, the label set or the order of fields.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from faker import Faker

SYSTEM = "Extract the support ticket as JSON."

CATEGORY_PHRASES = {
    "refund": [
        "I want my money back for order {order}.",
        "Please refund order {order}, the {product} arrived broken.",
        "Order {order} was a mistake, can I get a refund?",
        "The {product} from order {order} is not what I paid for. Refund please.",
    ],
    "shipping": [
        "Where is my package? Order {order} has not arrived.",
        "Order {order} says delivered but there is no {product} at my door.",
        "My {product} (order {order}) is stuck in transit for a week.",
        "Can you tell me when order {order} will ship?",
    ],
    "account": [
        "I can't log in to my account, the password reset mail never comes.",
        "Please change the e-mail on my account, I no longer use the old one.",
        "My account got locked after I mistyped my password.",
        "How do I delete my account and all my data?",
    ],
    "billing": [
        "I was charged twice for order {order}.",
        "The invoice for order {order} shows the wrong amount.",
        "Why did my card get billed again this month?",
        "Order {order} used an expired coupon and I paid full price.",
    ],
    "technical": [
        "The {product} from order {order} won't turn on.",
        "Your app crashes every time I open the settings page.",
        "The {product} keeps disconnecting from wifi.",
        "After the update the {product} shows error E{code}.",
    ],
}
PRIORITY_PHRASES = {
    "high": ["This is urgent!", "Please fix this ASAP.", "I need this today, it's urgent.", "URGENT:"],
    "low": ["No rush.", "Whenever you have time.", "Not urgent, just curious.", "Take your time."],
    "normal": ["", "Thanks.", "Thank you in advance.", "Regards."],
}
OPENERS = ["Hi,", "Hello,", "Hey,", "Dear support,", "Good morning,", ""]


def make_ticket(fake: Faker, rng: random.Random) -> dict:
    category = rng.choice(sorted(CATEGORY_PHRASES))
    priority = rng.choices(["high", "normal", "low"], weights=[3, 4, 3])[0]
    name = fake.name()
    order = f"{rng.choice('ABCDEFGH')}{rng.randint(10000, 99999)}"
    template = rng.choice(CATEGORY_PHRASES[category])
    body = template.format(order=order, product=fake.word(), code=rng.randint(100, 999))
    urgency = rng.choice(PRIORITY_PHRASES[priority])
    parts = [rng.choice(OPENERS), body]
    if urgency == "URGENT:":
        parts.insert(0, urgency)
    elif urgency:
        parts.append(urgency)
    signature = rng.choice([f"- {name}", f"{name}", f"Best, {name}", f"Cheers, {name.split()[0]} ({name})"])
    text = " ".join(p for p in parts if p) + " " + signature
    has_order = "{order}" in template
    answer = {"name": name, "order_id": order if has_order else None, "category": category, "priority": priority}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))},
        ]
    }


def main() -> None:
    fake = Faker("en_US")
    Faker.seed(1234)
    rng = random.Random(1234)
    rows = [make_ticket(fake, rng) for _ in range(500)]
    out = Path(__file__).resolve().parent.parent / "examples" / "support_tickets"
    out.mkdir(parents=True, exist_ok=True)
    for name, chunk in (("train.jsonl", rows[:400]), ("test.jsonl", rows[400:])):
        with (out / name).open("w") as handle:
            for row in chunk:
                handle.write(json.dumps(row) + "\n")
    print(f"wrote {out}/train.jsonl (400) and test.jsonl (100)")


if __name__ == "__main__":
    main()
