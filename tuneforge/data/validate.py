"""Check a training file before any compute is spent:  tuneforge validate train.jsonl [--model M] [--json]

The file is streamed line by line (a 200 MB file stays in bounded memory), and every problem is
collected, not just the first: each has the 1-based line, a stable code (the table is `CODES`, and
docs/data.md) and a message. Errors make the file unusable for training; warnings are worth reading.
Row parsing is checked here in full, then handed to `formats.row_to_conversation` /
`row_to_preference_pair`, so validate and train can never disagree about a row. With a tokenizer, each
example is rendered with the model's own chat template and mask (`tokenize.tokenize_conversation`),
exactly as training will see it.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.curation import exact_key, near_key
from tuneforge.data.formats import (
    ROLES,
    content_text,
    detect_format,
    row_to_conversation,
    row_to_preference_pair,
    split_pair_row,
)
from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample, end_of_turn_ids, tokenize_conversation
from tuneforge.errors import UserError

MIN_EXAMPLES = 10
# OpenAI's published rule for n_epochs="auto" (cookbook "Data preparation and analysis for chat model
# fine-tuning"): 3 epochs, scaled so that examples x epochs lands in [100, 25000], clamped to [1, 25].
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 3, 100, 25_000, 1, 25
SHORT_ANSWER_CHARS = 3
MAX_LISTED_PER_CODE = 50  # findings listed per code; all are counted in `finding_counts`

# code -> (severity, meaning, how to fix). docs/data.md renders this table; tests check they agree.
CODES: dict[str, tuple[str, str, str]] = {
    "invalid_json": ("error", "the line is not valid JSON (or not UTF-8)", "write exactly one JSON object per line"),
    "not_object": ("error", "the line is JSON but not an object", "wrap the example in {...}"),
    "unknown_format": ("error", "the object has none of the known shapes", "use {\"messages\": [...]} or prompt/completion"),
    "wrong_method": ("error", "a preference row in an SFT file", "train it with --method dpo, or convert it to messages"),
    "missing_messages": ("error", "'messages' is missing, not a list, or empty", "give a non-empty list of messages"),
    "bad_message": ("error", "a message is not an object", "each message is {\"role\": ..., \"content\": ...}"),
    "bad_role": ("error", "a role other than system, user, assistant, tool", "fix the role name"),
    "bad_role_order": ("error", "system not first, or a tool message without a preceding assistant tool call",
                       "put the system message first; tool messages follow an assistant message with tool_calls"),
    "bad_content": ("error", "content is not a string or a list of text parts",
                    "use a string, or [{\"type\": \"text\", \"text\": ...}]"),
    "bad_weight": ("error", "an assistant 'weight' other than 0 or 1", "use 0 (not trained) or 1 (trained)"),
    "no_trained_turn": ("error", "no assistant message with weight 1", "add an assistant answer, or set its weight to 1"),
    "bad_tools": ("error", "'tools' is not a list of function definitions",
                  "use [{\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}]"),
    "bad_tool_calls": ("error", "an assistant 'tool_calls' entry is malformed",
                       "use [{\"id\": ..., \"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": \"{...}\"}}]"),
    "bad_dpo_row": ("error", "not an OpenAI DPO row nor prompt/chosen/rejected",
                    "use {\"input\": {\"messages\": [...]}, \"preferred_output\": [one assistant message], "
                    "\"non_preferred_output\": [one assistant message]}"),
    "template_error": ("error", "the model's chat template refuses the conversation", "reorder the messages as the model expects"),
    "template_not_prefix_stable": ("error", "the chat template re-renders earlier turns", "use single-turn examples or another model"),
    "no_trained_tokens": ("error", "nothing is trained after rendering and truncation",
                          "shorten the prompt or raise --max-length"),
    "end_of_turn_not_trained": ("error", "the end-of-turn token of a trained answer is not trained: the model would "
                                "never learn to stop", "use a model whose chat template closes assistant turns"),
    "too_few_examples": ("error", f"fewer than {MIN_EXAMPLES} examples", f"give at least {MIN_EXAMPLES} examples"),
    "too_long": ("warning", "the example is longer than --max-length; its end will be cut",
                 "shorten it, split it, or raise --max-length"),
    "duplicate": ("warning", "the same example appears earlier", "tuneforge dedup FILE --output OUT"),
    "near_duplicate": ("warning", "the same words as an earlier example (case, punctuation, spacing aside)",
                       "tuneforge dedup FILE --output OUT --near"),
    "train_validation_overlap": ("warning", "a validation example also appears in the training file",
                                 "tuneforge split, or remove it from one file"),
    "empty_answer": ("warning", "a trained assistant answer is empty", "write the answer, or set weight 0"),
    "short_answer": ("warning", f"a trained assistant answer has fewer than {SHORT_ANSWER_CHARS} characters",
                     "check the answer is complete"),
    "consecutive_same_role": ("warning", "two user (or two assistant) messages in a row", "merge them, unless intended"),
    "imbalanced_labels": ("warning", "answers repeat and one answer dominates", "balance the classes or check the data"),
    "tokenizer_unavailable": ("warning", "the default model's tokenizer could not be loaded: token checks skipped",
                              "pass --model"),
}


@dataclass
class Finding:
    line: int  # 1-based; 0 means the file as a whole
    code: str
    message: str
    file: str | None = None  # "validation" for findings in --validation-file

    @property
    def severity(self) -> str:
        return CODES[self.code][0]

    def to_dict(self) -> dict:
        out = {"line": self.line, "code": self.code, "message": self.message}
        if self.file:
            out["file"] = self.file
        return out


def auto_epochs(n_examples: int) -> int | None:
    if n_examples <= 0:
        return None
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


# ---- row structure (no tokenizer) ----------------------------------------------------------------


def _check_tools(tools: Any) -> list[tuple[str, str]]:
    ok = isinstance(tools, list) and all(
        isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and isinstance(t["function"].get("parameters", {}), dict)
        for t in tools
    )
    return [] if ok else [("bad_tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}")]


def _check_tool_calls(calls: Any, index: int) -> list[tuple[str, str]]:
    ok = isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments", ""), str)
        for c in calls
    )
    return [] if ok else [("bad_tool_calls", f"messages[{index}].tool_calls must be a list of "
                           "{\"function\": {\"name\": str, \"arguments\": str}}")]


def check_messages(messages: Any, label: str = "messages", need_trained_turn: bool = True) -> list[tuple[str, str]]:
    """Every structural problem of a message list, as (code, message) pairs (warnings included)."""
    if not isinstance(messages, list) or not messages:
        return [("missing_messages", f"'{label}' must be a non-empty list of messages")]
    problems: list[tuple[str, str]] = []
    previous_role, previous_called, trained = None, False, False
    for index, message in enumerate(messages):
        where = f"{label}[{index}]"
        if not isinstance(message, dict):
            problems.append(("bad_message", f"{where} is not an object"))
            previous_role, previous_called = None, False
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(("bad_role", f"{where} has role {_short(role)}; expected one of {', '.join(ROLES)}"))
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
            problems.append(("bad_content", f"{where}.content must be a string or a list of text parts, got {_short(content)}"))
        elif text is not None and not _encodable(text):
            problems.append(("bad_content", f"{where}.content holds invalid Unicode (a lone surrogate escape)"))
        if calls is not None:
            problems.extend(_check_tool_calls(calls, index))
        if role == "assistant":
            weight = message.get("weight", 1)
            if isinstance(weight, bool) or weight not in (0, 1):
                problems.append(("bad_weight", f"{where}.weight must be 0 or 1, got {_short(weight)}"))
            elif weight == 1:
                trained = True
                if text is not None and not calls:
                    if not text.strip():
                        problems.append(("empty_answer", f"{where} is a trained answer with no text"))
                    elif len(text.strip()) < SHORT_ANSWER_CHARS:
                        problems.append(("short_answer", f"{where} is a trained answer of {len(text.strip())} characters"))
        previous_role, previous_called = role, bool(calls)
    if need_trained_turn and not trained and not any(code == "bad_weight" for code, _ in problems):
        problems.append(("no_trained_turn", f"no assistant message with weight 1 in '{label}': nothing to train on"))
    return problems


def _check_answer(value: Any, key: str) -> list[tuple[str, str]]:
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
        return [("bad_dpo_row", f"'{key}' must be a list of exactly one assistant message")]
    if value[0].get("role") != "assistant" or content_text(value[0].get("content")) is None:
        return [("bad_dpo_row", f"'{key}' must hold one assistant message with text content")]
    return []


def check_row(row: Any, method: str = "sft") -> list[tuple[str, str]]:
    """Every structural problem of one parsed row for `method` ("sft" or "dpo")."""
    if not isinstance(row, dict):
        return [("not_object", f"expected a JSON object, got {type(row).__name__}")]
    kind = detect_format(row)
    if method == "dpo":
        if kind == "dpo":
            source = row.get("input")
            if not isinstance(source, dict) or "messages" not in source:
                return [("bad_dpo_row", "'input' must be an object with 'messages'")]
            problems = check_messages(source["messages"], "input.messages", need_trained_turn=False)
            if source.get("tools") is not None:
                problems += _check_tools(source["tools"])
            return problems + _check_answer(row.get("preferred_output"), "preferred_output") + _check_answer(
                row.get("non_preferred_output"), "non_preferred_output")
        if kind == "pairs":
            try:
                prompt, chosen, rejected = split_pair_row(row)
            except ValueError as exc:
                return [("bad_dpo_row", str(exc))]
            problems = [] if isinstance(prompt, str) else check_messages(prompt, "prompt", need_trained_turn=False)
            if row.get("tools") is not None:
                problems += _check_tools(row["tools"])
            if not _encodable(chosen + rejected + (prompt if isinstance(prompt, str) else "")):
                problems.append(("bad_content", "'prompt', 'chosen' or 'rejected' holds invalid Unicode"))
            return problems
        return [("bad_dpo_row", "not a preference row: expected OpenAI DPO ('input', 'preferred_output', "
                 "'non_preferred_output') or 'prompt'/'chosen'/'rejected'")]
    if kind == "chat":
        problems = check_messages(row["messages"])
        if row.get("tools") is not None:
            problems += _check_tools(row["tools"])
        return problems
    if kind == "completion":
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            return [("bad_content", "'prompt' and 'completion' must be strings")]
        if not _encodable(row["prompt"] + row["completion"]):
            return [("bad_content", "'prompt' or 'completion' holds invalid Unicode (a lone surrogate escape)")]
        return [] if row["completion"].strip() else [("empty_answer", "'completion' is empty")]
    if kind in ("dpo", "pairs"):
        return [("wrong_method", "this is a preference (DPO) row; validate and train it with --method dpo")]
    return [("unknown_format", "unknown format: expected an object with 'messages' (chat) or 'prompt' and 'completion'")]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- rendering with the model's tokenizer ----------------------------------------------------------


def check_tokens(tokenizer, eot_ids: set[int], messages: list[dict], tools, max_length: int):
    """(untruncated example, problems, trained tokens kept after truncation) for one conversation."""
    try:
        example = tokenize_conversation(tokenizer, messages, tools, max_length=None)
    except UserError as exc:
        return None, [(exc.code or "template_error", exc.bare_message)], 0
    except Exception as exc:  # a template's raise_exception, or a jinja error on odd input
        return None, [("template_error", f"the chat template failed: {type(exc).__name__}: {str(exc)[:200]}")], 0
    problems = []
    kept = sum(1 for label in example.labels[:max_length] if label != IGNORE_INDEX)
    n_turns = sum(1 for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1)
    if example.n_trained == 0:
        problems.append(("no_trained_tokens", "no trained tokens after rendering with the chat template"))
    elif kept == 0:
        problems.append(("no_trained_tokens", f"all trained tokens lie beyond --max-length {max_length} "
                         f"({len(example.input_ids)} tokens)"))
    elif eot_ids and sum(1 for label in example.labels if label in eot_ids) < n_turns:
        problems.append(("end_of_turn_not_trained", "the end-of-turn token after a trained answer is not trained, "
                         "so the model would never learn to stop (check the chat template)"))
    if len(example.input_ids) > max_length:
        cut = len(example.input_ids) - max_length
        problems.append(("too_long", f"{len(example.input_ids)} tokens > --max-length {max_length}: {cut} tokens "
                         f"would be cut ({example.n_trained - kept} of them trained)"))
    return example, problems, kept


# ---- the streaming validator -----------------------------------------------------------------------


@dataclass
class ValidationReport:
    path: str
    method: str
    n_examples: int = 0
    n_tokens: int = 0
    n_trained_tokens: int = 0
    lengths: array = field(default_factory=lambda: array("l"))
    findings: list[Finding] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    longest: list = field(default_factory=list)  # heap of (length, line, id, TokenizedExample) for calibration
    estimate: dict | None = None
    max_length: int = 2048
    tokenized: bool = False

    def add(self, line: int, code: str, message: str, file: str | None = None) -> None:
        self.counts[code] += 1
        if self.counts[code] <= MAX_LISTED_PER_CODE:
            self.findings.append(Finding(line, code, message, file))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not any(CODES[code][0] == "error" for code in self.counts)

    def token_stats(self) -> dict | None:
        if not self.lengths:
            return None
        ordered = sorted(self.lengths)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "p95": p95, "max": ordered[-1]}

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "path": self.path,
            "method": self.method,
            "n_examples": self.n_examples,
            "n_tokens": self.n_tokens if self.tokenized else None,
            "n_trained_tokens": self.n_trained_tokens if self.tokenized else None,
            "tokens_per_example": self.token_stats(),
            "max_length": self.max_length,
            "auto_epochs": auto_epochs(self.n_examples),
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "finding_counts": dict(sorted(self.counts.items())),
            "estimate": self.estimate or {},
        }


class _Progress:
    def __init__(self, path: Path, enabled: bool):
        self.total = path.stat().st_size if enabled else 0
        self.enabled = enabled and self.total > 0
        self.last = time.monotonic()
        self.name = path.name

    def update(self, done: int, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (final or now - self.last >= 2.0):
            self.last = now
            print(f"validate {self.name}: {done / 2**20:.1f}/{self.total / 2**20:.1f} MB "
                  f"({100 * done / self.total:.0f}%), {rows} examples", file=sys.stderr, flush=True)


def _iter_rows(path: Path):
    """(line number, parsed row or None, problem or None, byte offset after the line), streaming."""
    done = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw), None, done
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, None, ("invalid_json", f"not valid JSON ({exc})"[:300]), done
            except RecursionError:
                yield number, None, ("invalid_json", "not usable JSON (nested too deeply)"), done


def _trained_answer(messages: list[dict]) -> str:
    answers = [m.get("content") or "" for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1]
    return answers[-1] if answers else ""


def validate_file(path, method: str = "sft", tokenizer=None, max_length: int = 2048, validation_file=None,
                  progress: bool = False, model_config=None, min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Stream `path` (and `validation_file`) through every check; never raises for bad content."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=str(path))
    if validation_file is not None and not Path(validation_file).is_file():
        raise UserError("validation file not found", path=str(validation_file))
    method = "dpo" if method in ("dpo", "reward") else "sft"
    report = ValidationReport(str(path), method, max_length=max_length, tokenized=tokenizer is not None)
    eot_ids = end_of_turn_ids(tokenizer, model_config) if tokenizer is not None else set()
    exact_seen: dict[int, int] = {}
    near_seen: dict[int, int] = {}
    answers: Counter = Counter()
    answer_text: dict[int, str] = {}
    meter = _Progress(path, progress)
    for line, row, problem, done in _iter_rows(path):
        report.n_examples += 1
        meter.update(done, report.n_examples)
        if problem:
            report.add(line, *problem)
            continue
        try:
            _check_one(report, line, row, method, tokenizer, eot_ids, max_length, answers, answer_text)
            key, near = exact_key(row), near_key(row)
        except RecursionError:
            report.add(line, "invalid_json", "not usable JSON (nested too deeply)")
            continue
        if key in exact_seen:
            report.add(line, "duplicate", f"the same example as line {exact_seen[key]}")
        elif near in near_seen:
            report.add(line, "near_duplicate", f"the same words as line {near_seen[near]}")
        exact_seen.setdefault(key, line)
        near_seen.setdefault(near, line)
    meter.update(meter.total, report.n_examples, final=True)
    if report.n_examples < min_examples:
        report.add(0, "too_few_examples", f"{report.n_examples} examples; at least {min_examples} are needed")
    _check_balance(report, answers, answer_text)
    if validation_file is not None:
        _check_validation_file(report, Path(validation_file), method, tokenizer, eot_ids, max_length, exact_seen)
    return report


def _check_one(report, line, row, method, tokenizer, eot_ids, max_length, answers, answer_text, file=None):
    problems = check_row(row, method)
    for code, message in problems:
        report.add(line, code, message, file)
    if any(CODES[code][0] == "error" for code, _ in problems):
        return
    try:
        if method == "dpo":
            pair = row_to_preference_pair(row, report.path, line)
            sequences = [(pair.prompt + [{"role": "assistant", "content": answer, "weight": 1}], pair.tools)
                         for answer in (pair.chosen, pair.rejected)]
        else:
            conversation = row_to_conversation(row, report.path, line)
            sequences = [(conversation.messages, conversation.tools)]
    except UserError as exc:  # formats.py and this module disagree: report, never crash
        report.add(line, exc.code or "unknown_format", exc.bare_message, file)
        return
    if file is None and method == "sft":
        answer = _trained_answer(sequences[0][0])
        digest = near_key(answer)
        answers[digest] += 1
        if digest not in answer_text and len(answer_text) < 1000:
            answer_text[digest] = answer
    if tokenizer is None:
        return
    lengths = []
    for messages, tools in sequences:
        example, token_problems, kept = check_tokens(tokenizer, eot_ids, messages, tools, max_length)
        for code, message in token_problems:
            report.add(line, code, message, file)
        if example is None or file is not None:
            continue
        lengths.append(len(example.input_ids))
        report.n_tokens += min(len(example.input_ids), max_length)
        report.n_trained_tokens += kept
        if kept:
            _keep_longest(report, line, example, max_length)
    if lengths:
        report.lengths.append(max(lengths))


def _keep_longest(report, line, example: TokenizedExample, max_length: int, keep: int = 16) -> None:
    item = (min(len(example.input_ids), max_length), line, id(example),
            TokenizedExample(example.input_ids[:max_length], example.labels[:max_length]))
    if len(report.longest) < keep:
        heapq.heappush(report.longest, item)
    elif item[0] > report.longest[0][0]:
        heapq.heapreplace(report.longest, item)


def _check_balance(report: ValidationReport, answers: Counter, answer_text: dict) -> None:
    total = sum(answers.values())
    if total < 20 or len(answers) > max(2, total // 5):
        return  # too few examples to judge, or answers are free text rather than labels
    (top, count), = answers.most_common(1)
    if len(answers) == 1 or count / total > 0.5:
        label = answer_text.get(top, "?")
        report.add(0, "imbalanced_labels", f"{len(answers)} distinct answers over {total} examples; "
                   f"{_short(label)} is {count / total:.0%} of them")


def _check_validation_file(report, path: Path, method, tokenizer, eot_ids, max_length, train_keys) -> None:
    for line, row, problem, _done in _iter_rows(path):
        if problem:
            report.add(line, *problem, file="validation")
            continue
        try:
            _check_one(report, line, row, method, tokenizer, eot_ids, max_length, None, None, file="validation")
            key = exact_key(row)
        except RecursionError:
            report.add(line, "invalid_json", "not usable JSON (nested too deeply)", file="validation")
            continue
        if key in train_keys:
            report.add(line, "train_validation_overlap", f"also in the training file at line {train_keys[key]}",
                       file="validation")


# ---- used by `tuneforge train` ------------------------------------------------------------------------


def check_training_files(config) -> None:
    """Refuse an invalid training (or validation) file with validate's messages, before the model loads."""
    from tuneforge.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model).path)
    for label, path in (("training", config.data), ("validation", config.validation_data)):
        if not path:
            continue
        # A small validation file is fine; training needs MIN_EXAMPLES.
        min_examples = 1 if label == "validation" else MIN_EXAMPLES
        report = validate_file(path, config.method, tokenizer, config.max_length, min_examples=min_examples)
        if not report.ok:
            raise UserError(summarise_errors(report, path), path=str(path), code="invalid_file")
        n_warnings = sum(n for code, n in report.counts.items() if CODES[code][0] == "warning")
        if n_warnings:
            print(f"tuneforge: {path}: {n_warnings} warning(s) ({', '.join(sorted(report.counts))}); "
                  f"see `tuneforge validate {path}`", file=sys.stderr)


