"""Chat templates for models that bring none (base models), and the user's choice:

    tuneforge train --model gemma3-270m --data train.jsonl                      # picked from the vocabulary
    tuneforge train --model gemma3-270m --data train.jsonl chat_template=plain  # a built-in by name
    tuneforge train --model ./base --data train.jsonl chat_template=my.jinja    # a Jinja file of your own
    tuneforge train --data tools.jsonl chat_template=chatml-tools               # tool calls on a model whose
                                                                                # own template ignores tools

A model's own template always wins unless `chat_template=` names another. For a model without one the
template must be written in tokens the model actually has: a ChatML fallback on Gemma would end every
turn with `<|im_end|>`, which is not one token of Gemma's vocabulary but a handful of pieces, so the model
could never learn to stop. The built-in chosen is the first whose turn markers are single tokens of the
vocabulary (Gemma's `<start_of_turn>`, Llama 3's headers, ChatML's `<|im_start|>`); `plain` needs none and
ends each answer with the tokenizer's own end-of-sequence token. Whatever was used is saved with the
tokenizer in the output folder, so eval, generate, export and the service use the same one.

Tool calls need a template that shows the model the tools and writes the assistant's `tool_calls`; many
models' own templates (SmolLM2's among them) ignore both, which data/tokenize.py detects and refuses.
`chatml-tools` is ChatML that renders them the way tuneforge/tool_calls.py reads them back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError


@dataclass(frozen=True)
class BuiltinTemplate:
    markers: tuple[str, ...]  # tokens the vocabulary must hold as single tokens
    source: str


BUILTIN_TEMPLATES = {
    "gemma": BuiltinTemplate(
        ("<start_of_turn>", "<end_of_turn>"),
        # Gemma has no system role: a system message opens the first user turn. Its tokenizer converted from
        # GGUF does not add <bos> itself, and Gemma needs it, so the template writes it (as Gemma's own does).
        "{{ bos_token }}{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
        "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
        "{% if message['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
        "{{ message['content'] | trim + '<end_of_turn>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
    ),
    "llama3": BuiltinTemplate(
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ),
    "chatml": BuiltinTemplate(
        ("<|im_start|>", "<|im_end|>"),
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    ),
    # ChatML with tools, in the shape Qwen 2.5 / Hermes fine-tunes use and tuneforge/tool_calls.py reads: the tools
    # as JSON lines inside <tools></tools> in the system turn, each call as <tool_call>\n{"name", "arguments"}\n
    # </tool_call> (the shape the forced tool_choice grammar writes, constrained.py), tool results as
    # <tool_response> inside a user turn. OpenAI rows store arguments as a JSON string: written as they are, so
    # they read as the object they encode; a dict is written as JSON. Without tools it renders as `chatml`.
    "chatml-tools": BuiltinTemplate(
        ("<|im_start|>", "<|im_end|>"),
        "{%- if tools %}{{- '<|im_start|>system\n' }}"
        "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
        "{{- 'You can call these functions, listed as JSON inside <tools></tools>:\n<tools>' }}"
        "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
        "{{- '\n</tools>\nTo call one, answer with <tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<arguments as a JSON object>}\n</tool_call><|im_end|>\n' }}"
        "{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' and loop.first %}"
        "{%- elif message['role'] == 'assistant' %}{{- '<|im_start|>assistant\n' }}"
        "{%- if message['content'] %}{{- message['content'] }}{%- endif %}"
        "{%- for call in message['tool_calls'] or [] %}"
        "{%- set function = call['function'] if call['function'] is defined else call %}"
        "{%- if message['content'] or not loop.first %}{{- '\n' }}{%- endif %}"
        "{{- '<tool_call>\n{\"name\": ' + (function['name'] | tojson) + ', \"arguments\": ' }}"
        "{%- if function['arguments'] is string %}{{- function['arguments'] }}"
        "{%- else %}{{- (function['arguments'] if function['arguments'] is defined else {}) | tojson }}{%- endif %}"
        "{{- '}\n</tool_call>' }}"
        "{%- endfor %}{{- '<|im_end|>\n' }}"
        "{%- elif message['role'] == 'tool' %}"
        "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
        "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
        "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}",
    ),
    "plain": BuiltinTemplate(
        (),
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% else %}{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] + '\n\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}",
    ),
}
# The order a template-less model is matched in: the most specific markers first.
AUTOMATIC_ORDER = ("gemma", "llama3", "chatml", "plain")
_announced: set[str] = set()


def has_single_tokens(tokenizer, tokens: tuple[str, ...]) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in tokens)


def template_for(tokenizer, choice: str | None) -> tuple[str, str | None]:
    """(name, template source) to use: `choice` (a built-in name or a file), else the model's own
    (source None: keep it), else the first built-in the vocabulary can write."""
    if choice:
        if choice in BUILTIN_TEMPLATES:
            builtin = BUILTIN_TEMPLATES[choice]
            if not has_single_tokens(tokenizer, builtin.markers):
                missing = [t for t in builtin.markers if t not in tokenizer.get_vocab()]
                usable = [name for name in AUTOMATIC_ORDER if has_single_tokens(tokenizer, BUILTIN_TEMPLATES[name].markers)]
                raise UserError(f"chat_template={choice}: {', '.join(missing)} not in this model's vocabulary, so its "
                                f"turns could not end; use one of {', '.join(usable)} or a Jinja file", code="bad_config")
            return choice, builtin.source
        path = Path(choice).expanduser()
        if not path.is_file():
            raise UserError(f"chat_template={choice}: neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor a file",
                            code="bad_config")
        return str(path), path.read_text(encoding="utf-8")
    if tokenizer.chat_template:
        return "the model's own", None
    for name in AUTOMATIC_ORDER:
        if has_single_tokens(tokenizer, BUILTIN_TEMPLATES[name].markers):
            return name, BUILTIN_TEMPLATES[name].source
    raise AssertionError("plain needs no markers")  # pragma: no cover


def apply_template(tokenizer, choice: str | None, model_name: str) -> str:
    """Set the template on `tokenizer` (see `template_for`); says once per model when one was supplied."""
    name, source = template_for(tokenizer, choice)
    if source is not None:
        tokenizer.chat_template = source
        if not choice and model_name not in _announced:
            _announced.add(model_name)
            print(f"tuneforge: {model_name} has no chat template; using the built-in '{name}' template "
                  "(choose another with chat_template=NAME or a Jinja file: docs/models.md)", file=sys.stderr)
    return name
