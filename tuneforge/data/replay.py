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

import json
import random
from pathlib import Path

from tuneforge.data.formats import Conversation, row_to_conversation
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation
from tuneforge.errors import UserError

BUILTIN_PYDOC = "builtin:pydoc"
BUILTIN_SELF = "builtin:self"
GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.txt")
SELF_REPLAY_MAX_NEW_TOKENS = 160
PARAGRAPH_CHARS = 600  # builtin text is cut into paragraphs about this long: ~150 tokens per example


def _pydoc_paragraphs() -> list[str]:
    from tuneforge.evaluate.forgetting import general_corpus

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


def self_replay_rows(model, tokenizer, prompts: list[str] | None = None) -> list[Conversation]:
    """The model's own greedy answers to general prompts, as chat rows (finished answers only)."""
    from tuneforge.evaluate.generation import generate_chat

    prompts = prompts if prompts is not None else GENERAL_PROMPTS.read_text().splitlines()
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts if prompt.strip()]
    was_training = model.training
    model.eval()
    try:
        answers = generate_chat(model, tokenizer, conversations, max_new_tokens=SELF_REPLAY_MAX_NEW_TOKENS)
    finally:
        model.train(was_training)
    return [
        Conversation(messages=[*conversation, {"role": "assistant", "content": answer["text"].strip()}], line=i + 1)
        for i, (conversation, answer) in enumerate(zip(conversations, answers, strict=True))
        if answer["finish_reason"] == "stop" and answer["text"].strip()
    ]


def load_replay_rows(source: str, model=None, tokenizer=None) -> list[Conversation | str]:
    """Conversations (chat rows) and plain strings (text lines) from a replay file, `builtin:pydoc`, or
    `builtin:self` (which needs the model and tokenizer)."""
    if source == BUILTIN_PYDOC:
        return _pydoc_paragraphs()
    if source == BUILTIN_SELF:
        if model is None or tokenizer is None:
            raise UserError("builtin:self replay needs the model being trained (use it with tuneforge train)")
        rows = self_replay_rows(model, tokenizer)
        if not rows:
            raise UserError("builtin:self: the model finished none of the general prompts within the token budget")
        return rows
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
    tokenizer, source: str | None, ratio: float, n_train: int, seed: int, max_length: int, model=None
) -> list[TokenizedExample]:
    """The tokenized replay examples to append to the training examples (none when no source or ratio 0)."""
    if not source or ratio <= 0:
        return []
    examples = []
    for row in sample_replay(load_replay_rows(source, model, tokenizer), n_train, ratio, seed):
        if isinstance(row, str):
            example = text_example(tokenizer, row, max_length)
        else:
            example = tokenize_conversation(tokenizer, row.messages, row.tools, max_length)
        if example.n_trained > 1:
            examples.append(example)
    return examples
