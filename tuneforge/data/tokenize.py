"""Conversations -> (input_ids, labels): the model's own chat template, loss only on trained assistant turns.

    examples = tokenize_conversation_examples(tokenizer, messages, tools, max_length)   # what training uses

How the mask is found without `{% generation %}` markers: for every trained assistant turn i we render
the conversation up to turn i with the generation prompt (what the model sees before it answers) and up
to and including turn i. The characters between the two renders are the answer plus the template's
end-of-turn text; trailing whitespace after the end-of-turn token is not trained (the template adds it,
the model never has to produce it). The text is then tokenised segment by segment, so the prompt tokens
are exactly those the model gets at inference (`apply_chat_template(..., add_generation_prompt=True)`).

Templates that rewrite history. Some templates render an earlier turn differently once later turns follow:
Qwen3's drops the <think>...</think> reasoning of every assistant turn before the last user message (and
gives the final turn an empty think block when it has none). Turn i then reads one way when the model writes
it (its render through turn i) and another in the full conversation, and no single sequence holds both.
A turn is trained only inside a sequence whose text starts with that turn's own render through it, so its
trained tokens are exactly what the model would generate for it in context. The full conversation serves
the last trained turn and every earlier turn the template left as it was; each remaining turn, latest first,
gets the conversation rendered through it, which serves it and the untouched turns before it. A prefix-stable
template (ChatML, Llama 3, ...) therefore gives one sequence, as it always has; Qwen3 with reasoning in every
turn gives one per assistant turn (the prompt tokens repeat, the trained tokens do not).
`tokenize_conversation` is the one-sequence view for callers that need one (DPO answers, previews, replay)
and refuses a conversation that needs more. A template whose generation prompt is not where the answer
starts (the prompt itself changes once the answer follows) cannot be masked at all and is refused.

Tool calls. A conversation with `tools`, assistant `tool_calls` or `tool` results trains only under a template
that renders them; many templates (SmolLM2's) drop the tools and the calls without a word, and the model would
learn to answer empty turns to questions it never saw the tools for. `check_template_renders_tools` renders a
probe conversation once per template and refuses one that errors on it, leaves the tool out of the prompt or
the call's name or arguments out of the answer (`template_ignores_tools`, naming chat_template=chatml-tools).
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


# The probe: a tool and a call as the data layer hands them over (formats.normalise_messages: content "" beside
# tool_calls; OpenAI's arguments as a JSON string). The id has 9 alphanumerics, as Mistral's template demands.
_PROBE_TOOL_NAME, _PROBE_VALUE = "lookup_probe_record", "probe-value-4187"
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": _PROBE_TOOL_NAME, "description": "Look a record up by its key.",
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]
_PROBE_MESSAGES = [
    {"role": "user", "content": "Find the record for my key."},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "a1b2c3d4e", "type": "function", "function": {
        "name": _PROBE_TOOL_NAME, "arguments": '{"key": "' + _PROBE_VALUE + '"}'}}]},
]
_tool_problems: dict[str, str | None] = {}  # repr(chat template) -> why it cannot train tool calls (None: it can)


def uses_tools(messages: list[dict], tools=None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def _probe_tool_template(tokenizer) -> str | None:
    try:
        prompt = render(tokenizer, _PROBE_MESSAGES[:1], _PROBE_TOOLS, add_generation_prompt=True)
        full = render(tokenizer, _PROBE_MESSAGES, _PROBE_TOOLS)
    except Exception as exc:  # noqa: BLE001 - a template's raise_exception, jinja's UndefinedError, a TypeError...
        return f"fails on an assistant turn with tool_calls ({type(exc).__name__}: {str(exc)[:160]})"
    if _PROBE_TOOL_NAME not in prompt:
        return "ignores `tools` (the tool definitions are not in the prompt it renders)"
    answer = full[len(prompt):] if full.startswith(prompt) else full
    if _PROBE_TOOL_NAME not in answer or _PROBE_VALUE not in answer:
        return "does not render the assistant's `tool_calls` (the call's name or arguments are not in the answer)"
    return None


def tool_template_problem(tokenizer) -> str | None:
    """Why the tokenizer's chat template cannot train tool calls, or None; probed once per template."""
    key = repr(tokenizer.chat_template)
    if key not in _tool_problems:
        _tool_problems[key] = _probe_tool_template(tokenizer)
    return _tool_problems[key]


