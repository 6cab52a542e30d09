"""An Ollama model folder: the GGUF plus a Modelfile with the chat template in Go template syntax.

    tuneforge export --adapter runs/demo --format ollama --output exported/demo
    ollama create demo -f exported/demo/Modelfile && ollama run demo

Ollama cannot run the Jinja chat template that ships with the tokenizer, so the Modelfile's TEMPLATE is
a Go-template translation. We recognise the two families nearly every small chat model uses -- ChatML
(`<|im_start|>role ... <|im_end|>`) and Llama-3 headers -- and say so clearly for anything else. A default
system prompt baked into the Jinja template (SmolLM2 has one) becomes the Modelfile's SYSTEM line; Ollama
puts it first in `.Messages` whenever a request brings no system message of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.errors import UserError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    marker: str  # a string only this family's Jinja template contains
    go_template: str
    system_open: str  # how the rendered Jinja text opens a system turn ...
    turn_close: str  # ... and closes any turn
    stops: tuple[str, ...]  # end-of-turn tokens: generation stops on these


CHATML = ChatFormat(
    name="chatml",
    marker="<|im_start|>",
    go_template=(
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    ),
    system_open="<|im_start|>system\n",
    turn_close="<|im_end|>",
    stops=("<|im_end|>", "<|im_start|>"),
)

LLAMA3 = ChatFormat(
    name="llama3",
    marker="<|start_header_id|>",
    go_template=(
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    system_open="<|start_header_id|>system<|end_header_id|>\n\n",
    turn_close="<|eot_id|>",
    stops=("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
)

CHAT_FORMATS = (CHATML, LLAMA3)


def detect_chat_format(chat_template: str | None) -> ChatFormat:
    for fmt in CHAT_FORMATS:
        if chat_template and fmt.marker in chat_template:
            return fmt
    raise UserError(
        "Ollama export translates ChatML and Llama-3 chat templates only; this model's template is neither. "
        "Export --format gguf and write the Modelfile TEMPLATE by hand (https://github.com/ollama/ollama/blob/main/docs/template.md)"
    )


def default_system_prompt(tokenizer, fmt: ChatFormat) -> str | None:
    """The system message the Jinja template inserts when a conversation has none, if any."""
    probe = "\x00probe\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    start = rendered.find(fmt.system_open)
    if start < 0 or start > rendered.find(probe):
        return None
    body = rendered[start + len(fmt.system_open):]
    return body[: body.find(fmt.turn_close)] or None


def modelfile_text(tokenizer, gguf_name: str = "model.gguf") -> str:
    fmt = detect_chat_format(tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{fmt.go_template}"""']
    system = default_system_prompt(tokenizer, fmt)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    stops = list(fmt.stops)
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"
