"""Everything that can be wrong with one row, before and after the model's chat template renders it.

    tuneforge validate train.jsonl --model smollm2-135m-instruct

`check_row` is the structure of a parsed row (no tokenizer): it returns every problem as (code,
message) pairs, warnings included, so validate can list them all. `check_tokens` renders one
conversation with the model's own chat template and mask (`tokenize.tokenize_conversation_examples`), exactly as
training will see it. The codes are `findings.CODES`.
"""

from __future__ import annotations

from typing import Any

from tuneforge.data.findings import SHORT_ANSWER_CHARS
from tuneforge.data.formats import (
    CHAT_FORMATS,
    PREFERENCE_FORMATS,
    ROLES,
    content_text,
    detect_format,
    message_places,
    native_row,
    row_to_messages,
    split_pair_row,
)
from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation_examples
from tuneforge.errors import UserError

# ---- row structure (no tokenizer) ----------------------------------------------------------------


def _check_tools(tools: Any) -> list[tuple[str, str]]:
    ok = isinstance(tools, list) and all(
        isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and isinstance(t["function"].get("parameters", {}), dict)
        for t in tools
    )
    return [] if ok else [("bad_tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}")]


def _check_tool_calls(calls: Any, where: str) -> list[tuple[str, str]]:
    ok = isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments", ""), str)
        for c in calls
    )
    return [] if ok else [("bad_tool_calls", f"{where}.tool_calls must be a list of "
                           "{\"function\": {\"name\": str, \"arguments\": str}}")]


def check_messages(messages: Any, label: str = "messages", need_trained_turn: bool = True,
                   places: list | None = None) -> list[tuple[str, str]]:
    """Every structural problem of a message list, as (code, message) pairs (warnings included).

    `places` (from layouts.py) names each message as the user's file does; by default `label[i]`."""
    if not isinstance(messages, list) or not messages:
        return [("missing_messages", f"'{label}' must be a non-empty list of messages")]
    problems: list[tuple[str, str]] = []
    previous_role, previous_called, trained = None, False, False
    for index, message in enumerate(messages):
        where, text_where = message_places(places, label, index)
        if not isinstance(message, dict):
            problems.append(("bad_message", f"{where} is not an object"))
            previous_role, previous_called = None, False
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(("bad_role", f"{where} has role {short_repr(role)}; expected one of {', '.join(ROLES)}"))
            previous_role, previous_called = None, False
            continue
        if role == "system" and index != 0:
            problems.append(("bad_role_order", f"{where} is a system message; only the first message may be one"))
        if role == "tool" and not (previous_called or previous_role == "tool"):
            problems.append(("bad_role_order", f"{where} is a tool result without an assistant tool call before it"))
        if role in ("user", "assistant") and role == previous_role:
            problems.append(("consecutive_same_role", f"{where} is a second {role} message in a row"))
        content = message.get("content")
        text = content_text(content)
        calls = message.get("tool_calls") if role == "assistant" else None
        if text is None and not (calls and content is None):
            problems.append(("bad_content", f"{text_where} must be a string or a list of text parts, got {short_repr(content)}"))
        elif text is not None and not _encodable(text):
            problems.append(("bad_content", f"{text_where} holds invalid Unicode (a lone surrogate escape)"))
        if calls is not None:
            problems.extend(_check_tool_calls(calls, where))
        if role == "assistant":
            weight = message.get("weight", 1)
            if isinstance(weight, bool) or weight not in (0, 1):
                problems.append(("bad_weight", f"{where}.weight must be 0 or 1, got {short_repr(weight)}"))
            elif weight == 1:
                trained = True
                if text is not None and not calls:
                    if not text.strip():
                        problems.append(("empty_answer", f"{where} is a trained answer with no text"))
                    elif len(text.strip()) < SHORT_ANSWER_CHARS:
                        problems.append(("short_answer", f"{where} is a trained answer of {len(text.strip())} characters"))
        previous_role, previous_called = role, bool(calls)
    if need_trained_turn and not trained and not any(code == "bad_weight" for code, _ in problems):
        inside = "" if places else f" in '{label}'"
        problems.append(("no_trained_turn", f"no assistant message with weight 1{inside}: nothing to train on"))
    return problems


def _check_answer(value: Any, key: str) -> list[tuple[str, str]]:
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
        return [("bad_dpo_row", f"'{key}' must be a list of exactly one assistant message")]
    if value[0].get("role") != "assistant" or content_text(value[0].get("content")) is None:
        return [("bad_dpo_row", f"'{key}' must hold one assistant message with text content")]
    return []


