"""Other tools' row layouts -> the two formats.py reads natively:  tuneforge convert sharegpt.json train.jsonl

    sharegpt                   {"conversations": [{"from": "human"|"gpt"|"system"|..., "value": ...}], "system"?, "tools"?}
                               (also under "messages", and with role/content turns)
    alpaca                     {"instruction": ..., "input"?: ..., "output": ..., "system"?: ..., "history"?: [[q, a], ...]}
    conversational_completion  {"prompt": [messages], "completion": [messages]}   (TRL's conversational prompt-completion)
    sharegpt_pairs             {"conversations": [prompt turns], "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}
    alpaca_pairs               {"instruction": ..., "input"?: ..., "chosen": "...", "rejected": "..."}

The first three become an OpenAI chat row ({"messages": [...], "tools"?}), the last two a prompt/chosen/rejected
row with a message-list prompt. Each is mapped field for field, and `Mapped.places` keeps where each message
came from, so a problem found later names the user's own field ("conversations[3].value"), not ours. A
problem in the layout itself is a `LayoutError` with its code (findings.CODES).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# ShareGPT speakers (the `from` field) and the OpenAI role each becomes. "function_call" is an assistant
# tool call whose value is {"name": ..., "arguments": ...}; the tool's answer follows as "observation".
SPEAKERS = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool", "function": "tool", "function_response": "tool", "ipython": "tool",
}
CHAT_LAYOUTS = ("sharegpt", "alpaca", "conversational_completion")
PAIR_LAYOUTS = ("sharegpt_pairs", "alpaca_pairs")


class LayoutError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Mapped:
    row: dict  # {"messages": [...], "tools"?} for a chat layout; {"prompt": [...], "chosen", "rejected"} for a pair
    places: list[tuple[str, str]]  # per message of row["messages"] / row["prompt"]: (where it is, where its text is)


def to_native(row: dict, kind: str) -> Mapped:
    """The row in the layout formats.py reads (`kind` from formats.detect_format); LayoutError when it cannot be."""
    if kind in ("sharegpt", "sharegpt_pairs"):
        key = "conversations" if "conversations" in row else "messages"
        messages, places = sharegpt_messages(row[key], key)
        if isinstance(row.get("system"), str) and row["system"]:
            messages, places = [{"role": "system", "content": row["system"]}, *messages], [("'system'", "'system'"), *places]
        tools = _tools(row.get("tools"))
    elif kind in ("alpaca", "alpaca_pairs"):
        messages, places = alpaca_prompt(row)
        tools = _tools(row.get("tools"))
    elif kind == "conversational_completion":
        return _conversational(row)
    else:
        raise ValueError(f"not a layout this module maps: {kind}")
    extra = {"tools": tools} if tools is not None else {}
    if kind == "sharegpt":
        return Mapped({"messages": messages, **extra}, places)
    if kind == "alpaca":
        if "output" not in row:
            raise LayoutError("missing_field", "an Alpaca row needs 'output' (the answer) beside 'instruction'")
        if not isinstance(row["output"], str):
            raise LayoutError("bad_content", f"'output' must be a string, got {type(row['output']).__name__}")
        return Mapped({"messages": [*messages, {"role": "assistant", "content": row["output"]}], **extra},
                      [*places, ("'output'", "'output'")])
    answers = {key: _sharegpt_answer(row[key]) for key in ("chosen", "rejected")}
    return Mapped({"prompt": messages, **answers, **extra}, places)


def sharegpt_messages(turns: Any, key: str) -> tuple[list[dict], list[tuple[str, str]]]:
    if not isinstance(turns, list) or not turns:
        raise LayoutError("missing_messages", f"'{key}' must be a non-empty list of turns")
    messages, places, pending_calls = [], [], []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise LayoutError("bad_message", f"{where} is not an object")
        speaker_key, text_key = ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        speaker = turn.get(speaker_key)
        role = SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise LayoutError("bad_role", f"{where}.{speaker_key} is {str(speaker)[:40]!r}; expected one of "
                              "human, gpt, system, function_call, observation (or user, assistant, tool)")
        message = {k: v for k, v in turn.items() if k in ("tool_calls", "tool_call_id", "name", "weight")}
        message.update(role=role, content=turn.get(text_key))
        if isinstance(speaker, str) and speaker.lower() == "function_call":
            message.update(content=None, tool_calls=_tool_calls(turn.get(text_key), f"{where}.{text_key}", index))
            pending_calls += [call["id"] for call in message["tool_calls"]]
        elif role == "tool" and "tool_call_id" not in message and pending_calls:
            message["tool_call_id"] = pending_calls.pop(0)
        messages.append(message)
        places.append((where, f"{where}.{text_key}"))
    return messages, places


def _tool_calls(value: Any, where: str, index: int) -> list[dict]:
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        calls = None
    calls = calls if isinstance(calls, list) else [calls]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise LayoutError("bad_tool_calls", f"{where} of a function_call must be JSON "
                          "{\"name\": ..., \"arguments\": {...}} (or a list of them)")
    return [{"id": f"call_{index}_{n}", "type": "function",
             "function": {"name": c["name"], "arguments": c.get("arguments") if isinstance(c.get("arguments"), str)
                          else json.dumps(c.get("arguments", {}), ensure_ascii=False)}} for n, c in enumerate(calls)]


def _tools(value: Any) -> Any:
    """OpenAI tools, from a list or a JSON string of one; bare function definitions get their wrapper."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise LayoutError("bad_tools", "'tools' must be a list, or a JSON string of one") from None
    if isinstance(value, list):
        return [{"type": "function", "function": t} if isinstance(t, dict) and "name" in t and "function" not in t
                else t for t in value]
    return value  # not a list: the checks of the chat row report it