def tool_template_message(tokenizer, problem: str) -> str:
    from tuneforge.chat_templates import BUILTIN_TEMPLATES, has_single_tokens

    if has_single_tokens(tokenizer, BUILTIN_TEMPLATES["chatml-tools"].markers):
        fix = ("train with chat_template=chatml-tools (a built-in that renders both; validate: --chat-template "
               "chatml-tools) or a Jinja file of your own that does")
    else:
        fix = ("give chat_template=FILE.jinja, a template of your own that renders both (the built-in chatml-tools "
               "needs <|im_start|> and <|im_end|>, which this vocabulary lacks)")
    return (f"this row has tools or tool calls, but the model's chat template {problem}, so the model would never "
            f"see the tools or learn to write the calls; {fix}")


def check_template_renders_tools(tokenizer) -> None:
    """Refuse (UserError, code template_ignores_tools) a template that cannot train tool calls."""
    problem = tool_template_problem(tokenizer)
    if problem is not None:
        raise UserError(tool_template_message(tokenizer, problem), code="template_ignores_tools")


@dataclass
class _Turn:
    before: str  # the conversation before the turn with the generation prompt: what the model sees
    through: str  # the conversation through the turn

    @property
    def span(self) -> tuple[int, int]:
        return len(self.before), len(self.through.rstrip())


def trained_sequences(tokenizer, messages: list[dict], tools=None) -> list[tuple[str, list[tuple[int, int]]]]:
    """The rendered texts to train on, each with the [start, end) character spans that carry loss, in
    conversation order: one text for a prefix-stable template, more where it rewrites earlier turns."""
    if uses_tools(messages, tools):
        check_template_renders_tools(tokenizer)
    full = render(tokenizer, messages, tools)
    turns = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
        # The last turn's "through" render is the full render (the common single-turn case: 2 renders, not 3).
        through = full if index == len(messages) - 1 else render(tokenizer, messages[: index + 1], tools)
        if not through.startswith(before):
            raise UserError(
                "the model's chat template renders the prompt before an assistant turn differently once the answer "
                "follows it, so the answer's tokens cannot be located; give a model whose template is prefix-stable "
                "(its generation prompt ends where the answer starts)",
                code="template_not_prefix_stable",
            )
        turns.append(_Turn(before, through))
    if not turns:
        return [(full, [])]
    sequences = []
    text = full if full.startswith(turns[-1].through) else turns[-1].through
    while turns:
        # The latest turn left always fits `text`; earlier ones fit where the template did not rewrite them.
        served = [turn for turn in turns if text.startswith(turn.through)]
        sequences.append((text, [turn.span for turn in served if turn.span[1] > turn.span[0]]))
        turns = [turn for turn in turns if not text.startswith(turn.through)]
        if turns:
            text = turns[-1].through
    return sequences[::-1]


def trained_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the [start, end) character spans that carry loss (one sequence)."""
    sequences = trained_sequences(tokenizer, messages, tools)
    if len(sequences) > 1:
        raise UserError(
            f"the model's chat template rewrites earlier assistant turns once later ones follow, so this "
            f"conversation trains as {len(sequences)} sequences (one per rewritten turn) where one is needed; "
            "give the turns as separate examples, or weight 0 on all but the last",
            code="template_not_prefix_stable",
        )
    return sequences[0]


def _tokenize_spans(tokenizer, text: str, spans: list[tuple[int, int]], max_length: int | None) -> TokenizedExample:
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in [*spans, (len(text), len(text))]:
        pieces += [(piece, trained) for piece, trained in ((text[cursor:start], False), (text[start:end], True)) if piece]
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


def tokenize_conversation_examples(tokenizer, messages: list[dict], tools=None,
                                   max_length: int | None = None) -> list[TokenizedExample]:
    """Every sequence a conversation trains as (one unless the template rewrites history), each cut to max_length."""
    return [_tokenize_spans(tokenizer, text, spans, max_length)
            for text, spans in trained_sequences(tokenizer, messages, tools)]


def tokenize_conversation(tokenizer, messages: list[dict], tools=None, max_length: int | None = None) -> TokenizedExample:
    """The conversation as one sequence; refused (UserError) where the template rewrites a trained turn."""
    full, spans = trained_spans(tokenizer, messages, tools)
    return _tokenize_spans(tokenizer, full, spans, max_length)


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
