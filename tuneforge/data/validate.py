"""Check a training file before any compute is spent:  tuneforge validate train.jsonl [--model M] [--json]

The file is read through `readers.open_rows` (any container; JSONL, CSV and Parquet are streamed, so a
200 MB file stays in bounded memory), and every problem is collected, not just the first: each has its
position (a JSONL line, or a row elsewhere), a stable code (the table is `findings.CODES`, and
docs/data.md) and a message; what is wrong with the file as a whole comes first. Errors make the file unusable for training; warnings
are worth reading. Each row goes through `row_checks` (structure, then the model's chat template and
mask when there is a tokenizer) and then through `formats.row_to_conversation` /
`row_to_preference_pair`, so validate and train can never disagree about a row. This module adds what
only the whole file shows: duplicates, too few examples, one answer dominating, train/validation
overlap, and the token counts of the report.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

from tuneforge.data.curation import exact_key, near_key
from tuneforge.data.findings import CODES, MIN_EXAMPLES, Finding
from tuneforge.data.formats import detect_format, row_to_conversation, row_to_preference_pair
from tuneforge.data.readers import describe, open_rows
from tuneforge.data.row_checks import check_row, check_tokens, short_repr
from tuneforge.data.tokenize import (
    TokenizedExample,
    end_of_turn_ids,
    tool_template_message,
    tool_template_problem,
    uses_tools,
)
from tuneforge.errors import UserError

# Importable from here as they always were (tests, the service, the train verb).
__all__ = ["CODES", "MIN_EXAMPLES", "TARGET_EPOCHS", "Finding", "ValidationReport", "auto_epochs",
           "summarise_errors", "validate_file"]

# OpenAI's published rule for n_epochs="auto" (cookbook "Data preparation and analysis for chat model
# fine-tuning"): 3 epochs, scaled so that examples x epochs lands in [100, 25000], clamped to [1, 25].
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 3, 100, 25_000, 1, 25
MAX_LISTED_PER_CODE = 50  # findings listed per code; all are counted in `finding_counts`


def auto_epochs(n_examples: int) -> int | None:
    if n_examples <= 0:
        return None
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


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
    container: str = "jsonl"
    formats: Counter = field(default_factory=Counter)  # rows per format name (formats.FORMATS)

    def add(self, line, code: str, message: str, file: str | None = None) -> None:
        self.counts[code] += 1
        if self.counts[code] <= MAX_LISTED_PER_CODE:
            self.findings.append(Finding(line, code, message, file))

    def _listed(self, severity: str) -> list[Finding]:
        # What is wrong with a whole file comes first (said once), then the rows in file order.
        found = [f for f in self.findings if f.severity == severity]
        return sorted(found, key=lambda f: f.line != 0)

    @property
    def errors(self) -> list[Finding]:
        return self._listed("error")

    @property
    def warnings(self) -> list[Finding]:
        return self._listed("warning")

    @property
    def format(self) -> str | None:
        """The one format of the file's rows, "mixed", or None when no row has a known format."""
        return None if not self.formats else next(iter(self.formats)) if len(self.formats) == 1 else "mixed"

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
            "container": self.container,
            "positions": "line" if self.container == "jsonl" else "row",
            "format": self.format,
            "formats": dict(self.formats.most_common()),
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
    def __init__(self, name: str, total: int, enabled: bool):
        self.total, self.enabled, self.name = total, enabled, name
        self.last = time.monotonic()

    def update(self, done: int, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (final or now - self.last >= 2.0):
            self.last = now
            share = (f"{done / 2**20:.1f}/{self.total / 2**20:.1f} MB ({100 * done / self.total:.0f}%), "
                     if self.total and done else "")
            print(f"validate {self.name}: {share}{rows} examples", file=sys.stderr, flush=True)


def _trained_answer(messages: list[dict]) -> str:
    # A tool-call turn's answer is its calls too: 40 calls with empty content are 40 answers, not one.
    answers = [(m.get("content") or "") + _calls_text(m.get("tool_calls"))
               for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1]
    return answers[-1] if answers else ""


def _calls_text(calls) -> str:
    if not isinstance(calls, list):
        return ""
    functions = [c.get("function") for c in calls if isinstance(c, dict)]
    return "".join(f" {f.get('name')}({f.get('arguments')})" for f in functions if isinstance(f, dict))


def validate_file(path, method: str = "sft", tokenizer=None, max_length: int = 2048, validation_file=None,
                  progress: bool = False, model_config=None, min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Read `path` (and `validation_file`) through every check; raises only for a missing file or folder."""
    source = open_rows(path)
    valid_source = open_rows(validation_file) if validation_file is not None else None
    method = {"dpo": "dpo", "reward": "dpo", "grpo": "grpo"}.get(method, "sft")
    report = ValidationReport(str(path), method, max_length=max_length, tokenized=tokenizer is not None,
                              container=source.container)
    eot_ids = end_of_turn_ids(tokenizer, model_config) if tokenizer is not None else set()
    exact_seen: dict[int, object] = {}
    near_seen: dict[int, object] = {}
    answers: Counter = Counter()
    answer_text: dict[int, str] = {}
    meter = _Progress(source.path.name, source.size, progress)
    for code, message in source.notes:
        report.add(0, code, message)
    for line, row, problem, done in source.rows:
        report.n_examples += line != 0  # a problem at position 0 is the file's (an unreadable Parquet), no example
        meter.update(done, report.n_examples)
        if problem:
            report.add(line, *problem)
            continue
        kind = detect_format(row)
        if kind is not None:
            report.formats[kind] += 1
        try:
            _check_one(report, line, row, method, tokenizer, eot_ids, max_length, answers, answer_text)
            key, near = exact_key(row), near_key(row)
        except RecursionError:
            report.add(line, "invalid_json", "not usable JSON (nested too deeply)")
            continue
        if key in exact_seen:
            report.add(line, "duplicate", f"the same example as {describe(exact_seen[key])}")
        elif near in near_seen:
            report.add(line, "near_duplicate", f"the same words as {describe(near_seen[near])}")
        exact_seen.setdefault(key, line)
        near_seen.setdefault(near, line)
    meter.update(meter.total, report.n_examples, final=True)
    if report.n_examples < min_examples:
        report.add(0, "too_few_examples", f"{report.n_examples} examples; at least {min_examples} are needed")
    _check_balance(report, answers, answer_text)
    if valid_source is not None:
        _check_validation_file(report, valid_source, method, tokenizer, eot_ids, max_length, exact_seen)
    return report


def _check_one(report, line, row, method, tokenizer, eot_ids, max_length, answers, answer_text, file=None):
    problems = check_row(row, method)
    for code, message in problems:
        report.add(line, code, message, file)
    if any(CODES[code][0] == "error" for code, _ in problems) or method == "grpo":
        return  # a grpo prompt is sampled from, not trained on: no answer mask or length to check
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
    if any(uses_tools(messages, tools) for messages, tools in sequences):
        problem = tool_template_problem(tokenizer)
        if problem is not None:  # said once, at the first row with tools: every such row fails the same way
            if not report.counts["template_ignores_tools"]:
                report.add(line, "template_ignores_tools", tool_template_message(tokenizer, problem), file)
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
                   f"{short_repr(label)} is {count / total:.0%} of them")


def _check_validation_file(report, source, method, tokenizer, eot_ids, max_length, train_keys) -> None:
    for code, message in source.notes:
        report.add(0, code, message, file="validation")
    for line, row, problem, _done in source.rows:
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
            report.add(line, "train_validation_overlap", f"also in the training file at {describe(train_keys[key])}",
                       file="validation")


def summarise_errors(report: ValidationReport, path, limit: int = 5) -> str:
    """The report's first errors as one line, for `tuneforge train` to refuse a file with."""
    errors = report.errors
    listed = "; ".join(f"{describe(e.line)}: {e.message} [{e.code}]" for e in errors[:limit])
    total = sum(n for code, n in report.counts.items() if CODES[code][0] == "error")
    more = f" (and {total - limit} more)" if total > limit else ""
    return f"{total} problem(s) found by `tuneforge validate {path}`: {listed}{more}"
