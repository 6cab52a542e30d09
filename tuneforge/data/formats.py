"""Rows -> conversations and preference pairs (the first pure step of the data pipeline).

    readers.py (any container -> rows) -> layouts.py (other tools' layouts -> these) -> this module -> tokenize.py

Formats read natively (OpenAI's fine-tuning formats and TRL's preference layout):
  chat        {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ..., "weight": 0|1}], "tools": [...]}
  completion  {"prompt": "...", "completion": "..."}              (legacy; rendered as one user/assistant turn)
  dpo         {"input": {"messages": [...]}, "preferred_output": [msg], "non_preferred_output": [msg]}
  pairs       {"prompt": "...", "chosen": "...", "rejected": "..."}
              (also with messages: "prompt" a message list and each answer one assistant message, or no
              "prompt" and "chosen"/"rejected" two whole conversations that differ only in the last answer)
and, through layouts.py: sharegpt, alpaca, conversational_completion (TRL), sharegpt_pairs, alpaca_pairs.
`FORMATS` names them all; `detect_format` tells one row's.

Every problem is a `UserError` that names the file, the position (a line of a JSONL file, a row
elsewhere: readers.Row) and what is wrong. The full, collect-everything validator lives in
`tuneforge.data.validate`; this module stops at the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.layouts import CHAT_LAYOUTS, PAIR_LAYOUTS, LayoutError, Mapped, to_native
from tuneforge.data.readers import Row, read_rows
from tuneforge.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
FORMATS = {
    "chat": "OpenAI chat (messages of role/content)",
    "completion": "prompt/completion strings",
    "conversational_completion": "TRL conversational prompt/completion (message lists)",
    "sharegpt": "ShareGPT (conversations of from/value turns)",
    "alpaca": "Alpaca (instruction, input, output)",
    "dpo": "OpenAI DPO (input, preferred_output, non_preferred_output)",
    "pairs": "prompt/chosen/rejected (TRL preference)",
    "sharegpt_pairs": "ShareGPT preference (conversations, chosen, rejected)",
    "alpaca_pairs": "Alpaca preference (instruction, input, chosen, rejected)",
}
CHAT_FORMATS = ("chat", "completion", *CHAT_LAYOUTS)
PREFERENCE_FORMATS = ("dpo", "pairs", *PAIR_LAYOUTS)


@dataclass
class Conversation:
    """One training example: messages with a 0/1 `weight` on each assistant turn."""

    messages: list[dict]
    tools: list | None = None
    line: int | Row = 0  # a JSONL line number, or a readers.Row


@dataclass
class PreferencePair:
    """One preference example: a shared prompt conversation and two assistant answers."""

    prompt: list[dict]
    chosen: str
    rejected: str
    tools: list | None = None
    line: int | Row = 0
    extra: dict = field(default_factory=dict)


def detect_format(row: Any) -> str | None:
    """The name in `FORMATS` of one row's layout, or None."""
    if not isinstance(row, dict):
        return None
    preference = "chosen" in row and "rejected" in row  # "prompt" may be implicit: see split_pair_row
    if "messages" in row and not _is_sharegpt(row["messages"]):
        return "chat"
    if "conversations" in row or "messages" in row:
        return "sharegpt_pairs" if preference else "sharegpt"
    if "input" in row and ("preferred_output" in row or "non_preferred_output" in row):
        return "dpo"
    if "instruction" in row:
        return "alpaca_pairs" if preference else "alpaca"
    if preference:
        return "pairs"
    if "prompt" in row and "completion" in row:
        either_list = isinstance(row["prompt"], list) or isinstance(row["completion"], list)
        return "conversational_completion" if either_list else "completion"
    return None


def _is_sharegpt(turns: Any) -> bool:
    return isinstance(turns, list) and any(isinstance(t, dict) and "role" not in t and ("from" in t or "value" in t)
                                           for t in turns)


def native_row(row: dict, kind: str, where: dict) -> tuple[dict, str, list | None]:
    """(row, kind, places) in a format read natively: other tools' layouts are mapped by layouts.py."""
    if kind not in CHAT_LAYOUTS and kind not in PAIR_LAYOUTS:
        return row, kind, None
    try:
        mapped: Mapped = to_native(row, kind)
    except LayoutError as exc:
        raise UserError(str(exc), code=exc.code, **where) from None
    return mapped.row, "chat" if kind in CHAT_LAYOUTS else "pairs", mapped.places


def content_text(content: Any) -> str | None:
    """A message's content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def answer_text(value: Any) -> str | None:
    """A preference answer as text: plain content, one assistant message, or a list holding exactly one."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and "role" in value[0]:
        value = value[0]
    if isinstance(value, dict):
        return content_text(value.get("content")) if value.get("role") == "assistant" else None
    return content_text(value)


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def split_pair_row(row: dict) -> tuple[str | list, str, str]:
    """(prompt, chosen text, rejected text) of a prompt/chosen/rejected row; ValueError says what is wrong.

    The prompt is a string or a message list as given (checked by the caller). Without "prompt", chosen and
    rejected must be whole conversations (the "implicit prompt" layout of Hugging Face preference sets):
    every message but the last is the shared prompt, and the last, an assistant message, is the answer.
    """
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" not in row:
        if not (_is_message_list(chosen) and _is_message_list(rejected) and len(chosen) > 1 and len(rejected) > 1):
            raise ValueError("without 'prompt', 'chosen' and 'rejected' must be conversations (message lists) "
                             "that share the prompt and end with different assistant answers")
        if chosen[:-1] != rejected[:-1]:
            raise ValueError("without 'prompt', 'chosen' and 'rejected' must share every message but the last")
        prompt, chosen, rejected = chosen[:-1], chosen[-1], rejected[-1]
    else:
        prompt = row["prompt"]
    chosen_text, rejected_text = answer_text(chosen), answer_text(rejected)
    if chosen_text is None or rejected_text is None:
        raise ValueError("'chosen' and 'rejected' must each be a string or one assistant message")
    return prompt, chosen_text, rejected_text


