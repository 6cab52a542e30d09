"""Constrained decoding for the inference process: response_format and forced tool calls as token masks.

    constraint = make_constraint(tokenizer, {"type": "json_schema", "json_schema": {"name": "t", "schema": {...}}})
    constraint.fill_allowed(mask); constraint.advance(token_id); constraint.is_finished()

The engine (tuneforge/serving.py, its `Constraint` protocol) asks each constrained row for the tokens
allowed next and tells it which one was sampled. The grammar work is llguidance's (chosen over xgrammar,
outlines-core and lm-format-enforcer by measurement: bench/constrained_decoding.py, docs/benchmarks.md):
a JSON schema or a Lark grammar is compiled once per distinct request shape (cached), and each row gets
its own matcher. The response formats:

    {"type": "json_object"}                               any JSON object
    {"type": "json_schema", "json_schema": {"schema"}}    that schema (the subset in json_schema_subset.py)
    {"type": "tool_calls", "tools": [...], "parallel_tool_calls": bool}
        tuneforge's own, sent by the API for tool_choice "required" or a named function: one call (or
        several) in the shape the model's chat template writes them (tool_calls.template_tool_format),
        each {"name": one of the tools, "arguments": that tool's parameters schema}

Generated JSON is written with ", " and ": " separators and no other free whitespace: a small model given
free whitespace can loop on newlines forever, and the text still parses the same.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from functools import lru_cache

import llguidance
import llguidance.hf
import numpy as np
import torch

from tuneforge.errors import UserError
from tuneforge.json_schema_subset import unsupported_keywords
from tuneforge.tool_calls import CLOSE_TAG, MISTRAL_TAG, OPEN_TAG, template_tool_format

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
GRAMMAR_CACHE_SIZE = 256


class ConstraintError(UserError):
    """A response_format the constraint cannot be built for: the engine answers the request with a 400."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message, code="unsupported_response_format")


_tokenizers: dict[int, tuple[object, llguidance.LLTokenizer]] = {}
_tokenizers_lock = threading.Lock()


def _ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face tokenizer (~0.4 s to build), once per tokenizer object."""
    with _tokenizers_lock:
        held = _tokenizers.get(id(tokenizer))
        if held is None or held[0] is not tokenizer:
            end_ids = sorted(_end_of_turn_ids(tokenizer))
            held = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=end_ids))
            _tokenizers[id(tokenizer)] = held
        return held[1]


def _end_of_turn_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return ids or {0}


class _Grammars:
    """Compiled grammars by their source text (a schema shape repeats across requests)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, kind: str, source: str) -> str:
        key = (kind, source)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        if kind == "json":
            grammar = llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_LAYOUT)
        else:
            grammar = llguidance.grammar_from("lark", source)
        # (is_error, messages): an error, or warnings such as keys the library would leave unenforced.
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error or messages:
            raise ConstraintError("; ".join(messages) or "the grammar is invalid")
        with self.lock:
            self.entries[key] = grammar
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return grammar


_grammars = _Grammars(GRAMMAR_CACHE_SIZE)


class GrammarConstraint:
    """One generated choice's grammar state; implements tuneforge.serving.Constraint."""

    def __init__(self, ll_tokenizer: llguidance.LLTokenizer, grammar: str, vocab_size: int):
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        if self.matcher.is_error():
            raise ConstraintError(self.matcher.get_error())
        self.vocab_size = vocab_size

    def fill_allowed(self, mask: torch.Tensor) -> None:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        width = min(mask.shape[-1], self.vocab_size, bits.shape[0])
        mask[:width] = torch.from_numpy(bits[:width].astype(np.bool_))

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(int(token_id)):
            raise ConstraintError(f"token {token_id} was not allowed: {self.matcher.get_error()}")

    def is_finished(self) -> bool:
        return self.matcher.is_stopped()


def _schema_of(response_format: dict) -> str:
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"type": "object"})
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ConstraintError("response_format.json_schema.schema must be a JSON schema object")
    problems = unsupported_keywords(schema)
    if problems:
        raise ConstraintError("unsupported JSON schema features: " + ", ".join(problems))
    return json.dumps(schema, sort_keys=True)


def tool_call_schema(tool: dict, arguments_key: str = "arguments") -> dict:
    function = tool.get("function", tool)
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def tool_call_grammar(tools: list[dict], parallel: bool, shape: str) -> str:
    """A Lark grammar for one (or, when parallel, one or more) calls of `tools` in the template's shape."""
    arguments_key = "parameters" if shape == "llama3" else "arguments"
    for tool in tools:
        problems = unsupported_keywords(tool.get("function", tool).get("parameters") or {})
        if problems:
            name = tool.get("function", tool).get("name")
            raise ConstraintError(f"tool {name!r}: unsupported JSON schema features: " + ", ".join(problems))
    # x-guidance: llguidance's options inside a schema (a %json in Lark does not take the defaults).
    calls_schema = {"anyOf": [tool_call_schema(tool, arguments_key) for tool in tools], "x-guidance": JSON_LAYOUT}
    schema = json.dumps(calls_schema)
    if shape == "llama3":
        one, separator, around = "call", '"; "', ("", "")
    elif shape == "mistral":
        one, separator, around = "call", '", "', (f'"{MISTRAL_TAG}[" ', ' "]"')
    else:
        one, separator, around = "tagged", '"\\n"', ("", "")
    calls = f"{one} ({separator} {one})*" if parallel else one
    tagged = f'tagged: "{OPEN_TAG}\\n" call "\\n{CLOSE_TAG}"\n' if one == "tagged" else ""
    return f"start: {around[0]}{calls}{around[1]}\n{tagged}call: %json {schema}\n"


@lru_cache(maxsize=64)
def _template_shape(template: str | None) -> str:
    return template_tool_format(template)


def make_constraint(tokenizer, response_format: dict | None) -> GrammarConstraint | None:
    """The constraint for one generated choice, or None for plain text. Raises ConstraintError (a 400)."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format["type"]
    if kind in ("json_object", "json_schema"):
        grammar = _grammars.get("json", _schema_of(response_format))
    elif kind == "tool_calls":
        tools = response_format.get("tools") or []
        if not tools:
            raise ConstraintError("tool_choice needs at least one tool")
        shape = _template_shape(getattr(tokenizer, "chat_template", None))
        source = tool_call_grammar(tools, bool(response_format.get("parallel_tool_calls", True)), shape)
        grammar = _grammars.get("lark", source)
    else:
        raise ConstraintError(f"unsupported response_format type {kind!r}")
    return GrammarConstraint(_ll_tokenizer(tokenizer), grammar, len(tokenizer))
