"""Replay general data during fine-tuning to limit forgetting:

    tuneforge train --data train.jsonl --replay general.jsonl --replay-ratio 0.25
    tuneforge train --data train.jsonl --replay builtin:pydoc --replay-ratio 0.25
    tuneforge train --data train.jsonl --replay builtin:self --replay-ratio 0.25

A replay file holds chat rows (the same formats as --data; trained like any example) and/or plain-text
lines (a line that is not a JSON object), which become language-modelling examples: every token is
trained, no chat template. `builtin:pydoc` is the replay half of Python's own reference-manual topics
(`pydoc_data.topics`), disjoint from the half `tuneforge compare` measures forgetting on.

`builtin:self` is self-replay: before the first step the model as it starts (the base, or the
`--init-adapter` model) answers general instructions (`general_prompts.txt`: explanations, translations,
arithmetic, small writing tasks; none of them among the questions forgetting is measured on) greedily,
and those conversations are trained alongside the task. It keeps the model's own general behaviour in the
mix, which text replay cannot: a model fine-tuned only on "ticket -> JSON" learns to answer *everything*
with JSON, and self-replay shows it, in its own words, that other prompts get other answers. Answers cut
by the token budget are dropped (training on them would teach stopping mid-sentence).

`--replay-ratio R` adds round(R x number of training examples) replay examples, drawn by seed (cycling
through the file when it is shorter), so R = 0.25 makes replay one fifth of the mixed data.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from tuneforge.data.formats import Conversation, row_to_conversation
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation
from tuneforge.errors import UserError

BUILTIN_PYDOC = "builtin:pydoc"
BUILTIN_SELF = "builtin:self"
GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.txt")
SELF_REPLAY_MAX_NEW_TOKENS = 160
PARAGRAPH_CHARS = 600  # builtin text is cut into paragraphs about this long: ~150 tokens per example


def read_general_prompts(path: str | Path = GENERAL_PROMPTS) -> list[str]:
    """The prompts of a general-prompts file: one per line, `#` lines are comments, a literal backslash-n
    inside a line is a line break of that prompt."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read the general prompts file: {exc.strerror}", path=str(path)) from None
    return [line.strip().replace("\\n", "\n") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def general_corpus(split: str = "eval") -> dict:
    """{"name", "python", "sha256", "texts"}: the topics of one split of pydoc_data.topics, sorted by name.

    Distinct topic texts in name order; even-numbered ones are the split forgetting is measured on
    ("eval"), odd-numbered ones the replay split, so replay never trains on the measured text.
    """
    from pydoc_data.topics import topics

    unique = list(dict.fromkeys(topics[name] for name in sorted(topics)))  # some topic names share one text
    keep = 0 if split == "eval" else 1
    texts = [text for i, text in enumerate(unique) if i % 2 == keep]
    digest = hashlib.sha256("\n\n".join(texts).encode()).hexdigest()
    return {"name": f"pydoc_data.topics[{split}]", "python": sys.version.split()[0], "sha256": digest, "texts": texts}


def _pydoc_paragraphs() -> list[str]:
    paragraphs = []
    for text in general_corpus("replay")["texts"]:
        current = ""
        for block in text.split("\n\n"):
            current = f"{current}\n\n{block}" if current else block
            if len(current) >= PARAGRAPH_CHARS:
                paragraphs.append(current.strip())
                current = ""
        if current.strip():
            paragraphs.append(current.strip())
    return paragraphs


def load_replay_rows(source: str, self_rows: list[Conversation] | None = None) -> list[Conversation | str]:
    """Conversations (chat rows) and plain strings (text lines) from a replay file, `builtin:pydoc`, or
    `builtin:self`, whose rows (the model's own answers) the recipe generates and hands in as `self_rows`."""
    if source == BUILTIN_PYDOC:
        return _pydoc_paragraphs()
    if source == BUILTIN_SELF:
        if not self_rows:
            raise UserError("builtin:self replay needs the model being trained (use it with tuneforge train)")
        return self_rows
    path = Path(source)
    if not path.is_file():
        raise UserError("replay file not found (give a JSONL/text file, builtin:pydoc or builtin:self)", path=source)
    rows: list[Conversation | str] = []
    for line_number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        rows.append(row_to_conversation(row, source, line_number) if isinstance(row, dict) else raw.strip())
    if not rows:
        raise UserError("no replay rows in file", path=source)
    return rows


def sample_replay(rows: list, n_train: int, ratio: float, seed: int) -> list:
    """round(ratio * n_train) rows in a seeded order, cycling when the pool is smaller than that."""
    wanted = round(ratio * n_train)
    if wanted <= 0 or not rows:
        return []
    picked = []
    rng = random.Random(seed)
    while len(picked) < wanted:
        order = list(range(len(rows)))
        rng.shuffle(order)
        picked.extend(rows[i] for i in order[: wanted - len(picked)])
    return picked


def text_example(tokenizer, text: str, max_length: int) -> TokenizedExample:
    """A plain-text language-modelling example: every token trained, cut to max_length."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None:
        ids = [bos, *ids]
    ids = ids[:max_length]
    return TokenizedExample(input_ids=ids, labels=list(ids), truncated_tokens=0)


def replay_examples(
    tokenizer, source: str | None, ratio: float, n_train: int, seed: int, max_length: int, self_rows=None
) -> list[TokenizedExample]:
    """The tokenized replay examples to append to the training examples (none when no source or ratio 0)."""
    if not source or ratio <= 0:
        return []
    examples = []
    for row in sample_replay(load_replay_rows(source, self_rows), n_train, ratio, seed):
        if isinstance(row, str):
            example = text_example(tokenizer, row, max_length)
        else:
            example = tokenize_conversation(tokenizer, row.messages, row.tools, max_length)
        if example.n_trained > 1:
            examples.append(example)
    return examples
