"""Checking a grader object before anything runs: `validate_grader(spec, python_enabled=...)`.

Grader shapes follow OpenAI's (openai-python src/openai/types/graders/): string_check, text_similarity,
score_model, label_model, python and multi. Every problem is a `GraderError` whose `param` is the path
of the offending field (`grader.graders.a.operation`), the way the API's 400s name a parameter.
The returned spec is normalised: defaults filled in (range [0, 1], sampling_params {}), nothing else
changed, so running it later needs no second round of checks.
"""

from __future__ import annotations

import ast
import copy
import keyword
import math

from tuneforge.errors import UserError
from tuneforge.graders.formula import FormulaError, parse_formula
from tuneforge.graders.templates import TemplateError, check_template

TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
NEEDS_EMBEDDINGS = ("cosine",)
ROLES = ("user", "assistant", "system", "developer")
SAMPLING_PARAMS = {"max_completions_tokens": int, "temperature": float, "top_p": float, "seed": int,
                   "reasoning_effort": str}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
MAX_PYTHON_SOURCE = 256 * 1024  # OpenAI's limit on a python grader's source
PYTHON_DISABLED = ("python graders are disabled on this server: the operator enables them with "
                   "TUNEFORGE_PYTHON_GRADERS=1 (tuneforge serve)")

FIELDS = {
    "string_check": {"type", "name", "input", "reference", "operation"},
    "text_similarity": {"type", "name", "input", "reference", "evaluation_metric", "pass_threshold"},
    "score_model": {"type", "name", "input", "model", "range", "sampling_params", "pass_threshold"},
    "label_model": {"type", "name", "input", "model", "labels", "passing_labels", "sampling_params"},
    "python": {"type", "name", "source", "image_tag", "pass_threshold"},
    "multi": {"type", "name", "graders", "calculate_output"},
}


class GraderError(UserError):
    """A grader object that cannot run: `param` is the path of the field at fault, `message` says why."""

    def __init__(self, message: str, param: str | None = None):
        self.message = message
        self.param = param
        super().__init__(f"{param}: {message}" if param else message, code="invalid_grader")


def validate_grader(spec: dict, *, python_enabled: bool, param: str = "grader") -> dict:
    """The normalised copy of `spec`, or GraderError naming the first field at fault."""
    if not isinstance(spec, dict):
        raise GraderError("must be a grader object with a 'type'", param)
    kind = spec.get("type")
    if kind not in TYPES:
        raise GraderError(f"unknown grader type {kind!r}: expected one of {', '.join(TYPES)}", f"{param}.type")
    unknown = sorted(set(spec) - FIELDS[kind])
    if unknown:
        raise GraderError(f"unknown field for a {kind} grader (allowed: {', '.join(sorted(FIELDS[kind]))})",
                          f"{param}.{unknown[0]}")
    spec = copy.deepcopy(spec)
    _text(spec, "name", param, template=False)
    if "pass_threshold" in spec:
        _number(spec, "pass_threshold", param)
    CHECKS[kind](spec, param, python_enabled)
    return spec


def _text(spec: dict, key: str, param: str, *, template: bool = True, required: bool = True) -> None:
    if key not in spec:
        if required:
            raise GraderError("is required", f"{param}.{key}")
        return
    value = spec[key]
    if not isinstance(value, str):
        raise GraderError(f"must be a string, got {type(value).__name__}", f"{param}.{key}")
    if key == "name" and not value.strip():
        raise GraderError("must not be empty", f"{param}.{key}")
    if template:
        try:
            check_template(value)
        except TemplateError as exc:
            raise GraderError(str(exc), f"{param}.{key}") from None


