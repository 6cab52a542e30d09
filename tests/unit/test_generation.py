"""Batched generation with a KV cache gives the same greedy tokens as one prompt at a time and as HF generate."""

from __future__ import annotations

import torch

from tuneforge.generation import generate_chat, generate_ids


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


def test_shared_prefix_is_computed_once_and_gives_the_tokens_of_one_prompt_at_a_time(tiny_model_dir):
    """Prompts sharing 20 tokens (over MIN_SHARED_PREFIX) take the prefix path: one pass over the prefix
    with batch 1, its cache copied to each row, each row's own tokens after a padding gap. Greedy tokens
    must equal those of each prompt alone, which never shares."""
    from transformers import AutoModelForCausalLM

    from tuneforge import generation

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    shared = [1] + [(7 * i) % 50 + 5 for i in range(19)]
    prompts = [shared + [8, 9], shared + [10, 11, 12, 13, 14], shared + [20]]
    assert generation.shared_prefix_length(prompts) == 20 >= generation.MIN_SHARED_PREFIX
    widths = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        widths.append(tuple(kwargs["input_ids"].shape))
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    batched, _ = generate_ids(model, prompts, eos_ids={-1}, pad_id=3, max_new_tokens=6)
    assert widths[:2] == [(1, 20), (3, 5)]  # the prefix once, then only each row's own tokens
    model.forward = original_forward
    for prompt, tokens in zip(prompts, batched, strict=True):
        alone, _ = generate_ids(model, [prompt], eos_ids={-1}, pad_id=3, max_new_tokens=6)
        assert alone[0] == tokens


def test_a_finished_row_leaves_the_batch_and_the_others_decode_unchanged(tiny_model_dir):
    """Row 0 stops at its first token (made an end-of-turn id); afterwards the batch holds only rows 1 and 2,
    whose tokens must be what they are when decoded alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[1, 5, 6], [1, 8, 9, 10, 11, 12], [1, 7]]
    alone = [generate_ids(model, [p], eos_ids={-1}, pad_id=3, max_new_tokens=6)[0][0] for p in prompts]
    stop_token = alone[0][0]
    rows_per_step = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        rows_per_step.append(kwargs["input_ids"].shape[0])
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    tokens, reasons = generate_ids(model, prompts, eos_ids={stop_token}, pad_id=3, max_new_tokens=6)
    assert tokens[0] == [] and reasons[0] == "stop"
    assert rows_per_step[0] == 3 and rows_per_step[1] < 3
    for row in (1, 2):
        expected = alone[row][: alone[row].index(stop_token)] if stop_token in alone[row] else alone[row]
        assert tokens[row] == expected


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

    from tuneforge.generation import _streamable_end

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
