"""See examples exactly as the model will:  tuneforge preview train.jsonl --n 3 [--model M] [--html out.html] [--json]

Each example is rendered with the model's chat template and split into its real tokens; trained tokens
(those that carry loss) are highlighted: green in a terminal, ⟦…⟧ when piped, green in the HTML page,
`"trained": true` in the JSON the service's dashboard draws.
A wrong template or mask (a trained prompt, an untrained end-of-turn token) is visible at a glance.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from tuneforge.data.formats import row_to_conversation, row_to_preference_pair
from tuneforge.data.readers import Row, describe, read_rows
from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"
_ANSI_TRAINED = ("\x1b[30;42m", "\x1b[30;102m")  # two greens, alternating per token to show boundaries
_ANSI_PROMPT = ("\x1b[2m", "\x1b[2;4m")  # dim, and dim+underline
_ANSI_RESET = "\x1b[0m"


@dataclass
class PreviewExample:
    line: int | Row
    title: str
    pieces: list[tuple[str, int, bool]]  # (decoded text, token id, trained)

    @property
    def n_tokens(self) -> int:
        return len(self.pieces)

    @property
    def n_trained(self) -> int:
        return sum(1 for _, _, trained in self.pieces if trained)


def preview_examples(path, tokenizer, n: int = 3, method: str = "sft") -> list[PreviewExample]:
    """The first `n` examples of the file, in any container and format (DPO rows give a chosen and a rejected
    sequence); the first unreadable one is a UserError, as in training."""
    out: list[PreviewExample] = []
    for line, row in read_rows(path):
        if len(out) >= n:
            break
        where = describe(line)
        if method == "dpo":
            pair = row_to_preference_pair(row, str(path), line)
            sequences = [(f"chosen ({where})", pair.prompt + [{"role": "assistant", "content": pair.chosen}], pair.tools),
                         (f"rejected ({where})", pair.prompt + [{"role": "assistant", "content": pair.rejected}], pair.tools)]
        else:
            conversation = row_to_conversation(row, str(path), line)
            sequences = [(where, conversation.messages, conversation.tools)]
        for title, messages, tools in sequences:
            example = tokenize_conversation(tokenizer, messages, tools)
            pieces = [(tokenizer.decode([token]), token, label != IGNORE_INDEX)
                      for token, label in zip(example.input_ids, example.labels, strict=True)]
            out.append(PreviewExample(line, title, pieces))
    return out


def preview_dict(examples: list[PreviewExample], model: str, method: str) -> dict:
    """The JSON of `preview --json`: per example its position, counts and every token with whether it is trained."""
    return {
        "model": model,
        "method": method,
        "examples": [
            {
                "line": example.line.line if isinstance(example.line, Row) else example.line,
                "row": example.line.index if isinstance(example.line, Row) else None,
                "title": example.title,
                "n_tokens": example.n_tokens,
                "n_trained": example.n_trained,
                "tokens": [{"text": text, "id": token, "trained": trained} for text, token, trained in example.pieces],
            }
            for example in examples
        ],
    }


def _visible(text: str) -> str:
    # Whitespace-only tokens would be invisible; show newlines as ↵ (and keep the line break).
    return text.replace("\n", "↵\n")


def format_text(example: PreviewExample, color: bool, show_boundaries: bool = False) -> str:
    header = f"── {example.title}: {example.n_tokens} tokens, {example.n_trained} trained ──"
    parts = []
    in_trained = False
    for index, (text, _token, trained) in enumerate(example.pieces):
        if color:
            style = (_ANSI_TRAINED if trained else _ANSI_PROMPT)[index % 2]
            parts.append(f"{style}{_visible(text)}{_ANSI_RESET}")
            continue
        if trained != in_trained:
            parts.append(TRAINED_OPEN if trained else TRAINED_CLOSE)
            in_trained = trained
        elif show_boundaries and index:
            parts.append("|")
        parts.append(_visible(text))
    if in_trained and not color:
        parts.append(TRAINED_CLOSE)
    return header + "\n" + "".join(parts)


def format_html(examples: list[PreviewExample], source: str, model: str) -> str:
    """One self-contained page (inline CSS, no scripts): each token a box, trained tokens green."""
    blocks = []
    for example in examples:
        spans = []
        for text, token, trained in example.pieces:
            label = html.escape(text).replace("\n", "↵<br>") or "&#8203;"
            spans.append(f'<span class="t{" y" if trained else ""}" title="id {token}">{label}</span>')
        blocks.append(f"<h2>{html.escape(example.title)} &mdash; {example.n_tokens} tokens, {example.n_trained} "
                      f"trained</h2>\n<div class=\"ex\">{''.join(spans)}</div>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tuneforge preview: {html.escape(source)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
.ex {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; border: 1px solid #ccc; padding: 1em; }}
.t {{ border-right: 1px solid #bbb; padding: 0 1px; color: #666; }}
.y {{ background: #b6f2b6; color: #000; }}
</style></head><body>
<h1>{html.escape(source)}</h1>
<p>Model <code>{html.escape(model)}</code>. Each box is one token (hover for its id);
<span class="t y">green</span> tokens are trained (carry loss), the rest are context only.</p>
{chr(10).join(blocks)}
</body></html>
"""
