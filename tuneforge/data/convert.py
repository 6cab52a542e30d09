"""Any supported file -> OpenAI JSONL:  tuneforge convert sharegpt.json train.jsonl

Every row is read exactly as training reads it (readers.py -> layouts.py -> formats.py) and written in
OpenAI's shape: a conversation as a chat row {"messages": [...], "tools"?: [...]}, a preference row as an
OpenAI DPO row. So the output reads to the same conversations and pairs as the input, and validates as
the input does (tests/unit/test_convert.py). Fields no format reads (an "id", a "source") are not carried
over. A row that cannot be read stops the conversion with its position, and nothing is written; the
output may be the input (outputs.replacing).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tuneforge.data.formats import (
    PREFERENCE_FORMATS,
    Conversation,
    PreferencePair,
    detect_format,
    row_to_conversation,
    row_to_preference_pair,
)
from tuneforge.data.outputs import replacing
from tuneforge.data.readers import SUFFIXES, open_rows, read_rows
from tuneforge.errors import UserError


def chat_row(conversation: Conversation) -> dict:
    """An OpenAI chat row; an assistant turn's weight is written only where it is 0 (1 is OpenAI's default)."""
    messages = []
    for message in conversation.messages:
        out = {k: v for k, v in message.items() if not (k == "weight" and v == 1)}
        if out.get("tool_calls") and out.get("content") == "":
            out["content"] = None
        messages.append(out)
    return {"messages": messages, **({"tools": conversation.tools} if conversation.tools else {})}


def dpo_row(pair: PreferencePair) -> dict:
    """An OpenAI DPO row: the prompt conversation (no weights: nothing in it is trained) and the two answers."""
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in pair.prompt]
    return {"input": {"messages": prompt, **({"tools": pair.tools} if pair.tools else {})},
            "preferred_output": [{"role": "assistant", "content": pair.chosen}],
            "non_preferred_output": [{"role": "assistant", "content": pair.rejected}]}


def openai_row(row, path: str = "<data>", line=0) -> dict:
    if detect_format(row) in PREFERENCE_FORMATS:
        return dpo_row(row_to_preference_pair(row, path, line))
    return chat_row(row_to_conversation(row, path, line))


def convert_file(source, target) -> dict:
    """Write every row of `source` (any container, any format) to `target` as OpenAI JSONL."""
    suffix = Path(target).suffix.lower()
    if suffix in SUFFIXES:
        raise UserError(f"convert writes JSONL; name the output .jsonl, not {suffix}", path=str(target))
    container = open_rows(source).container  # says "file not found" before anything is written
    formats: Counter = Counter()
    with replacing(target) as out:
        for place, row in read_rows(source):
            formats[detect_format(row)] += 1
            out.write(_json_line(openai_row(row, str(source), place)))
        if not formats:
            raise UserError("no examples in file", path=str(source), code="empty_file")
    return {"rows": sum(formats.values()), "container": container, "formats": dict(formats.most_common()),
            "output": str(target)}


def _json_line(row: dict) -> bytes:
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as the \ud800 escape JSON allows
        return (json.dumps(row) + "\n").encode("utf-8")
