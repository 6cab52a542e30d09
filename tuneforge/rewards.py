"""Reward functions for `tuneforge train --method grpo --reward NAME|module:function`, and OpenAI graders (`--grader FILE`).

A reward function is `fn(prompt_messages, completion_text, reference) -> float`; `reference` is the
prompt row's final assistant turn (or None). Pure functions, no model: cheap enough to call per sample.
A grader (tuneforge.graders) also reads the prompt's whole row as its `item`; a score_model grader's
model is loaded here, once, beside the policy.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

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


def load_grader(path: str) -> dict:
    """The validated grader object in a JSON file (`grader=FILE`). Python graders are allowed: whoever runs
    `tuneforge train` is the operator (the service checks its own setting before it writes the file)."""
    from tuneforge.graders import GraderError, validate_grader

    try:
        spec = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read the grader file ({exc.strerror})", path=str(path), code="bad_grader") from None
    except ValueError as exc:
        raise UserError(f"the grader file is not JSON ({exc})", path=str(path), code="bad_grader") from None
    try:
        return validate_grader(spec, python_enabled=True)
    except GraderError as exc:
        raise UserError(f"{exc.param}: {exc.message}", path=str(path), code="bad_grader") from None


class LocalGraderModels:
    """generate(model, messages, sampling_params) for score_model / label_model graders in training: each
    model named by a grader is loaded once (tuneforge.models) and answers greedily unless told otherwise."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.loaded: dict[str, tuple] = {}

    def __call__(self, model: str, messages: list[dict], sampling_params: dict) -> dict:
        from tuneforge.generation import generate_chat
        from tuneforge.models import load_model

        if model not in self.loaded:
            self.loaded[model] = load_model(model, device=self.device)
        network, tokenizer = self.loaded[model]
        return generate_chat(
            network, tokenizer, [messages],
            max_new_tokens=sampling_params.get("max_completions_tokens") or 256,
            temperature=sampling_params.get("temperature") or 0.0,
            top_p=sampling_params.get("top_p") or 1.0,
            seed=sampling_params.get("seed"),
        )[0]  # fmt: skip


def grader_reward(spec: dict, generate=None) -> Callable:
    """fn(prompt_messages, completion, reference, item) -> the grader's reward for one completion."""
    from tuneforge.graders import run_grader

    generate = generate or LocalGraderModels()

    def reward(prompt_messages: list[dict], completion: str, reference: str | None, item: dict) -> float:
        return run_grader(spec, completion, item, generate=generate, python_enabled=True)["reward"]

    return reward