def message_places(places: list | None, label: str, index: int) -> tuple[str, str]:
    """(where message `index` is, where its text is) in the user's file: layouts.py's places, or label[i]."""
    if places and index < len(places):
        return places[index]
    return f"{label}[{index}]", f"{label}[{index}].content"


def normalise_messages(raw_messages: Any, where: dict, places: list | None = None, label: str = "messages") -> list[dict]:
    """Check roles and content, and give each assistant turn an explicit weight (default 1)."""
    if not isinstance(raw_messages, list) or not raw_messages:
        raise UserError(f"'{label}' must be a non-empty list", code="missing_messages", **where)
    messages = []
    for index, message in enumerate(raw_messages):
        place, text_place = message_places(places, label, index)
        if not isinstance(message, dict):
            raise UserError(f"{place} is not an object", code="bad_message", **where)
        role = message.get("role")
        if role not in ROLES:
            raise UserError(f"{place} has role {role!r}; expected one of {', '.join(ROLES)}", code="bad_role", **where)
        text = content_text(message.get("content"))
        has_tool_calls = role == "assistant" and message.get("tool_calls")
        if text is None and not (has_tool_calls and message.get("content") is None):
            raise UserError(f"{text_place} must be a string or a list of text parts", code="bad_content", **where)
        clean = {"role": role, "content": text if text is not None else ""}
        for key in ("tool_calls", "tool_call_id", "name"):
            if key in message:
                clean[key] = message[key]
        if role == "assistant":
            weight = message.get("weight", 1)
            if weight not in (0, 1) or isinstance(weight, bool):
                raise UserError(f"{place}.weight must be 0 or 1", code="bad_weight", **where)
            clean["weight"] = int(weight)
        messages.append(clean)
    return messages


def row_to_messages(row: Any, path: str = "<data>", line: int | Row = 0) -> tuple[list[dict], list | None]:
    """(messages, tools) of a conversation row in any chat format (`CHAT_FORMATS`)."""
    where = {"path": path, "line": line}
    kind = detect_format(row)
    if kind in PREFERENCE_FORMATS:
        raise UserError("this is a preference (DPO) row; train it with --method dpo", code="wrong_method", **where)
    if kind is None:
        raise UserError("unknown format: expected an object with 'messages' (chat), 'prompt' and 'completion', "
                        "'conversations' (ShareGPT) or 'instruction' and 'output' (Alpaca)", code="unknown_format", **where)
    row, kind, places = native_row(row, kind, where)
    if kind == "completion":
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise UserError("'prompt' and 'completion' must be strings", code="bad_content", **where)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion, "weight": 1}], None
    messages = normalise_messages(row["messages"], where, places)
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise UserError("'tools' must be a list", code="bad_tools", **where)
    return messages, tools


def row_to_conversation(row: Any, path: str = "<data>", line: int | Row = 0) -> Conversation:
    messages, tools = row_to_messages(row, path, line)
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise UserError("no assistant message with weight 1: nothing to train on", code="no_trained_turn",
                        path=path, line=line)
    return Conversation(messages=messages, tools=tools, line=line)


def row_to_preference_pair(row: Any, path: str = "<data>", line: int | Row = 0) -> PreferencePair:
    where = {"path": path, "line": line}
    kind = detect_format(row)
    if kind in PAIR_LAYOUTS:
        row, kind, places = native_row(row, kind, where)
    else:
        places = None
    if kind == "pairs":
        try:
            prompt, chosen_text, rejected_text = split_pair_row(row)
        except ValueError as exc:
            raise UserError(str(exc), code="bad_dpo_row", **where) from None
        prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt_messages = normalise_messages(prompt_messages, where, places, label="prompt")
        return PreferencePair(prompt_messages, chosen_text, rejected_text, tools=row.get("tools"), line=line)
    if kind == "dpo":
        source = row.get("input")
        if not isinstance(source, dict) or "messages" not in source:
            raise UserError("'input' must be an object with 'messages'", code="bad_dpo_row", **where)
        prompt_messages = normalise_messages(source["messages"], where, label="input.messages")
        answers = []
        for key in ("preferred_output", "non_preferred_output"):
            value = row.get(key)
            if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
                raise UserError(f"'{key}' must be a list of exactly one assistant message", code="bad_dpo_row", **where)
            if value[0].get("role") != "assistant" or content_text(value[0].get("content")) is None:
                raise UserError(f"'{key}' must hold one assistant message with text content", code="bad_dpo_row", **where)
            answers.append(content_text(value[0]["content"]))
        return PreferencePair(prompt_messages, answers[0], answers[1], tools=source.get("tools"), line=line)
    raise UserError(
        "not a preference row: expected OpenAI DPO ('input', 'preferred_output', 'non_preferred_output'), "
        "'prompt'/'chosen'/'rejected', or ShareGPT or Alpaca rows with 'chosen' and 'rejected'",
        code="bad_dpo_row",
        **where,
    )


def load_conversations(path: str | Path) -> list[Conversation]:
    """Every conversation of a training file in any container (readers.py) and any chat format."""
    conversations = [row_to_conversation(row, str(path), place) for place, row in read_rows(path)]
    if not conversations:
        raise UserError("no examples in file", path=str(path), code="empty_file")
    return conversations


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Every preference pair of a file in any container and any preference format."""
    pairs = [row_to_preference_pair(row, str(path), place) for place, row in read_rows(path)]
    if not pairs:
        raise UserError("no examples in file", path=str(path), code="empty_file")
    return pairs
