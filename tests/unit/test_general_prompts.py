"""The forgetting guard's general prompts (`tuneforge/data/general_prompts.txt`): many, broad, well formed, and
kept apart from the questions forgetting is measured on.

    .venv/bin/python -m pytest tests/unit/test_general_prompts.py

The guard trains toward the base model's answers to these prompts; the gate scores the tuned model on
`general_questions.jsonl` and `instruction_checks.jsonl`. A prompt equal or nearly equal to a scored question
would let training teach the test, so the gate would measure memory of the guard instead of forgetting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneforge.data.replay import GENERAL_PROMPTS, read_general_prompts
from tuneforge.evaluate.forgetting import GENERAL_QUESTIONS, INSTRUCTION_CHECKS

MEASURED_FILES = [GENERAL_QUESTIONS, INSTRUCTION_CHECKS]
MIN_PROMPTS = 400
MIN_CATEGORIES, MIN_PER_CATEGORY = 6, 25
NEAR_JACCARD = 0.8  # word-set overlap at or above which two texts count as the same question reworded
MIN_CONTAINED_WORDS = 5  # a measured question this long found inside a prompt counts as asked by it
MAX_PROMPT_TOKENS = 200


def categorised_prompts(path: Path = GENERAL_PROMPTS) -> dict[str, list[str]]:
    """{category: prompts} in file order; a prompt's `\\n` (two characters) decoded to a line break."""
    groups: dict[str, list[str]] = {}
    category = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("#"):
            found = re.match(r"#\s*category:\s*(.+?)\s*$", line)
            if found:
                category = found.group(1)
                groups.setdefault(category, [])
            continue
        if not line.strip():
            continue
        assert category is not None, f"{path.name}:{number}: prompt before the first '# category:' line"
        groups[category].append(line.replace("\\n", "\n"))
    return groups


def all_prompts() -> list[str]:
    """What the guard asks the base: the project's own reader of the file."""
    return read_general_prompts()


def normalise(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: 'What is  X?' and 'what is x' are one text."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def jaccard(a: str, b: str) -> float:
    words_a, words_b = set(normalise(a).split()), set(normalise(b).split())
    return len(words_a & words_b) / max(len(words_a | words_b), 1)


def measured_user_messages() -> list[tuple[str, str]]:
    """(where, text) for every user message the forgetting gate scores; a missing file contributes nothing."""
    found = []
    for path in MEASURED_FILES:
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            texts = [m["content"] for m in row.get("messages", []) if m.get("role") == "user"]
            texts += [row[key] for key in ("prompt", "instruction") if isinstance(row.get(key), str)]
            found += [(f"{path.name}:{number}", text) for text in texts if isinstance(text, str)]
    return found


def test_there_are_many_prompts_in_several_large_categories():
    groups = categorised_prompts()
    assert sum(len(p) for p in groups.values()) >= MIN_PROMPTS
    large = [name for name, prompts in groups.items() if len(prompts) >= MIN_PER_CATEGORY]
    assert len(large) >= MIN_CATEGORIES, {name: len(prompts) for name, prompts in groups.items()}
    assert all(groups.values()), "a '# category:' line with no prompts under it"


def test_the_reader_sees_exactly_the_categorised_prompts():
    """Every prompt the guard reads sits under a '# category:' line, and no comment is read as a prompt."""
    assert read_general_prompts() == [p for prompts in categorised_prompts().values() for p in prompts]


def test_no_two_prompts_are_the_same_after_normalising():
    seen: dict[str, str] = {}
    duplicates = []
    for prompt in all_prompts():
        key = normalise(prompt)
        if key in seen:
            duplicates.append((seen[key], prompt))
        seen[key] = prompt
    assert not duplicates


def test_prompts_are_well_formed():
    """The only escape is `\\n`; a lone backslash would be read differently by any other decoder."""
    for prompt in all_prompts():
        assert prompt == prompt.strip() and prompt, repr(prompt)
        assert "\\" not in prompt, f"backslash other than \\n in: {prompt!r}"
        assert "\t" not in prompt, repr(prompt)


def test_the_guard_never_trains_on_a_measured_question():
    """Equal after normalising, word-set Jaccard >= 0.8, or a measured question of 5+ words inside a prompt."""
    measured = measured_user_messages()
    assert measured, "no measured questions found: did general_questions.jsonl move?"
    clashes = []
    for prompt in all_prompts():
        mine = normalise(prompt)
        for where, question in measured:
            theirs = normalise(question)
            contained = len(theirs.split()) >= MIN_CONTAINED_WORDS and f" {theirs} " in f" {mine} "
            if mine == theirs or contained or jaccard(prompt, question) >= NEAR_JACCARD:
                clashes.append(f"{prompt!r} ~ {where} {question!r}")
    assert not clashes, "\n".join(clashes)


@pytest.mark.e2e
def test_every_prompt_fits_the_embedded_models_budget():
    """Rendered with the chat template exactly as generation sees it (system turn included)."""
    from tuneforge.data.tokenize import tokenize_prompt
    from tuneforge.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct").path)
    lengths = {p: len(tokenize_prompt(tokenizer, [{"role": "user", "content": p}])) for p in all_prompts()}
    too_long = {p: n for p, n in lengths.items() if n > MAX_PROMPT_TOKENS}
    assert not too_long