def summarise_errors(report: ValidationReport, path, limit: int = 5) -> str:
    errors = report.errors
    listed = "; ".join(f"line {e.line}: {e.message} [{e.code}]" for e in errors[:limit])
    total = sum(n for code, n in report.counts.items() if CODES[code][0] == "error")
    more = f" (and {total - limit} more)" if total > limit else ""
    return f"{total} problem(s) found by `tuneforge validate {path}`: {listed}{more}"


# ---- a measured estimate -------------------------------------------------------------------------------


def estimate_training(report: ValidationReport, model_spec: str, epochs: float | None = None, batch_size: int = 8,
                      calibration_tokens: int = 512) -> dict:
    """Time and peak memory for the run, from real forward+backward+optimizer steps on the actual model.

    Two short steps: (A) the longest example alone, which also warms up and allocates the optimizer state,
    then (B) a micro-batch of the longest examples (at most `calibration_tokens` tokens). Seconds per
    token come from the warm step B and are scaled to every token of every epoch. Memory: the growth of
    peak memory from A to B, per token, scaled to the largest micro-batch training will build (batch_size x
    longest example, capped at micro_batch_tokens). Both are linear extrapolations of a short measurement:
    attention grows faster than linearly with length, and on a busy machine the time varies with load.
    """
    import resource

    import torch

    from tuneforge.config import build_config
    from tuneforge.data.batching import collate
    from tuneforge.recipes.common import build_model, make_optimizer
    from tuneforge.recipes.sft import micro_batch_loss_sum

    if not report.longest:
        return {}
    config = build_config({"data": report.path, "model": model_spec, "max_length": report.max_length,
                           "batch_size": batch_size})
    epochs = epochs if epochs is not None else auto_epochs(report.n_examples)
    started = time.perf_counter()
    model, _tokenizer, device, dtype = build_model(config)
    load_seconds = time.perf_counter() - started
    optimizer = make_optimizer(model, config)
    batch_examples, tokens = [], 0
    for length, _line, _id, example in sorted(report.longest, key=lambda item: -item[0]):
        if batch_examples and (len(batch_examples) >= batch_size or tokens + length > calibration_tokens):
            break
        batch_examples.append(example)
        tokens += length

    def peak_mb() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    step_seconds, cpu_seconds, peaks = [], [], []
    for examples in (batch_examples[:1], batch_examples):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        batch = collate(examples, 0, device)
        loss_sum, n_targets = micro_batch_loss_sum(model, batch)
        (loss_sum / max(n_targets, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - begin)
        cpu_seconds.append(time.process_time() - begin_cpu)
        peaks.append(peak_mb())
    first_tokens = len(batch_examples[0].input_ids)
    per_token_mb = (peaks[1] - peaks[0]) / (tokens - first_tokens) if tokens > first_tokens else 0.0
    longest = max(report.lengths) if report.lengths else tokens
    train_micro_tokens = min(batch_size * min(longest, report.max_length), config.resolved_micro_batch_tokens(device))
    seconds_per_token = step_seconds[-1] / tokens
    # On a shared CPU the wall time follows other people's load; CPU time / threads is what the same step
    # takes on an otherwise idle machine (the two agree when nothing else runs).
    idle_seconds_per_token = min(step_seconds[-1], cpu_seconds[-1] / max(1, torch.get_num_threads())) / tokens
    # DPO: policy forward+backward on both answers (counted in n_tokens) plus a no-grad reference forward.
    method_factor = 4 / 3 if report.method == "dpo" else 1.0
    train_tokens = report.n_tokens * epochs
    return {
        "model": model_spec,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "epochs": epochs,
        "batch_size": batch_size,
        "calibration_examples": len(batch_examples),
        "calibration_tokens": tokens,
        "calibration_step_seconds": [round(s, 3) for s in step_seconds],
        "model_load_seconds": round(load_seconds, 2),
        "seconds_per_token": round(seconds_per_token, 6),
        "train_tokens": train_tokens,
        "train_seconds": round(train_tokens * seconds_per_token * method_factor, 3),
        "calibration_cpu_seconds": [round(s, 3) for s in cpu_seconds],
        "train_seconds_if_idle": round(train_tokens * idle_seconds_per_token * method_factor, 3)
        if device == "cpu" else None,
        "calibration_peak_memory_mb": round(peaks[1], 1),
        "peak_memory_mb": round(peaks[1] + max(0.0, per_token_mb) * max(0, train_micro_tokens - tokens), 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "resident memory (RSS)",
        "threads": torch.get_num_threads(),
        "peak_memory_micro_batch_tokens": train_micro_tokens,
    }