def _sharegpt_answer(value: Any) -> Any:
    """A {"from": "gpt", "value": ...} answer as an assistant message; other shapes pass as they are."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict) and "from" in value:
        if SPEAKERS.get(str(value["from"]).lower()) != "assistant":
            return {"role": str(value["from"]), "content": value.get("value")}  # refused later: not an assistant
        return {"role": "assistant", "content": value.get("value")}
    return value


def alpaca_prompt(row: dict) -> tuple[list[dict], list[tuple[str, str]]]:
    """system, history turns, then the user turn: instruction and input joined by a blank line."""
    for key in ("instruction", "input", "system"):
        if (key == "instruction" or row.get(key) is not None) and not isinstance(row.get(key), str):
            raise LayoutError("bad_content", f"'{key}' must be a string, got {type(row.get(key)).__name__}")
    messages, places = [], []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
        places.append(("'system'", "'system'"))
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 for t in history):
        raise LayoutError("bad_message", "'history' must be a list of [instruction, answer] pairs")
    for index, (asked, answered) in enumerate(history):
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        places += [(f"history[{index}][0]",) * 2, (f"history[{index}][1]",) * 2]
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    messages.append({"role": "user", "content": user})
    places.append(("'instruction'", "'instruction'"))
    return messages, places


def _conversational(row: dict) -> Mapped:
    """TRL's prompt/completion as message lists: the prompt is context (its answers untrained), the completion trained."""
    messages, places = [], []
    for key, trained in (("prompt", False), ("completion", True)):
        value = row[key]
        if isinstance(value, str):
            value = [{"role": "user" if key == "prompt" else "assistant", "content": value}]
            where = [(f"'{key}'", f"'{key}'")]
        elif isinstance(value, list) and value:
            where = [(f"{key}[{i}]", f"{key}[{i}].content") for i in range(len(value))]
        else:
            raise LayoutError("bad_content", f"'{key}' must be a string or a non-empty list of messages")
        for message in value:
            untrained = not trained and isinstance(message, dict) and message.get("role") == "assistant"
            messages.append({**message, "weight": 0} if untrained else message)
        places += where
    tools = _tools(row.get("tools"))
    return Mapped({"messages": messages, **({"tools": tools} if tools is not None else {})}, places)
