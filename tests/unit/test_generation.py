"""Batched generation with a KV cache gives the same greedy tokens as one prompt at a time and as HF generate."""

from __future__ import annotations

import torch

from tuneforge.evaluate.generation import generate_chat, generate_ids


def test_batched_equals_one_at_a_time_and_hf_generate(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[1, 5, 6], [1, 8, 9, 10, 11, 12], [1, 7]]
    batched, _ = generate_ids(model, prompts, eos_ids={-1}, pad_id=3, max_new_tokens=6)
    for prompt, tokens in zip(prompts, batched, strict=True):
        alone, _ = generate_ids(model, [prompt], eos_ids={-1}, pad_id=3, max_new_tokens=6)
        assert alone[0] == tokens
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                   pad_token_id=3)
        assert reference[0, len(prompt):].tolist() == tokens


def test_stops_at_end_of_turn_and_reports_reasons(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    first, _ = generate_ids(model, [[1, 5, 6]], eos_ids={-1}, pad_id=3, max_new_tokens=3)
    tokens, reasons = generate_ids(model, [[1, 5, 6]], eos_ids={first[0][0]}, pad_id=3, max_new_tokens=3)
    assert tokens == [[]] and reasons == ["stop"]
    _, reasons = generate_ids(model, [[1, 5, 6]], eos_ids={-1}, pad_id=3, max_new_tokens=3)
    assert reasons == ["length"]
    results = generate_chat(model, tiny_tokenizer, [[{"role": "user", "content": "hi"}]] * 2, max_new_tokens=4)
    assert len(results) == 2 and results[0] == results[1]
    assert set(results[0]) == {"text", "prompt_tokens", "completion_tokens", "finish_reason"}


def test_streaming_pieces_add_up_to_the_text(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pieces: dict[int, str] = {}
    results = generate_chat(model, tiny_tokenizer, [[{"role": "user", "content": "what is a"}]], max_new_tokens=5,
                            on_token=lambda i, piece: pieces.__setitem__(i, pieces.get(i, "") + piece))
    assert pieces.get(0, "") == results[0]["text"]


def test_streaming_never_sends_a_stop_string_or_what_follows(tiny_model_dir, tiny_tokenizer):
    """The stop string is taken from the model's own greedy answer, so the stream must end just before it,
    even when the stop string spans tokens (its first part is held back until the next token decides)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.evaluate.generation import _streamable_end

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    conversation = [[{"role": "user", "content": "what is a"}]]
    full = generate_chat(model, tiny_tokenizer, conversation, max_new_tokens=8)[0]["text"]
    assert len(full) >= 6, full
    middle = len(full) // 2
    for stop in ([full[middle : middle + 3]], [full[middle - 1 : middle + 1], "zzz-never"]):
        pieces: list[str] = []
        result = generate_chat(model, tiny_tokenizer, conversation, max_new_tokens=8, stop=stop,
                               on_token=lambda _i, piece, pieces=pieces: pieces.append(piece))[0]
        assert result["text"] == full[: full.find(stop[0])]
        assert "".join(pieces) == result["text"]

    assert _streamable_end("abc", ["cd"]) == 2  # "c" may begin "cd": held back
    assert _streamable_end("abcd e", ["cd"]) == 2
    assert _streamable_end("abc", ["xy", "bcz"]) == 1
    assert _streamable_end("abc", None) == 3