def _number(spec: dict, key: str, param: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GraderError(f"must be a number, got {value!r}", f"{param}.{key}")
    return float(value)


def _string_check(spec: dict, param: str, python_enabled: bool) -> None:
    _text(spec, "input", param)
    _text(spec, "reference", param)
    if spec.get("operation") not in OPERATIONS:
        raise GraderError(f"must be one of {', '.join(OPERATIONS)}, got {spec.get('operation')!r}",
                          f"{param}.operation")


def _text_similarity(spec: dict, param: str, python_enabled: bool) -> None:
    _text(spec, "input", param)
    _text(spec, "reference", param)
    metric = spec.get("evaluation_metric")
    if metric in NEEDS_EMBEDDINGS:
        raise GraderError(f"{metric!r} needs an embedding model, which this server does not run; use one of "
                          f"{', '.join(METRICS)}", f"{param}.evaluation_metric")
    if metric not in METRICS:
        raise GraderError(f"must be one of {', '.join(METRICS)}, got {metric!r}", f"{param}.evaluation_metric")


def _messages(spec: dict, param: str) -> None:
    messages = spec.get("input")
    if not isinstance(messages, list) or not messages:
        raise GraderError("must be a non-empty list of messages {role, content}", f"{param}.input")
    for i, message in enumerate(messages):
        where = f"{param}.input.{i}"
        if not isinstance(message, dict):
            raise GraderError("must be a message object {role, content}", where)
        unknown = sorted(set(message) - {"role", "content", "type"})
        if unknown:
            raise GraderError("unknown field in a message (allowed: role, content, type)", f"{where}.{unknown[0]}")
        if message.get("type", "message") != "message":
            raise GraderError("must be 'message'", f"{where}.type")
        if message.get("role") not in ROLES:
            raise GraderError(f"must be one of {', '.join(ROLES)}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, list):
            # Content parts: text only (input_text / output_text); images and audio need a model that sees them.
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text") \
                        or not isinstance(part.get("text"), str):
                    raise GraderError("this server grades text only: a content part must be "
                                      "{type: input_text, text}", f"{where}.content.{j}")
            message["content"] = "".join(part["text"] for part in content)
        _text(message, "content", where)


def _sampling_params(spec: dict, param: str) -> None:
    params = spec.setdefault("sampling_params", {})
    if params is None:
        params = spec["sampling_params"] = {}
    if not isinstance(params, dict):
        raise GraderError("must be an object", f"{param}.sampling_params")
    for key, value in params.items():
        where = f"{param}.sampling_params.{key}"
        if key not in SAMPLING_PARAMS:
            raise GraderError(f"unknown sampling parameter (allowed: {', '.join(SAMPLING_PARAMS)})", where)
        if value is None:
            continue
        wanted = SAMPLING_PARAMS[key]
        if wanted is str:
            if value not in REASONING_EFFORTS:
                raise GraderError(f"must be one of {', '.join(REASONING_EFFORTS)}", where)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float) if wanted is float else int):
            raise GraderError(f"must be {'a number' if wanted is float else 'an integer'}, got {value!r}", where)
    checks = (("max_completions_tokens", lambda v: v >= 1, "must be >= 1"),
              ("temperature", lambda v: 0 <= v <= 2, "must be between 0 and 2"),
              ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"))
    for key, ok, message in checks:
        if params.get(key) is not None and not ok(params[key]):
            raise GraderError(message, f"{param}.sampling_params.{key}")


def _model(spec: dict, param: str) -> None:
    _text(spec, "model", param, template=False)
    if not spec["model"].strip():
        raise GraderError("must name a model", f"{param}.model")
    _messages(spec, param)
    _sampling_params(spec, param)


def _score_model(spec: dict, param: str, python_enabled: bool) -> None:
    _model(spec, param)
    bounds = spec.setdefault("range", [0.0, 1.0])
    if bounds is None:
        bounds = spec["range"] = [0.0, 1.0]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise GraderError("must be [low, high]", f"{param}.range")
    for i in range(2):
        bounds[i] = _number(bounds, i, f"{param}.range")
    if bounds[0] >= bounds[1]:
        raise GraderError(f"low must be below high, got {bounds}", f"{param}.range")


def _label_model(spec: dict, param: str, python_enabled: bool) -> None:
    _model(spec, param)
    for key in ("labels", "passing_labels"):
        labels = spec.get(key)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise GraderError("must be a non-empty list of strings", f"{param}.{key}")
    strangers = [x for x in spec["passing_labels"] if x not in spec["labels"]]
    if strangers:
        raise GraderError(f"{strangers[0]!r} is not one of labels", f"{param}.passing_labels")


def _python(spec: dict, param: str, python_enabled: bool) -> None:
    if not python_enabled:
        raise GraderError(PYTHON_DISABLED, f"{param}.type")
    _text(spec, "source", param, template=False)
    _text(spec, "image_tag", param, template=False, required=False)
    source = spec["source"]
    if len(source.encode()) > MAX_PYTHON_SOURCE:
        raise GraderError(f"is over {MAX_PYTHON_SOURCE // 1024} kB", f"{param}.source")
    try:
        tree = ast.parse(source)  # parsing runs nothing; the code itself runs only in the sandbox
    except SyntaxError as exc:
        raise GraderError(f"is not valid Python (line {exc.lineno}: {exc.msg})", f"{param}.source") from None
    grade = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "grade"]
    if not grade:
        raise GraderError("must define a top-level function grade(sample, item) -> float", f"{param}.source")
    arguments = grade[-1].args
    if len(arguments.posonlyargs) + len(arguments.args) != 2 and not arguments.vararg:
        raise GraderError("grade must take exactly two arguments: grade(sample, item)", f"{param}.source")


def _multi(spec: dict, param: str, python_enabled: bool) -> None:
    graders = spec.get("graders")
    if isinstance(graders, dict) and isinstance(graders.get("type"), str):
        # openai-python's MultiGrader types `graders` as one grader: key it by its name.
        graders = spec["graders"] = {str(graders.get("name") or "grader"): graders}
    if not isinstance(graders, dict) or not graders:
        raise GraderError("must be an object of named graders, e.g. {\"a\": {...}, \"b\": {...}}", f"{param}.graders")
    for name, grader in graders.items():
        where = f"{param}.graders.{name}"
        if not name.isidentifier() or keyword.iskeyword(name):
            raise GraderError("a grader's key must be a plain name (letters, digits, _) to be used in "
                              "calculate_output", where)
        if isinstance(grader, dict) and grader.get("type") == "multi":
            raise GraderError("a multi grader cannot contain another multi grader", f"{where}.type")
        graders[name] = validate_grader(grader, python_enabled=python_enabled, param=where)
    if "calculate_output" not in spec:
        raise GraderError("is required", f"{param}.calculate_output")
    try:
        parse_formula(spec["calculate_output"], set(graders))
    except FormulaError as exc:
        raise GraderError(str(exc), f"{param}.calculate_output") from None


CHECKS = {"string_check": _string_check, "text_similarity": _text_similarity, "score_model": _score_model,
          "label_model": _label_model, "python": _python, "multi": _multi}
