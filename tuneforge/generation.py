"""Batched generation with a KV cache: many prompts decoded together, left-padded.

    from tuneforge.models import load_model
    from tuneforge.generation import generate_chat
    model, tokenizer = load_model(adapter="runs/demo")
    generate_chat(model, tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=32)

Prompts are sorted by length and decoded in batches, so padding stays small; a prefix every prompt of a
batch shares is computed once; a finished row (end-of-turn token or stop string) leaves the batch, and
decoding ends when no row is left. Greedy by default (temperature 0), which is what evaluation wants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from tuneforge.data.tokenize import end_of_turn_ids, tokenize_prompt


def _first_stop(text: str, stop: list[str] | None) -> int | None:
    if not stop:
        return None
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None


def _streamable_end(text: str, stop: list[str] | None) -> int:
    """How much of `text` may be streamed now: up to a stop string, and never the tail that could still turn
    into one (the next token may complete it, and a streamed character cannot be taken back)."""
    cut = _first_stop(text, stop)
    if cut is not None:
        return cut
    held = 0
    for s in stop or []:
        for length in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:length]):
                held = length
                break
    return len(text) - held


# Below this many shared tokens the extra batch-1 pass over the prefix costs about what it saves. A chat
# template's system turn alone is ~10-15 tokens, and saving them on every row of a batch of 32 pays.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def _prefix_sharing_is_safe(model) -> bool:
    # A sliding-window cache counts slots, not positions: a padding gap between the shared prefix and a
    # prompt's own tokens would shift its window. Such models decode without sharing.
    config = model.config
    return not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", None) is False


@torch.inference_mode()
def generate_ids(
    model,
    prompts: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    should_stop: Callable[[int, list[int]], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[list[list[int]], list[str]]:
    """Decode one batch. Returns new token ids per prompt and a finish reason per prompt.

    Two savings over decoding the padded batch as it is: a prefix all prompts share (the system message,
    few-shot examples) is run once and its KV cache copied to every row, each row's own tokens following
    after a padding gap; and a row that has finished leaves the batch, so later steps compute only the
    rows still answering. `generator` may be a list, one per prompt: each row then draws from its own, so what
    it samples does not depend on the other rows of the batch (GRPO under several processes).
    """
    device = next(model.parameters()).device
    batch_size = len(prompts)
    prefix_length = shared_prefix_length(prompts) if batch_size > 1 and _prefix_sharing_is_safe(model) else 0
    if prefix_length < MIN_SHARED_PREFIX:
        prefix_length = 0
    # transformers 5.x renamed `past_key_values` to `cache`; accept both.
    # A PEFT wrapper's forward takes **kwargs, so ask the transformers model inside it.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
    past = None
    if prefix_length:
        prefix = torch.tensor([prompts[0][:prefix_length]], device=device)
        result = model(
            input_ids=prefix,
            attention_mask=torch.ones_like(prefix),
            position_ids=torch.arange(prefix_length, device=device)[None],
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: None},
        )
        past = getattr(result, cache_arg)
        past.batch_repeat_interleave(batch_size)
    own = [p[prefix_length:] for p in prompts]
    width = max(len(p) for p in own)
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long, device=device)
    own_mask = torch.zeros((batch_size, width), dtype=torch.long, device=device)
    for row, tokens in enumerate(own):
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, device=device)
        own_mask[row, width - len(tokens) :] = 1
    position_ids = prefix_length + (own_mask.cumsum(-1) - 1).clamp(min=0)
    attention_mask = torch.cat([torch.ones((batch_size, prefix_length), dtype=torch.long, device=device), own_mask], 1)
    outputs = [[] for _ in range(batch_size)]
    reasons = ["length"] * batch_size
    active = list(range(batch_size))  # the original row of each row still in the batch
    current_ids, current_positions = input_ids, position_ids
    for _ in range(max_new_tokens):
        result = model(
            input_ids=current_ids,
            attention_mask=attention_mask,
            position_ids=current_positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: past},
        )
        past = getattr(result, cache_arg)
        logits = result.logits[:, -1, :].float()
        if temperature and temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
                sorted_probs = sorted_probs * keep
                probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
            if isinstance(generator, list):
                next_tokens = torch.cat([torch.multinomial(probs[position], 1, generator=generator[row])
                                         for position, row in enumerate(active)])
            else:
                next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tokens = logits.argmax(dim=-1)
        still_going = []
        for position, row in enumerate(active):
            token = int(next_tokens[position])
            if token in eos_ids:
                reasons[row] = "stop"
                continue
            outputs[row].append(token)
            if on_step is not None:
                on_step(row, token)
            if should_stop is not None and should_stop(row, outputs[row]):
                reasons[row] = "stop"
                continue
            still_going.append(position)
        if not still_going:
            break
        if len(still_going) < len(active):
            keep = torch.tensor(still_going, device=device)
            past.batch_select_indices(keep)
            attention_mask, current_positions, next_tokens = attention_mask[keep], current_positions[keep], next_tokens[keep]
            active = [active[position] for position in still_going]
        current_ids = next_tokens[:, None]
        current_positions = current_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
    return outputs, reasons


def generate_chat(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_token: Callable[[int, str], None] | None = None,
    batch_size: int = 32,
    tools_list: list | None = None,
) -> list[dict]:
    """Answer each conversation's next assistant turn. Returns [{text, prompt_tokens, completion_tokens, finish_reason}]."""
    prompts = [tokenize_prompt(tokenizer, messages, (tools_list or [None] * len(conversations))[i]) for i, messages in enumerate(conversations)]
    eos_ids = end_of_turn_ids(tokenizer, model.config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids))
    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[dict | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        step_outputs: list[list[int]] = [[] for _ in chunk]
        emitted = [0] * len(chunk)

        def should_stop(row: int, ids: list[int]) -> bool:
            return _first_stop(tokenizer.decode(ids, skip_special_tokens=True), stop) is not None

        def on_step(row: int, token: int, chunk=chunk, step_outputs=step_outputs, emitted=emitted) -> None:
            # Stream whole characters only: a multi-byte character may span several tokens.
            step_outputs[row].append(token)
            text = tokenizer.decode(step_outputs[row], skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return
            end = _streamable_end(text, stop)
            if end > emitted[row]:
                on_token(chunk[row], text[emitted[row] : end])
                emitted[row] = end

        outputs, reasons = generate_ids(
            model,
            [prompts[i] for i in chunk],
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            should_stop=should_stop if stop else None,
            on_step=on_step if on_token else None,
        )
        for row, index in enumerate(chunk):
            text = tokenizer.decode(outputs[row], skip_special_tokens=True)
            cut = _first_stop(text, stop)
            if cut is not None:
                text = text[:cut]
            if on_token and len(text) > emitted[row]:  # what was held back for a stop string that never came
                on_token(index, text[emitted[row] :])
            results[index] = {
                "text": text,
                "prompt_tokens": len(prompts[index]),
                "completion_tokens": len(outputs[row]),
                "finish_reason": reasons[row],
            }
    return results  # type: ignore[return-value]
