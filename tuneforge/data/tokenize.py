"""Conversations -> (input_ids, labels): the model's own chat template, loss only on trained assistant turns.

How the mask is found without `{% generation %}` markers: for every trained assistant turn i we render
the conversation up to turn i with the generation prompt (what the model sees before it answers) and up
to and including turn i. The characters between the two renders are the answer plus the template's
end-of-turn text; trailing whitespace after the end-of-turn token is not trained (the template adds it,
the model never has to produce it). The text is then tokenised segment by segment, so the prompt tokens
are exactly those the model gets at inference (`apply_chat_template(..., add_generation_prompt=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.errors import UserError

IGNORE_INDEX = -100
MAX_RENDERED_CHARS = 4 * 1024 * 1024  # one conversation's rendered text; a template that explodes is refused


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken
    truncated_tokens: int = 0

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _template_messages(messages: list[dict]) -> list[dict]:
    # Templates know nothing of `weight`; some fail on unknown keys.
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def render(tokenizer, messages: list[dict], tools=None, add_generation_prompt: bool = False) -> str:
    """The chat template's text. transformers renders it in Jinja's ImmutableSandboxedEnvironment (no
    attribute escapes, no mutation, ranges capped); a template that tries anyway, or that blows a row up
    past MAX_RENDERED_CHARS, is refused as a user error."""
    from jinja2.exceptions import SecurityError

    kwargs = {"tools": tools} if tools else {}
    try:
        text = tokenizer.apply_chat_template(
            _template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except SecurityError as exc:
        message = f"the chat template tried something the sandbox forbids: {exc}"
        raise UserError(message, code="template_unsafe") from None
    if len(text) > MAX_RENDERED_CHARS:
        raise UserError(
            f"the chat template rendered {len(text):,} characters for one conversation (limit {MAX_RENDERED_CHARS:,})",
            code="template_output_too_large",
        )
    return text


def trained_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the [start, end) character spans that carry loss."""
    full = render(tokenizer, messages, tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
        # The last turn's "through" render is the full render (the common single-turn case: 2 renders, not 3).
        through = full if index == len(messages) - 1 else render(tokenizer, messages[: index + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(
                "the model's chat template renders earlier turns differently once later turns follow, so the "
                "trained tokens cannot be located; train on single-turn examples or give a model whose template "
                "is prefix-stable",
                code="template_not_prefix_stable",
            )
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], tools=None, max_length: int | None = None) -> TokenizedExample:
    full, spans = trained_spans(tokenizer, messages, tools)
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in [*spans, (len(full), len(full))]:
        pieces += [(piece, trained) for piece, trained in ((full[cursor:start], False), (full[start:end], True)) if piece]
        cursor = end
    input_ids: list[int] = []
    labels: list[int] = []
    # One batched call for all segments: the per-call overhead of the tokenizer wrapper dominates short texts.
    encoded = tokenizer([piece for piece, _ in pieces], add_special_tokens=False)["input_ids"] if pieces else []
    for ids, (_, trained) in zip(encoded, pieces, strict=True):
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not input_ids or input_ids[0] != bos):
        input_ids.insert(0, bos)
        labels.insert(0, IGNORE_INDEX)
    truncated = 0
    if max_length is not None and len(input_ids) > max_length:
        truncated = len(input_ids) - max_length
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedExample(input_ids, labels, truncated)


def tokenize_prompt(tokenizer, messages: list[dict], tools=None) -> list[int]:
    """Token ids the model sees before it writes the next assistant turn (inference and eval)."""
    text = render(tokenizer, messages, tools, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def end_of_turn_ids(tokenizer, model_config=None) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's eos plus the generation config's eos ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    eos = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(eos)
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id is not None:
            ids.add(token_id)
    return ids