def check_row(row: Any, method: str = "sft") -> list[tuple[str, str]]:
    """Every structural problem of one parsed row for `method` ("sft", "dpo" or "grpo"), in any format of `FORMATS`."""
    if not isinstance(row, dict):
        return [("not_object", f"expected a JSON object, got {type(row).__name__}")]
    kind = detect_format(row)
    if method == "grpo":
        return _check_prompt_row(row, kind)
    if method == "dpo" and kind not in PREFERENCE_FORMATS:
        return [("bad_dpo_row", "not a preference row: expected OpenAI DPO ('input', 'preferred_output', "
                 "'non_preferred_output'), 'prompt'/'chosen'/'rejected', or ShareGPT or Alpaca rows with "
                 "'chosen' and 'rejected'")]
    if method != "dpo" and kind in PREFERENCE_FORMATS:
        return [("wrong_method", "this is a preference (DPO) row; validate and train it with --method dpo")]
    if kind is None:
        return [("unknown_format", "unknown format: expected an object with 'messages' (chat), 'prompt' and "
                 "'completion', 'conversations' (ShareGPT) or 'instruction' and 'output' (Alpaca)")]
    try:
        row, kind, places = native_row(row, kind, {"path": None, "line": None})
    except UserError as exc:
        return [(exc.code, exc.bare_message)]
    if kind == "dpo":
        return _check_dpo(row)
    if kind == "pairs":
        return _check_pair(row, places)
    if kind == "completion":
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            return [("bad_content", "'prompt' and 'completion' must be strings")]
        if not _encodable(row["prompt"] + row["completion"]):
            return [("bad_content", "'prompt' or 'completion' holds invalid Unicode (a lone surrogate escape)")]
        return [] if row["completion"].strip() else [("empty_answer", "'completion' is empty")]
    problems = check_messages(row["messages"], places=places)
    if row.get("tools") is not None:
        problems += _check_tools(row["tools"])
    return problems


def _check_prompt_row(row: dict, kind: str | None) -> list[tuple[str, str]]:
    """A GRPO / reinforcement prompt: a conversation ending in a user message, optionally followed by one
    reference answer; any other fields (OpenAI's reference_answer, ...) are the grader's and pass as they are."""
    if kind not in CHAT_FORMATS:
        return [("bad_prompt_row", "expected a conversation ('messages' ending in a user message); grading "
                 "fields such as 'reference_answer' go beside 'messages'")]
    try:
        native, kind, places = native_row(row, kind, {"path": None, "line": None})
        if "messages" in native:
            messages = native["messages"]
            problems = check_messages(messages, places=places, need_trained_turn=False)
        else:  # prompt/completion: the completion is the reference answer
            messages, problems = row_to_messages(row)[0], []
    except UserError as exc:
        return [(exc.code, exc.bare_message)]
    roles = [m.get("role") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    if roles and roles[-1] == "assistant":
        roles = roles[:-1]  # the reference answer
    if roles and roles[-1] != "user":
        problems.append(("bad_prompt_row", "the prompt must end with a user message (optionally followed by one "
                         "reference assistant message)"))
    if native.get("tools") is not None:
        problems += _check_tools(native["tools"])
    return problems


def _check_dpo(row: dict) -> list[tuple[str, str]]:
    source = row.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        return [("bad_dpo_row", "'input' must be an object with 'messages'")]
    problems = check_messages(source["messages"], "input.messages", need_trained_turn=False)
    if source.get("tools") is not None:
        problems += _check_tools(source["tools"])
    return problems + _check_answer(row.get("preferred_output"), "preferred_output") + _check_answer(
        row.get("non_preferred_output"), "non_preferred_output")


def _check_pair(row: dict, places: list | None) -> list[tuple[str, str]]:
    try:
        prompt, chosen, rejected = split_pair_row(row)
    except ValueError as exc:
        return [("bad_dpo_row", str(exc))]
    problems = [] if isinstance(prompt, str) else check_messages(prompt, "prompt", need_trained_turn=False, places=places)
    if row.get("tools") is not None:
        problems += _check_tools(row["tools"])
    if not _encodable(chosen + rejected + (prompt if isinstance(prompt, str) else "")):
        problems.append(("bad_content", "'prompt', 'chosen' or 'rejected' holds invalid Unicode"))
    return problems


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- rendering with the model's tokenizer ----------------------------------------------------------


def check_tokens(tokenizer, eot_ids: set[int], messages: list[dict], tools, max_length: int):
    """(the longest untruncated sequence, problems, trained tokens kept after truncation) for one conversation.

    Tokenised exactly as SFT does (`tokenize_conversation_examples`): a template that rewrites earlier turns
    trains them in sequences of their own, each cut at max_length, so the counts add up over the sequences."""
    try:
        examples = tokenize_conversation_examples(tokenizer, messages, tools, max_length=None)
    except UserError as exc:
        return None, [(exc.code or "template_error", exc.bare_message)], 0
    except Exception as exc:  # a template's raise_exception, or a jinja error on odd input
        return None, [("template_error", f"the chat template failed: {type(exc).__name__}: {str(exc)[:200]}")], 0
    problems = []
    kept = sum(sum(1 for label in e.labels[:max_length] if label != IGNORE_INDEX) for e in examples)
    n_trained = sum(e.n_trained for e in examples)
    n_turns = sum(1 for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1)
    longest = max(examples, key=lambda e: len(e.input_ids))
    if n_trained == 0:
        problems.append(("no_trained_tokens", "no trained tokens after rendering with the chat template"))
    elif kept == 0:
        problems.append(("no_trained_tokens", f"all trained tokens lie beyond --max-length {max_length} "
                         f"({len(longest.input_ids)} tokens)"))
    elif eot_ids and sum(1 for e in examples for label in e.labels if label in eot_ids) < n_turns:
        problems.append(("end_of_turn_not_trained", "the end-of-turn token after a trained answer is not trained, "
                         "so the model would never learn to stop (check the chat template)"))
    if len(longest.input_ids) > max_length:
        cut = sum(max(0, len(e.input_ids) - max_length) for e in examples)
        problems.append(("too_long", f"{len(longest.input_ids)} tokens > --max-length {max_length}: {cut} tokens "
                         f"would be cut ({n_trained - kept} of them trained)"))
    return longest, problems, kept

