"""python bench/constrained_decoding.py: grammar libraries for response_format, on the embedded model's vocabulary.

For each library and schema: the time to compile the JSON schema into a matcher (tokenizer set-up
measured once, apart), and the time per token to compute the allowed-token mask while walking a valid
answer's tokens (mask, then advance by the answer's next token: what the engine does each decode step).
The library tuneforge uses (tuneforge/constrained.py) was chosen from these numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

SCHEMAS = {
    "flat": (
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
            "required": ["name", "age", "ok"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "ok": True},
    ),
    "nested+enum+array": (
        {
            "type": "object",
            "properties": {
                "ticket": {
                    "type": "object",
                    "properties": {
                        "priority": {"enum": ["low", "medium", "high"]},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "score": {"type": "number"},
                    },
                    "required": ["priority", "tags", "score"],
                    "additionalProperties": False,
                },
                "summary": {"type": "string"},
            },
            "required": ["ticket", "summary"],
            "additionalProperties": False,
        },
        {"ticket": {"priority": "high", "tags": ["billing", "refund"], "score": 0.75}, "summary": "Refund request"},
    ),
    "json_object": (None, {"answer": "any JSON object", "items": [1, 2, 3]}),
}


def walk(tokenizer, instance) -> list[int]:
    return tokenizer.encode(json.dumps(instance), add_special_tokens=False)


def bench_llguidance(tokenizer, vocab_size):
    import llguidance
    import llguidance.hf
    import llguidance.torch

    started = time.perf_counter()
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    setup = time.perf_counter() - started
    rows = {}
    for name, (schema, instance) in SCHEMAS.items():
        started = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema if schema is not None else {"type": "object"}),
            defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
        )
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        compile_s = time.perf_counter() - started
        bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        times = []
        for token in walk(tokenizer, instance):
            started = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
            times.append(time.perf_counter() - started)
            assert matcher.consume_token(token), (name, matcher.get_error())
        rows[name] = (compile_s, times)
    return setup, rows


def bench_xgrammar(tokenizer, vocab_size):
    import xgrammar

    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
    setup = time.perf_counter() - started
    rows = {}
    for name, (schema, instance) in SCHEMAS.items():
        started = time.perf_counter()
        if schema is None:
            compiled = compiler.compile_builtin_json_grammar()
        else:
            compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        matcher = xgrammar.GrammarMatcher(compiled)
        compile_s = time.perf_counter() - started
        bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        times = []
        for token in walk(tokenizer, instance):
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask, 0)
            times.append(time.perf_counter() - started)
            assert matcher.accept_token(token), name
        rows[name] = (compile_s, times)
    return setup, rows


def bench_outlines_core(tokenizer, vocab_size):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    started = time.perf_counter()
    # Offline: the vocabulary from the tokenizer itself (outlines-core decodes byte-level BPE pieces).
    eos = tokenizer.eos_token_id
    pieces: dict[str, list[int]] = {}
    for piece, token_id in tokenizer.get_vocab().items():
        if token_id != eos and token_id not in tokenizer.all_special_ids:
            pieces.setdefault(piece, []).append(token_id)
    vocabulary = Vocabulary(eos, pieces)
    setup = time.perf_counter() - started
    rows = {}
    for name, (schema, instance) in SCHEMAS.items():
        if schema is None:
            continue  # no built-in "any JSON object" grammar: a regex cannot nest without a depth limit
        started = time.perf_counter()
        guide = Guide(Index(build_regex_from_schema(json.dumps(schema), whitespace_pattern="[ ]?"), vocabulary))
        compile_s = time.perf_counter() - started
        times = []
        for token in walk(tokenizer, instance):
            started = time.perf_counter()
            guide.get_tokens()
            times.append(time.perf_counter() - started)
            guide.advance(token)
        rows[name] = (compile_s, times)
    return setup, rows


def main() -> int:
    from tuneforge.models import load_tokenizer, resolve_model

    resolved = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(resolved.path)
    vocab_size = len(tokenizer)
    print(f"vocabulary: {vocab_size} tokens (smollm2-135m-instruct)")
    print("| library | tokenizer set-up | schema | compile | mask per token (median / p99) |")
    print("|---|---|---|---|---|")
    for library, bench in (
        ("llguidance", bench_llguidance),
        ("xgrammar", bench_xgrammar),
        ("outlines-core", bench_outlines_core),
    ):
        try:
            setup, rows = bench(tokenizer, vocab_size)
        except Exception as exc:  # a library missing or failing is a row saying so
            print(f"| {library} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | |")
            continue
        for name, (compile_s, times) in rows.items():
            times = sorted(times)
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            print(
                f"| {library} | {setup * 1000:.0f} ms | {name} | {compile_s * 1000:.1f} ms | "
                f"{statistics.median(times) * 1e6:.0f} µs / {p99 * 1e6:.0f} µs ({len(times)} tokens) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
