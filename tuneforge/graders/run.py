"""Grading one sample: `run_grader(spec, model_sample, item)` -> OpenAI's graders/run response.

The response (openai-python types/fine_tuning/alpha/grader_run_response.py) is
    {reward, metadata: {name, type, errors: {...flags}, execution_time, scores, token_usage,
     sampled_model_name}, sub_rewards, model_grader_token_usage_per_model}.
A grader that cannot score a sample (a template names a missing field, a model's answer holds no number,
a python grader raises) scores 0 and sets the matching error flag: in training one bad sample must not
stop the run, and the flag says what went wrong. A grader object that is itself wrong raises GraderError.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable

from tuneforge.graders.formula import evaluate_formula, parse_formula
from tuneforge.graders.sandbox import run_python_grader
from tuneforge.graders.similarity import METRICS
from tuneforge.graders.spec import GraderError, validate_grader
from tuneforge.graders.templates import TemplateError, render, sample_namespace

# generate(model, messages, sampling_params) -> str, or {"text", "prompt_tokens", "completion_tokens"}
Generate = Callable[[str, list, dict], "str | dict"]
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def empty_errors() -> dict:
    return {
        "formula_parse_error": False,
        "invalid_variable_error": False,
        "model_grader_parse_error": False,
        "model_grader_refusal_error": False,
        "model_grader_server_error": False,
        "model_grader_server_error_details": None,
        "other_error": False,
        "python_grader_runtime_error": False,
        "python_grader_runtime_error_details": None,
        "python_grader_server_error": False,
        "python_grader_server_error_type": None,
        "sample_parse_error": False,
        "truncated_observation_error": False,
        "unresponsive_reward_error": False,
    }


class Grading:
    """What one run accumulates: error flags, model token usage, the model a grader sampled."""

    def __init__(self, generate: Generate | None):
        self.generate = generate
        self.errors = empty_errors()
        self.usage: dict[str, dict] = {}
        self.sampled_model: str | None = None

    def ask(self, model: str, messages: list[dict], sampling_params: dict) -> str | None:
        if self.generate is None:
            raise GraderError(f"grading with model {model!r} needs a model server, and none was given", "grader.model")
        try:
            answer = self.generate(model, messages, sampling_params)
        except Exception as exc:  # the grading model failing is a reported error, not a crash
            self.errors["model_grader_server_error"] = True
            self.errors["model_grader_server_error_details"] = f"{type(exc).__name__}: {exc}"[:2000]
            return None
        self.sampled_model = model
        if isinstance(answer, dict):
            prompt, completion = int(answer.get("prompt_tokens", 0)), int(answer.get("completion_tokens", 0))
            total = self.usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                                  "cached_tokens": 0})
            total["prompt_tokens"] += prompt
            total["completion_tokens"] += completion
            total["total_tokens"] += prompt + completion
            answer = answer["text"]
        return answer


def run_grader(spec: dict, model_sample: str | dict, item: dict | None = None, *, generate: Generate | None = None,
               python_enabled: bool = False) -> dict:
    """Grade `model_sample` (the answer's text, or a full `sample` namespace) against dataset row `item`."""
    started = time.perf_counter()
    spec = validate_grader(spec, python_enabled=python_enabled)
    sample = sample_namespace(model_sample) if isinstance(model_sample, str) else model_sample
    item = item if item is not None else {}
    grading = Grading(generate)
    sub_rewards: dict[str, float] = {}
    if spec["type"] == "multi":
        for name, grader in spec["graders"].items():
            sub_rewards[name] = grade(grader, sample, item, grading)
        reward = combine(spec["calculate_output"], sub_rewards, grading)
    else:
        reward = grade(spec, sample, item, grading)
    total_tokens = sum(u["total_tokens"] for u in grading.usage.values())
    return {
        "reward": reward,
        "metadata": {
            "name": spec["name"],
            "type": spec["type"],
            "errors": grading.errors,
            "execution_time": round(time.perf_counter() - started, 6),
            "scores": dict(sub_rewards),
            "token_usage": total_tokens if grading.usage else None,
            "sampled_model_name": grading.sampled_model,
        },
        "sub_rewards": sub_rewards,
        "model_grader_token_usage_per_model": grading.usage,
    }


def combine(formula: str, scores: dict[str, float], grading: Grading) -> float:
    try:
        value = evaluate_formula(parse_formula(formula, set(scores)), scores)
    except (ArithmeticError, ValueError, TypeError):  # 1 / 0, log(0), sqrt(-1): no reward, flagged
        grading.errors["formula_parse_error"] = True
        return 0.0
    if not math.isfinite(value):
        grading.errors["formula_parse_error"] = True
        return 0.0
    return value


def grade(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    """One non-multi grader's score; 0.0 with an error flag when this sample cannot be scored."""
    try:
        return GRADERS[spec["type"]](spec, sample, item, grading)
    except TemplateError as exc:
        flag = "sample_parse_error" if "output_json" in str(exc) and "output_json" not in sample \
            else "invalid_variable_error"
        grading.errors[flag] = True
        return 0.0


def string_check(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    text, reference = render(spec["input"], sample, item), render(spec["reference"], sample, item)
    operation = spec["operation"]
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    return float(reference.lower() in text.lower())  # ilike


def text_similarity(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    text, reference = render(spec["input"], sample, item), render(spec["reference"], sample, item)
    return float(METRICS[spec["evaluation_metric"]](text, reference))


def grader_messages(spec: dict, sample: dict, item: dict, answer_format: str) -> list[dict]:
    """The grader's messages, templates filled in, with the answer format asked for in the system message
    (OpenAI constrains its grader models' output to a response format; a local model is asked instead)."""
    messages = [{"role": "system" if m["role"] == "developer" else m["role"],
                 "content": render(m["content"], sample, item)} for m in spec["input"]]
    if messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{answer_format}"}
    else:
        messages.insert(0, {"role": "system", "content": answer_format})
    return messages


def parse_score(text: str) -> float | None:
    """{"result": x} as OpenAI's score format asks, or else the first number in the answer."""
    stripped = text.strip()
    try:
        parsed = json.loads(stripped[stripped.find("{"): stripped.rfind("}") + 1]) if "{" in stripped else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("result"), (int, float)) \
            and not isinstance(parsed["result"], bool):
        return float(parsed["result"])
    match = NUMBER.search(stripped)
    return float(match.group()) if match else None


def score_model(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    low, high = spec["range"]
    answer_format = (f'Reply with a JSON object {{"result": SCORE}} where SCORE is a number from {low:g} to '
                     f"{high:g}, and nothing else.")
    answer = grading.ask(spec["model"], grader_messages(spec, sample, item, answer_format), spec["sampling_params"])
    if answer is None:
        return 0.0
    score = parse_score(answer)
    if score is None or not math.isfinite(score):
        grading.errors["model_grader_parse_error"] = True
        return 0.0
    return min(max(score, low), high)


def label_model(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    labels = spec["labels"]
    answer_format = f'Reply with a JSON object {{"result": LABEL}} where LABEL is one of {json.dumps(labels)}.'
    answer = grading.ask(spec["model"], grader_messages(spec, sample, item, answer_format), spec["sampling_params"])
    if answer is None:
        return 0.0
    label = parse_label(answer, labels)
    if label is None:
        grading.errors["model_grader_parse_error"] = True
        return 0.0
    return float(label in spec["passing_labels"])


def parse_label(text: str, labels: list[str]) -> str | None:
    stripped = text.strip()
    try:
        parsed = json.loads(stripped[stripped.find("{"): stripped.rfind("}") + 1]) if "{" in stripped else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("result") in labels:
        return parsed["result"]
    by_length = sorted(labels, key=len, reverse=True)  # "not good" before "good"
    exact = [label for label in by_length if stripped.strip('"').lower() == label.lower()]
    if exact:
        return exact[0]
    found = [label for label in by_length if re.search(rf"\b{re.escape(label.lower())}\b", stripped.lower())]
    return found[0] if found else None


def python(spec: dict, sample: dict, item: dict, grading: Grading) -> float:
    outcome = run_python_grader(spec["source"], sample, item)
    if outcome.score is not None and math.isfinite(outcome.score):
        return outcome.score
    if outcome.kind == "server":
        grading.errors["python_grader_server_error"] = True
        grading.errors["python_grader_server_error_type"] = outcome.error
    else:
        grading.errors["python_grader_runtime_error"] = True
        grading.errors["python_grader_runtime_error_details"] = outcome.error or f"grade returned {outcome.score}"
    return 0.0


GRADERS = {"string_check": string_check, "text_similarity": text_similarity, "score_model": score_model,
           "label_model": label_model, "python": python}
