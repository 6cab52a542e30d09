"""Reward functions for `tuneforge train --method grpo --reward NAME|module:function`.

A reward function is `fn(prompt_messages, completion_text, reference) -> float`; `reference` is the
prompt row's final assistant turn (or None). Pure functions, no model: cheap enough to call per sample.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable

from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import normalise_answer

RewardFunction = Callable[[list, str, "str | None"], float]


def exact_match(prompt_messages: list[dict], completion: str, reference: str | None) -> float:
    """1.0 when the completion equals the reference (surrounding whitespace ignored), else 0.0."""
    if reference is None:
        raise UserError("the exact_match reward needs a reference: end each prompt row with an assistant message")
    return float(normalise_answer(completion) == normalise_answer(reference))


def json_format(prompt_messages: list[dict], completion: str, reference: str | None) -> float:
    """1.0 when the completion is a JSON object and nothing else, else 0.0 (a format check)."""
    try:
        return float(isinstance(json.loads(completion.strip()), dict))
    except ValueError:
        return 0.0


def json_fields(prompt_messages: list[dict], completion: str, reference: str | None) -> float:
    """Partial credit: the fraction of the reference object's fields the completion gets right (0 if not JSON).

    Denser than exact match, so a group of samples differs in reward more often: a better GRPO signal."""
    try:
        expected, got = json.loads(reference or ""), json.loads(completion.strip())
    except ValueError:
        return 0.0
    if not isinstance(expected, dict) or not isinstance(got, dict) or not expected:
        return 0.0
    return sum(got.get(key) == value for key, value in expected.items()) / len(expected)


BUILTIN = {"exact_match": exact_match, "json_format": json_format, "json_fields": json_fields}


def resolve_reward(spec: str) -> RewardFunction:
    """A built-in name, or 'module:function' importable from the current environment."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise UserError(f"reward '{spec}': expected one of {', '.join(BUILTIN)} or module:function")
    module_name, function_name = spec.split(":", 1)
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"reward '{spec}': cannot import ({exc})") from None
    if not callable(function):
        raise UserError(f"reward '{spec}' is not a function")
    return function
