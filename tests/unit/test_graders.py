"""Graders: each type against hand-computed values, templates, calculate_output, validation, the python sandbox."""

from __future__ import annotations

import socket
import time

import pytest

from tuneforge.graders import GraderError, run_grader, validate_grader
from tuneforge.graders.formula import FormulaError, evaluate_formula, parse_formula
from tuneforge.graders.sandbox import run_python_grader
from tuneforge.graders.similarity import bleu, fuzzy_match, gleu, lcs_length, meteor, rouge_l, rouge_n
from tuneforge.graders.templates import TemplateError, render, sample_namespace


def string_check(operation, input_="{{ sample.output_text }}", reference="{{ item.reference_answer }}", name="s"):
    return {"type": "string_check", "name": name, "input": input_, "reference": reference, "operation": operation}


@pytest.mark.parametrize(("operation", "answer", "expected"), [
    ("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ne", "Paris", 0.0), ("ne", "Lyon", 1.0),
    ("like", "It is Paris.", 1.0), ("like", "it is paris", 0.0), ("ilike", "it is PARIS", 1.0), ("ilike", "Lyon", 0.0),
])
def test_string_check_operations(operation, answer, expected):
    result = run_grader(string_check(operation), answer, {"reference_answer": "Paris"})
    assert result["reward"] == expected
    assert result["metadata"]["type"] == "string_check" and result["metadata"]["name"] == "s"
    assert not any(result["metadata"]["errors"].values())


def test_templates_reach_nested_item_fields_json_output_and_list_indices():
    sample = sample_namespace('{"city": {"name": "Paris"}, "tags": ["a", "b"]}')
    item = {"answer": {"cities": ["Lyon", "Paris"]}, "n": 2, "flag": True}
    assert render("{{sample.output_json.city.name}}|{{ item.answer.cities[1] }}", sample, item) == "Paris|Paris"
    assert render("{{ sample.output_json.tags[0] }}{{item.n}}{{ item.flag }}", sample, item) == "a2true"
    assert render("{{ item.answer }}", sample, item) == '{"cities": ["Lyon", "Paris"]}'
    assert render("{{ sample.choices[0].message.content }}", sample, item) == sample["output_text"]
    with pytest.raises(TemplateError):
        render("{{ item.missing }}", sample, item)


def test_a_missing_variable_scores_zero_with_the_error_flag():
    result = run_grader(string_check("eq"), "Paris", {"other": 1})
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["invalid_variable_error"]
    not_json = run_grader(string_check("eq", input_="{{ sample.output_json.city }}"), "Paris",
                          {"reference_answer": "Paris"})
    assert not_json["reward"] == 0.0 and not_json["metadata"]["errors"]["sample_parse_error"]


def test_similarity_metrics_by_hand():
    # kitten / sitting: LCS "ittn" = 4 characters, so 2 * 4 / (6 + 7).
    assert fuzzy_match("kitten", "sitting") == pytest.approx(8 / 13)
    assert fuzzy_match("", "") == 1.0
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    # rouge_1: "the cat sat" vs "the cat was sat here": 3 shared unigrams, P = 3/3, R = 3/5, F = 2PR/(P+R) = 0.75.
    assert rouge_n("The cat sat", "the cat was sat here", 1) == pytest.approx(0.75)
    # rouge_2: bigrams (the cat)(cat sat) vs (the cat)(cat was)(was sat)(sat here): 1 shared, P = 1/2, R = 1/4.
    assert rouge_n("the cat sat", "the cat was sat here", 2) == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    # rouge_l: LCS "the cat sat" = 3 tokens, the same P and R as rouge_1.
    assert rouge_l("the cat sat", "the cat was sat here") == pytest.approx(0.75)
    # gleu: n = 1..4 matches 3 + 1 + 0 + 0 = 4 of max(3 + 2 + 1 + 0, 5 + 4 + 3 + 2) = 14.
    assert gleu("the cat sat", "the cat was sat here") == pytest.approx(4 / 14)
    # bleu: identical 4+-token texts have every precision 1 and no brevity penalty; no 4-gram in common gives 0.
    assert bleu("a b c d e", "a b c d e") == pytest.approx(1.0)
    assert bleu("a b c", "a b c") == 0.0
    # bleu: hypothesis "a b c d" vs reference "a b c d e f": precisions all 1, brevity exp(1 - 6/4).
    assert bleu("a b c d", "a b c d e f") == pytest.approx(2.718281828459045 ** (1 - 6 / 4))
    # meteor, one chunk: P = R = 1, penalty 0.5 * (1/4)^3, so 1 - 0.5/64.
    assert meteor("a b c d", "a b c d") == pytest.approx(1 - 0.5 / 64)
    # meteor, "b a" vs "a b": 2 matches in 2 chunks, penalty 0.5 * 1^3 = 0.5.
    assert meteor("b a", "a b") == pytest.approx(0.5)


