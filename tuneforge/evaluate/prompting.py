"""What a prompt-only variant is made of, shared by compare, advise and the consistency measurement: few-shot
examples drawn from a training file and put into a prompt, and the check of whether an answer has the
expected format. (compare imports the measurements of consistency; both need these, so they live below both.)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tuneforge.data.formats import load_conversations
from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import is_json_object_or_array, parse_json, references_are_json
from tuneforge.evaluate.run import split_prompt_and_reference


def shot_pairs(conversations) -> list[tuple[str, str]]:
    """(last user turn, answer) of each conversation that has a user turn: what a few-shot prompt shows."""
    pairs = []
    for conversation in conversations:
        prompt, answer = split_prompt_and_reference(conversation.messages)
        users = [m["content"] for m in prompt if m["role"] == "user"]
        if users:
            pairs.append((users[-1], answer))
    return pairs


def select_shots(path: str | Path, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """K (user, assistant) pairs from a training file, sampled deterministically by seed."""
    pairs = shot_pairs(load_conversations(path))
    if k > len(pairs):
        raise UserError(f"--shots {k} but only {len(pairs)} usable examples", path=str(path))
    return random.Random(seed).sample(pairs, k)


def with_shots(prompt: list[dict], shots: list[tuple[str, str]]) -> list[dict]:
    """The prompt with the shots as earlier user/assistant turns, after any leading system messages."""
    n_system = 0
    while n_system < len(prompt) and prompt[n_system]["role"] == "system":
        n_system += 1
    examples = [
        {"role": role, "content": text}
        for user, answer in shots
        for role, text in (("user", user), ("assistant", answer))
    ]
    return prompt[:n_system] + examples + prompt[n_system:]


def format_checker(references: list[str], format_regex: str | None = None, json_schema: str | None = None):
    """(description, predicate) for format validity, or None when nothing says what a valid answer looks like."""
    if json_schema:
        try:
            import jsonschema
        except ImportError:
            raise UserError("--json-schema needs the jsonschema package: pip install 'tuneforge[report]'") from None
        try:
            schema = json.loads(Path(json_schema).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the JSON schema ({exc})", path=json_schema) from None
        validator = jsonschema.Draft202012Validator(schema)

        def valid_schema(text: str) -> bool:
            try:
                return validator.is_valid(parse_json(text))
            except ValueError:
                return False

        return f"json schema {Path(json_schema).name}", valid_schema
    if format_regex:
        try:
            pattern = re.compile(format_regex, re.DOTALL)
        except re.error as exc:
            raise UserError(f"--format-regex is not a valid regular expression ({exc})") from None
        return f"regex {format_regex}", lambda text: pattern.fullmatch(text.strip()) is not None
    if references_are_json(references):
        return "json parses (object or array)", is_json_object_or_array
    return None
