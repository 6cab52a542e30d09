"""Tool calls in a model's own words -> OpenAI's `message.tool_calls`; no torch, used by the API process.

    content, calls = parse_tool_calls(text, tool_names={"get_weather"})

A model writes a tool call the way its chat template rendered tool calls in training (tuneforge trains the
OpenAI rows' `tool_calls` through the model's own template, data/tokenize.py), so the parser reads the
shapes the common templates use, not one house format:

    hermes   <tool_call>{"name": ..., "arguments": {...}}</tool_call>   Qwen 2.5/3, SmolLM, Hermes, many
             fine-tunes; a tag may hold one object or a list of them, and several tags may follow each other
    llama3   {"name": ..., "parameters": {...}}   the whole answer, optionally after <|python_tag|>; several
             calls separated by ';' (Llama 3.1/3.2 JSON tool calling)
    mistral  [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
    json     a bare JSON object or list of objects with "name" and "arguments" (what a template without tool
             support makes of a fine-tune that learnt to answer in JSON)

A call counts only when its name is one of the request's tools (when `tool_names` is given) and its
arguments are a JSON object; otherwise the text is the answer's content, unchanged. `ToolCallStream`
does the same on a stream of pieces: text that cannot be a call is passed on as soon as that is certain,
and each call is handed over when its text is complete.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
PYTHON_TAG, MISTRAL_TAG = "<|python_tag|>", "[TOOL_CALLS]"
JSON_STARTS = ("{", "[", PYTHON_TAG, MISTRAL_TAG)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict

    def openai(self, call_id: str | None = None) -> dict:
        """OpenAI's shape: arguments are a JSON string, ids start with call_."""
        return {
            "id": call_id or new_call_id(),
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _calls_from_json(value, tool_names: Iterable[str] | None) -> list[ToolCall] | None:
    """Calls from decoded JSON (an object or a list of objects), or None when it is not made of calls."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}} as OpenAI writes it
            item = item["function"]
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        if tool_names is not None and item["name"] not in tool_names:
            return None
        calls.append(ToolCall(item["name"], arguments))
    return calls


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _tagged_calls(text: str, tool_names) -> tuple[str, list[ToolCall]] | None:
    """Hermes-style tags: (the text outside them, the calls), or None when a tag holds no call."""
    if OPEN_TAG not in text:
        return None
    calls: list[ToolCall] = []
    outside = []
    position = 0
    for match in re.finditer(re.escape(OPEN_TAG) + r"(.*?)(?:" + re.escape(CLOSE_TAG) + r"|$)", text, re.S):
        outside.append(text[position : match.start()])
        position = match.end()
        found = _calls_from_json(_loads(match.group(1).strip()), tool_names)
        if found is None:
            return None
        calls += found
    outside.append(text[position:])
    return "".join(outside).strip(), calls


def _json_calls(text: str, tool_names) -> list[ToolCall] | None:
    """The whole answer as JSON calls: Llama 3 (`;`-separated, optional <|python_tag|>), Mistral, bare JSON."""
    body = text.strip().removeprefix(PYTHON_TAG).removeprefix(MISTRAL_TAG).strip()
    if not body.startswith(("{", "[")):
        return None
    whole = _loads(body)
    if whole is not None:
        return _calls_from_json(whole, tool_names)
    calls = []
    for part in body.split(";"):  # Llama 3 writes parallel calls as {...}; {...}
        found = _calls_from_json(_loads(part.strip()), tool_names) if part.strip() else None
        if found is None:
            return None
        calls += found
    return calls


def parse_tool_calls(text: str, tool_names: Iterable[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls). With no call found: (text, []). With calls: the text around them (None when empty)."""
    names = set(tool_names) if tool_names is not None else None
    tagged = _tagged_calls(text, names)
    if tagged is not None:
        content, calls = tagged
        return (content or None), calls
    calls = _json_calls(text, names)
    if calls:
        return None, calls
    return text, []


def _longest_tag_prefix_at_end(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag` (kept back while streaming)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ToolCallStream:
    """Feed streamed pieces; get back ("content", text) and ("call", ToolCall) events in order.

    Text before a <tool_call> tag streams as content at once (less any tail that may be the tag's start);
    each tagged call is handed over when its closing tag arrives. An answer that starts like JSON (the
    Llama 3 / Mistral / bare shapes) is held to the end, where it is either calls or content after all.
    """

    def __init__(self, tool_names: Iterable[str] | None = None):
        self.names = set(tool_names) if tool_names is not None else None
        self.buffer = ""
        self.in_tag = False
        self.whole_answer = False  # the answer began like JSON: decide at the end
        self.started = False  # some content was already passed on, so the answer is not bare JSON
        self.failed_tag = False  # a tag held no call: everything from there on is content

    def feed(self, piece: str) -> list[tuple[str, object]]:
        self.buffer += piece
        return self._drain(final=False)

    def finish(self) -> list[tuple[str, object]]:
        return self._drain(final=True)

    def _content(self, text: str) -> list[tuple[str, object]]:
        if not text:
            return []
        self.started = True
        return [("content", text)]

    def _drain(self, final: bool) -> list[tuple[str, object]]:
        events: list[tuple[str, object]] = []
        while True:
            if self.failed_tag:
                events += self._content(self.buffer)
                self.buffer = ""
                return events
            if self.whole_answer or (not self.started and not self.in_tag and self._may_be_json()):
                if not final:
                    return events
                self.whole_answer = False
                calls = _json_calls(self.buffer, self.names)
                if calls:
                    events += [("call", call) for call in calls]
                    self.buffer = ""
                    return events
                self.started = True  # not JSON calls after all: it is the answer's text (tags included)
                continue
            if self.in_tag:
                end = self.buffer.find(CLOSE_TAG)
                if end < 0 and not final:
                    return events
                inside = self.buffer[:end] if end >= 0 else self.buffer
                calls = _calls_from_json(_loads(inside.strip()), self.names)
                if calls is None:
                    self.failed_tag = True
                    self.buffer = OPEN_TAG + self.buffer
                    continue
                events += [("call", call) for call in calls]
                self.buffer = self.buffer[end + len(CLOSE_TAG) :] if end >= 0 else ""
                self.in_tag = False
                continue
            start = self.buffer.find(OPEN_TAG)
            if start >= 0:
                before = self.buffer[:start]
                events += self._content(before.rstrip() if before.strip() else "")
                self.buffer = self.buffer[start + len(OPEN_TAG) :]
                self.in_tag = True
                continue
            keep = 0 if final else _longest_tag_prefix_at_end(self.buffer, OPEN_TAG)
            ready = self.buffer[: len(self.buffer) - keep]
            if not self.started and not ready.strip():
                if final:
                    events += self._content(self.buffer if self.buffer.strip() else "")
                    self.buffer = ""
                return events  # only whitespace so far: the answer may still open with a tag or JSON
            events += self._content(ready)
            self.buffer = self.buffer[len(ready) :]
            return events

    def _may_be_json(self) -> bool:
        head = self.buffer.lstrip()
        if not head:
            return False
        return any(head.startswith(start) or start.startswith(head) for start in JSON_STARTS)


def template_tool_format(template: str | None) -> str:
    """Which shape a chat template writes tool calls in ("hermes", "llama3", "mistral"); hermes when unsure
    (it is what most templates with tool support use, and the constrained tool_choice grammar writes it)."""
    text = template or ""
    if MISTRAL_TAG in text:
        return "mistral"
    if OPEN_TAG in text:
        return "hermes"
    if PYTHON_TAG in text or ("parameters" in text and "ipython" in text):
        return "llama3"
    return "hermes"
