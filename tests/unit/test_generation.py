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
