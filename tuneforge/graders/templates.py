"""OpenAI's grader templates: `{{ sample.output_text }}`, `{{ item.reference_answer }}`, `{{ sample.output_json.a[0].b }}`.

A template names a namespace, `item` (the dataset row) or `sample` (the model's answer: output_text,
output_json when the answer is JSON, output_tools, choices), then a path of `.key` and `[index]` steps.
A string is substituted as it is; any other value as JSON (1.0 -> "1.0", {"a": 1} -> '{"a": 1}').
"""

from __future__ import annotations

import json
import re

NAMESPACES = ("item", "sample")
PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
STEP = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")


class TemplateError(ValueError):
    """A placeholder that is malformed (`static`) or names nothing in this sample or item."""

    def __init__(self, message: str, static: bool):
        super().__init__(message)
        self.static = static


def parse_path(expression: str) -> tuple[str, list[str | int]]:
    """'item.a.b[0]' -> ('item', ['a', 'b', 0]); TemplateError when it is not a namespace and a path."""
    namespace, _, rest = expression.partition(".")
    namespace = namespace.split("[", 1)[0]
    if namespace not in NAMESPACES:
        raise TemplateError(f"'{{{{ {expression} }}}}' must start with item. or sample.", static=True)
    tail = expression[len(namespace):]
    steps: list[str | int] = []
    position = 0
    while position < len(tail):
        match = STEP.match(tail, position)
        if match is None:
            raise TemplateError(f"'{{{{ {expression} }}}}' is not a path like item.field or sample.output_json.a[0]",
                                static=True)
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    if not steps:
        raise TemplateError(f"'{{{{ {expression} }}}}' names a namespace but no variable in it", static=True)
    return namespace, steps


def check_template(text: str) -> None:
    """Raises TemplateError for the first malformed placeholder (run before any sample exists)."""
    for match in PLACEHOLDER.finditer(text):
        parse_path(match.group(1))
    leftover = PLACEHOLDER.sub("", text)
    if "{{" in leftover:
        raise TemplateError("has an unclosed '{{' placeholder", static=True)


def lookup(expression: str, namespaces: dict) -> object:
    namespace, steps = parse_path(expression)
    value = namespaces[namespace]
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(step, str) and isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]  # `output_tools.0.function`: some write indices as keys
        else:
            raise TemplateError(f"'{{{{ {expression} }}}}': {namespace} has no {step!r} there", static=False)
    return value


def render(text: str, sample: dict, item: dict) -> str:
    namespaces = {"sample": sample, "item": item}

    def substitute(match: re.Match) -> str:
        value = lookup(match.group(1), namespaces)
        return value if isinstance(value, str) else json.dumps(value)

    return PLACEHOLDER.sub(substitute, text)


def sample_namespace(model_sample: str) -> dict:
    """The `sample` of a plain text answer, as OpenAI fills it for a chat completion."""
    sample = {
        "output_text": model_sample,
        "output_tools": [],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": model_sample}, "finish_reason": "stop"}],
    }
    try:
        parsed = json.loads(model_sample)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, (dict, list)):
        sample["output_json"] = parsed
    return sample