def test_bleu_and_gleu_agree_with_nltk():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    gleu_score = pytest.importorskip("nltk.translate.gleu_score")
    pairs = [("the quick brown fox jumps over the dog", "the quick brown fox jumped over the lazy dog"),
             ("a b c d e f g", "a b c d x f g h"), ("one two three four five", "one two three four five six")]
    for text, reference in pairs:
        assert bleu(text, reference) == pytest.approx(bleu_score.sentence_bleu([reference.split()], text.split()))
        assert gleu(text, reference) == pytest.approx(gleu_score.sentence_gleu([reference.split()], text.split()))


def test_text_similarity_grader_and_cosine_refused():
    grader = {"type": "text_similarity", "name": "t", "input": "{{ sample.output_text }}",
              "reference": "{{ item.reference_answer }}", "evaluation_metric": "fuzzy_match"}
    assert run_grader(grader, "kitten", {"reference_answer": "sitting"})["reward"] == pytest.approx(8 / 13)
    with pytest.raises(GraderError) as error:
        validate_grader({**grader, "evaluation_metric": "cosine"}, python_enabled=False)
    assert error.value.param == "grader.evaluation_metric" and "embedding" in error.value.message


def score_grader(**overrides):
    return {"type": "score_model", "name": "judge", "model": "judge-model", "range": [0, 10],
            "input": [{"role": "system", "content": "Grade it."},
                      {"role": "user", "content": "Reference: {{ item.reference_answer }}. Answer: {{ sample.output_text }}"}],
            **overrides}


def test_score_model_fills_templates_parses_and_clips_the_score():
    seen = []

    def generate(model, messages, sampling_params):
        seen.append((model, messages, sampling_params))
        return {"text": replies.pop(0), "prompt_tokens": 11, "completion_tokens": 4}

    replies = ['{"result": 7.5, "steps": []}', "I'd say 42", "no idea"]
    item = {"reference_answer": "Paris"}
    first = run_grader(score_grader(sampling_params={"temperature": 0}), "Lyon", item, generate=generate)
    assert first["reward"] == 7.5
    model, messages, params = seen[0]
    assert model == "judge-model" and params == {"temperature": 0}
    assert messages[1] == {"role": "user", "content": "Reference: Paris. Answer: Lyon"}
    assert messages[0]["content"].startswith("Grade it.") and "from 0 to 10" in messages[0]["content"]
    assert first["metadata"]["sampled_model_name"] == "judge-model" and first["metadata"]["token_usage"] == 15
    assert first["model_grader_token_usage_per_model"]["judge-model"]["total_tokens"] == 15
    assert run_grader(score_grader(), "Lyon", item, generate=generate)["reward"] == 10.0  # 42 clipped to the range
    unparsable = run_grader(score_grader(), "Lyon", item, generate=generate)
    assert unparsable["reward"] == 0.0 and unparsable["metadata"]["errors"]["model_grader_parse_error"]


def test_score_model_server_failure_is_reported_not_raised():
    def broken(model, messages, sampling_params):
        raise ConnectionError("judge is down")

    result = run_grader(score_grader(), "x", {"reference_answer": "y"}, generate=broken)
    assert result["reward"] == 0.0
    assert result["metadata"]["errors"]["model_grader_server_error"]
    assert "judge is down" in result["metadata"]["errors"]["model_grader_server_error_details"]


