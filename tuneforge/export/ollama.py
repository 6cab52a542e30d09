"""An Ollama model folder: the GGUF plus a Modelfile.

    tuneforge export --adapter runs/demo --format ollama --output exported/demo
    ollama create demo -f exported/demo/Modelfile && ollama run demo

The GGUF already carries the model's Jinja chat template (`tokenizer.chat_template`). Ollama cannot run
Jinja: when a Modelfile has no TEMPLATE it matches that Jinja text against the templates it ships
(closest by edit distance) and uses its own Go-template version. A fine-tuned template often drifts
from the stock text (SmolLM2's carries its own default system prompt), so for the families whose Go form
is a plain loop over the messages -- ChatML, Llama 3, Phi-3 -- the Modelfile gets a TEMPLATE, written
only after rendering a probe conversation both ways gives the same text. Any other template is left to
Ollama's matching, never refused.

Whatever the template, the Modelfile says where a turn ends (PARAMETER stop: the token the template
puts after an assistant message, and the tokenizer's EOS) and carries a default system prompt baked into
the Jinja template as SYSTEM, which Ollama puts first whenever a request brings no system message.
Both are found by rendering the template, not by recognising it.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_USER = "\x00user probe\x00"
PROBE_SYSTEM = "\x00system probe\x00"
PROBE_REPLY = "\x00reply probe\x00"


@dataclass(frozen=True)
class ChatFormat:
    name: str
    markers: tuple[str, ...]  # strings only this family's Jinja template contains
    go_template: str  # Ollama's Go-template form: one loop over .Messages, then the assistant opening
    turn_open: str  # how a message starts, with {role} for the role
    turn_close: str  # how it ends
    generation_prompt: str
    stops: tuple[str, ...]  # the end-of-turn token, and where a runaway next turn would start


CHATML = ChatFormat(
    name="chatml",
    markers=("<|im_start|>",),
    go_template="{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    turn_open="<|im_start|>{role}\n",
    turn_close="<|im_end|>\n",
    generation_prompt="<|im_start|>assistant\n",
    stops=("<|im_end|>", "<|im_start|>"),
)
LLAMA3 = ChatFormat(
    name="llama3",
    markers=("<|start_header_id|>",),
    go_template=(
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    turn_open="<|start_header_id|>{role}<|end_header_id|>\n\n",
    turn_close="<|eot_id|>",
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    stops=("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
)
PHI3 = ChatFormat(
    name="phi3",
    markers=("<|end|>", "<|assistant|>"),
    go_template="{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
    turn_open="<|{role}|>\n",
    turn_close="<|end|>\n",
    generation_prompt="<|assistant|>\n",
    stops=("<|end|>", "<|user|>", "<|system|>"),
)
CHAT_FORMATS = (CHATML, LLAMA3, PHI3)


def render_jinja(tokenizer, messages: list[dict], generation_prompt: bool = True) -> str | None:
    """The template's text for `messages`, or None where the template refuses them (e.g. no system role)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception:  # templates raise_exception() on conversations they do not take
        return None


def render_format(fmt: ChatFormat, messages: list[dict]) -> str:
    """What Ollama renders with `fmt.go_template` (a loop over the messages, then the assistant opening)."""
    turns = (fmt.turn_open.format(role=m["role"]) + m["content"] + fmt.turn_close for m in messages)
    return "".join(turns) + fmt.generation_prompt


def default_system_prompt(tokenizer) -> str | None:
    """The system message the template inserts when a conversation has none, if any.

    Rendered once without and once with a system message: where the probe system text appears in the
    second, the first holds the default, with everything around it the same.
    """
    without = render_jinja(tokenizer, [{"role": "user", "content": PROBE_USER}])
    with_system = render_jinja(
        tokenizer, [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": PROBE_USER}]
    )
    if without is None or with_system is None or PROBE_SYSTEM not in with_system:
        return None
    before, after = with_system.split(PROBE_SYSTEM, 1)
    if not (without.startswith(before) and without.endswith(after)) or len(without) <= len(before) + len(after):
        return None
    return without[len(before) : len(without) - len(after)] or None


def special_tokens(tokenizer) -> list[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names = {t.content for t in added.values() if getattr(t, "special", False)} | set(tokenizer.all_special_tokens)
    return sorted(names, key=len, reverse=True)  # longest first, so a token is not mistaken for its prefix


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the template writes right after an assistant message (<|im_end|>, <|eot_id|>...)."""
    rendered = render_jinja(
        tokenizer,
        [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_REPLY}],
        generation_prompt=False,
    )
    if rendered is None or PROBE_REPLY not in rendered:
        return None
    after = rendered.split(PROBE_REPLY, 1)[1]
    return next((token for token in special_tokens(tokenizer) if token and after.startswith(token)), None)


def matching_format(tokenizer, system: str | None) -> ChatFormat | None:
    """A family whose Go template renders exactly what the Jinja template does, as Ollama would call it."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    conversation = [
        {"role": "user", "content": PROBE_USER},
        {"role": "assistant", "content": PROBE_REPLY},
        {"role": "user", "content": "\x00second\x00"},
    ]
    for fmt in CHAT_FORMATS:
        if not all(marker in template for marker in fmt.markers):
            continue
        # Ollama puts SYSTEM first when a request has no system message of its own.
        implicit = [{"role": "system", "content": system}] if system else []
        explicit = [{"role": "system", "content": PROBE_SYSTEM}]
        if render_jinja(tokenizer, conversation) == render_format(fmt, implicit + conversation) and render_jinja(
            tokenizer, explicit + conversation
        ) in (None, render_format(fmt, explicit + conversation)):
            return fmt
    return None


def modelfile_text(tokenizer, gguf_name: str = "model.gguf") -> str:
    system = default_system_prompt(tokenizer)
    fmt = matching_format(tokenizer, system)
    lines = [f"FROM ./{gguf_name}"]
    if fmt is not None:
        lines.append(f'TEMPLATE """{fmt.go_template}"""')
    elif isinstance(tokenizer.chat_template, str):
        lines.append("# No TEMPLATE: Ollama reads the chat template in the GGUF (tokenizer.chat_template) and uses")
        lines.append("# its own version of it; see https://github.com/ollama/ollama/blob/main/docs/template.md")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    stops = [end_of_turn_token(tokenizer), *(fmt.stops if fmt else ()), tokenizer.eos_token]
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(s for s in stops if s)]
    return "\n".join(lines) + "\n"
