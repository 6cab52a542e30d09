"""Answer-level metrics: exact match and JSON validity. Pure functions, tested on hand-made cases."""

from __future__ import annotations

import json


def normalise_answer(text: str) -> str:
    return text.strip()


def exact_match(prediction: str, reference: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(reference)


def parse_json(text: str):
    """The JSON value in `text`, or raise ValueError (a bare number or string counts as JSON only if quoted)."""
    return json.loads(text.strip())


def is_json_object_or_array(text: str) -> bool:
    try:
        return isinstance(parse_json(text), (dict, list))
    except ValueError:
        return False


def references_are_json(references: list[str]) -> bool:
    return bool(references) and all(is_json_object_or_array(r) for r in references)


def json_equal(prediction: str, reference: str) -> bool:
    try:
        return parse_json(prediction) == parse_json(reference)
    except ValueError:
        return False


def score(predictions: list[str], references: list[str]) -> dict:
    n = len(references)
    result = {
        "n": n,
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n if n else 0.0,
    }
    if references_are_json(references):
        result["json_valid"] = sum(is_json_object_or_array(p) for p in predictions) / n
        result["json_match"] = sum(json_equal(p, r) for p, r in zip(predictions, references, strict=True)) / n
    return result