def test_multi_combines_named_scores_with_its_formula():
    grader = {"type": "multi", "name": "both", "calculate_output": "0.25 * exact + 0.75 * close ^ 2",
              "graders": {"exact": string_check("eq"),
                          "close": {"type": "text_similarity", "name": "c", "input": "{{ sample.output_text }}",
                                    "reference": "{{ item.reference_answer }}", "evaluation_metric": "fuzzy_match"}}}
    result = run_grader(grader, "kitten", {"reference_answer": "sitting"})
    assert result["sub_rewards"] == {"exact": 0.0, "close": pytest.approx(8 / 13)}
    assert result["reward"] == pytest.approx(0.75 * (8 / 13) ** 2)
    assert result["metadata"]["scores"] == result["sub_rewards"]


def test_formula_arithmetic_and_functions():
    def value(text, **scores):
        return evaluate_formula(parse_formula(text, set(scores)), scores)

    assert value("(a + b) / 2", a=1, b=0) == 0.5
    assert value("2 ** 3 - 2 ^ 2 * -1", a=0) == 12
    assert value("min(a, b) + max(a, b, 3) + abs(-2) + floor(1.7) + ceil(1.2)", a=1, b=2) == 1 + 3 + 2 + 1 + 2
    assert value("sqrt(a) + log(exp(2)) + log(8, 2)", a=9) == pytest.approx(3 + 2 + 3)
    with pytest.raises(ZeroDivisionError):
        value("a / b", a=1, b=0)


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('true')", "a.__class__", "open('/etc/passwd')", "[a for a in b]", "a if b else 1",
    "lambda: 1", "'text'", "b[0]", "min(*a)", "exp(x=1)", "c + 1", "a < b", "a and b", "sqrt(a, b)", "2 ** 1000",
])
def test_formula_refuses_anything_but_arithmetic(hostile):
    with pytest.raises((FormulaError, ValueError)):
        evaluate_formula(parse_formula(hostile, {"a", "b"}), {"a": 1.0, "b": 2.0})


def test_a_failing_formula_scores_zero_with_the_error_flag():
    grader = {"type": "multi", "name": "m", "calculate_output": "1 / (a - a)", "graders": {"a": string_check("eq")}}
    result = run_grader(grader, "Paris", {"reference_answer": "Paris"})
    assert result["reward"] == 0.0 and result["metadata"]["errors"]["formula_parse_error"]


@pytest.mark.parametrize(("grader", "param", "words"), [
    ([], "grader", "grader object"),
    ({"type": "regex", "name": "r"}, "grader.type", "unknown grader type"),
    ({**string_check("eq"), "colour": 1}, "grader.colour", "unknown field"),
    ({**string_check("eq"), "name": 3}, "grader.name", "string"),
    (string_check("contains"), "grader.operation", "eq, ne, like, ilike"),
    (string_check("eq", input_="{{ output_text }}"), "grader.input", "item. or sample."),
    (string_check("eq", reference="{{ item.a "), "grader.reference", "unclosed"),
    ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": string_check("like", name="a") | {"operation": "is"}}},
     "grader.graders.a.operation", "eq, ne"),
    ({"type": "multi", "name": "m", "calculate_output": "a + z", "graders": {"a": string_check("eq")}},
     "grader.calculate_output", "'z'"),
    ({"type": "multi", "name": "m", "calculate_output": "x",
      "graders": {"x": {"type": "multi", "name": "n", "calculate_output": "1", "graders": {}}}},
     "grader.graders.x.type", "another multi"),
    ({"type": "multi", "name": "m", "calculate_output": "1", "graders": {"not-a-name": string_check("eq")}},
     "grader.graders.not-a-name", "plain name"),
    (score_grader(range=[1, 0]), "grader.range", "below"),
    (score_grader(sampling_params={"temperature": "hot"}), "grader.sampling_params.temperature", "number"),
    (score_grader(sampling_params={"beam": 2}), "grader.sampling_params.beam", "unknown sampling"),
    (score_grader(input=[{"role": "critic", "content": "x"}]), "grader.input.0.role", "user"),
    (score_grader(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
     "grader.input.0.content.0", "text only"),
    ({"type": "python", "name": "p", "source": "def grade(sample, item): return 1.0"}, "grader.type",
     "TUNEFORGE_PYTHON_GRADERS=1"),
])
def test_validation_names_the_field_at_fault(grader, param, words):
    with pytest.raises(GraderError) as error:
        validate_grader(grader, python_enabled=False)
    assert error.value.param == param
    assert words in error.value.message


def test_validation_normalises_defaults_and_keeps_the_caller_spec():
    spec = score_grader()
    del spec["range"]
    normalised = validate_grader(spec, python_enabled=False)
    assert normalised["range"] == [0.0, 1.0] and normalised["sampling_params"] == {}
    assert "range" not in spec
    text_parts = score_grader(input=[{"role": "user", "content": [{"type": "input_text", "text": "{{ item.q }}"}]}])
    assert validate_grader(text_parts, python_enabled=False)["input"][0]["content"] == "{{ item.q }}"


@pytest.mark.parametrize(("source", "words"), [
    ("def grade(sample, item) return 1", "not valid Python"),
    ("def score(sample, item):\n    return 1.0", "grade(sample, item)"),
    ("def grade(sample):\n    return 1.0", "exactly two arguments"),
])
def test_python_grader_source_is_checked_without_running_it(source, words):
    with pytest.raises(GraderError) as error:
        validate_grader({"type": "python", "name": "p", "source": source}, python_enabled=True)
    assert error.value.param == "grader.source" and words in error.value.message


def python_grader(source):
    return {"type": "python", "name": "py", "source": source}


def test_python_grader_scores_in_a_subprocess_with_an_empty_environment():
    source = ("import os\n"
              "def grade(sample, item):\n"
              "    assert 'HOME' not in os.environ and 'PATH' not in os.environ\n"
              "    print('noise that must not reach the result')\n"
              "    return len(sample['output_text']) / len(item['reference_answer'])\n")
    result = run_grader(python_grader(source), "abc", {"reference_answer": "abcdef"}, python_enabled=True)
    assert result["reward"] == 0.5 and not any(result["metadata"]["errors"].values())


def test_python_grader_errors_score_zero_with_details():
    result = run_grader(python_grader("def grade(sample, item):\n    raise KeyError('nope')"), "x", {},
                        python_enabled=True)
    errors = result["metadata"]["errors"]
    assert result["reward"] == 0.0 and errors["python_grader_runtime_error"]
    assert "KeyError" in errors["python_grader_runtime_error_details"]


def test_python_grader_refused_unless_enabled():
    with pytest.raises(GraderError) as error:
        run_grader(python_grader("def grade(sample, item):\n    return 1.0"), "x", {})
    assert "disabled" in error.value.message


def test_python_grader_cannot_reach_the_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    source = ("import socket\n"
              "def grade(sample, item):\n"
              f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
              "    return 1.0\n")
    outcome = run_python_grader(source, {}, {}, timeout=10)
    assert outcome.score is None and outcome.kind == "runtime"
    assert "unreachable" in outcome.error.lower() or "refused" in outcome.error.lower()
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever connected
    listener.close()


def test_python_grader_infinite_loop_is_killed_at_the_timeout():
    started = time.monotonic()
    outcome = run_python_grader("def grade(sample, item):\n    while True:\n        pass\n", {}, {}, timeout=1.5)
    assert outcome.score is None and outcome.kind == "server" and "limit" in outcome.error
    assert time.monotonic() - started < 10


def test_python_grader_memory_is_capped():
    outcome = run_python_grader("def grade(sample, item):\n    block = bytearray(1024 ** 3)\n    return 1.0\n",
                                {}, {}, memory_bytes=512 * 1024**2)
    assert outcome.score is None and "MemoryError" in outcome.error
