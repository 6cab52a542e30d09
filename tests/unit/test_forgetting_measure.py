"""The broad forgetting measurement: the bundled question files, per-category and instruction-following scores on
hand-made answers, the max_general_drop gate, and how compare shows them.

    .venv/bin/python -m pytest tests/unit/test_forgetting_measure.py
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from tests.conftest import base_and_perturbed, write_jsonl
from tuneforge.evaluate.forgetting import (
    answers_correctly,
    forgetting_gate,
    general_scores,
    instruction_scores,
    load_general_accepts,
    load_general_categories,
    load_general_questions,
    load_instruction_checks,
    measure_forgetting,
)

MIN_PER_CATEGORY = 15


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def test_general_questions_load_with_a_category_and_an_accept_list_each():
    questions, accepts, categories = load_general_questions(), load_general_accepts(), load_general_categories()
    assert 300 <= len(questions) == len(accepts) == len(categories)
    for messages, accept, category in zip(questions, accepts, categories, strict=True):
        assert messages[-1]["role"] == "user" and messages[-1]["content"].strip()
        assert isinstance(category, str) and category, messages
        assert accept and all(isinstance(a, str) and a.strip() for a in accept), messages
    counts = Counter(categories)
    assert len(counts) >= 10, counts
    assert min(counts.values()) >= MIN_PER_CATEGORY, counts


def test_the_original_twenty_questions_are_kept_first():
    firsts = [m[-1]["content"] for m in load_general_questions()[:20]]
    assert firsts[0] == "What is the capital of France?" and firsts[-1] == "List three fruits."
    assert "Write one sentence about the ocean." in firsts


def test_no_question_is_asked_twice_in_either_file():
    texts = [m[-1]["content"] for m in load_general_questions()]
    texts += [row["messages"][-1]["content"] for row in load_instruction_checks()]
    repeated = [t for t, n in Counter(normalise(t) for t in texts).items() if n > 1]
    assert not repeated


def test_no_question_contains_its_own_answer():
    """A model that only restates the question must not be counted right."""
    leaks = [
        (m[-1]["content"], accept)
        for m, accept in zip(load_general_questions(), load_general_accepts(), strict=True)
        if answers_correctly(m[-1]["content"], accept)
    ]
    assert not leaks


def test_each_first_accepted_answer_is_right_and_a_refusal_is_wrong_in_every_category():
    """Answer every bundled question with its first accepted word (right) or with a refusal (wrong): each
    category scores 100% and 0%, so the drop is 100 points everywhere and the overall numbers agree."""
    questions, accepts, categories = load_general_questions(), load_general_accepts(), load_general_categories()
    right = [f"I think it is {accept[0]}." for accept in accepts]
    refusal = ["I'm sorry, I don't know that."] * len(questions)
    result = general_scores(questions, right, refusal, accepts, categories)
    assert result["n_checked_questions"] == len(questions) and result["answer_agreement"] == 0.0
    assert result["base_general_correct"] == 1.0 and result["tuned_general_correct"] == 0.0
    assert result["general_drop_points"] == 100.0
    assert set(result["categories"]) == set(categories)
    for name, scores in result["categories"].items():
        assert scores == {"n": categories.count(name), "base_correct": 1.0, "tuned_correct": 0.0}


def test_per_category_shares_on_hand_made_answers():
    """Category a: base right twice, fine-tuned right once -> 1.0 vs 0.5. Category b: 1.0 vs 0.0. Overall
    3/3 vs 1/3: drop = 100 x (1 - 1/3) = 66.7 points. One answer of three is the same: agreement 1/3."""
    questions = [[{"role": "user", "content": q}] for q in ("Capital of France?", "Days in a week?", "12 x 7?")]
    accepts = [["Paris"], ["7", "seven"], ["84"]]
    base = ["Paris.", "There are seven days.", "It is 84."]
    tuned = ["Paris.", "A week has 5 days.", "It is 72, or B84313."]
    result = general_scores(questions, base, tuned, accepts, ["a", "a", "b"])
    assert result["answer_agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["base_general_correct"] == 1.0 and result["tuned_general_correct"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["general_drop_points"] == 66.7
    assert result["categories"] == {
        "a": {"n": 2, "base_correct": 1.0, "tuned_correct": 0.5},
        "b": {"n": 1, "base_correct": 1.0, "tuned_correct": 0.0},
    }
    assert [e["category"] for e in result["answers"]] == ["a", "a", "b"]
    assert [e["fine_tuned_correct"] for e in result["answers"]] == [True, False, False]


def test_instruction_checks_are_well_formed_for_the_ifeval_checkers():
    """Every id is one the library knows, and every argument its checker takes is given (a missing one
    would be drawn at random by the checker, making the score change from run to run)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    checks = load_instruction_checks()
    assert 60 <= len(checks) <= 100
    for row in checks:
        assert row["category"] == "instructions" and row["messages"][-1]["role"] == "user"
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        assert ids and len(ids) == len(kwargs), row
        for instruction, arguments in zip(ids, kwargs, strict=True):
            assert instruction in INSTRUCTION_DICT, instruction
            checker = INSTRUCTION_DICT[instruction](instruction)
            checker.build_description(**arguments)
            assert set(checker.get_instruction_args_keys()) <= set(arguments), (instruction, arguments)
    assert len({i for row in checks for i in row["instruction_id_list"]}) >= 15


def test_every_bundled_instruction_check_scores_offline():
    """No checker used needs data the library would download (nltk's punkt): scoring every prompt runs."""
    checks = load_instruction_checks()
    result = instruction_scores(checks, ["a plain answer."] * len(checks), [""] * len(checks))
    assert result["n"] == len(checks) and result["tuned_strict"] == 0.0  # an empty answer follows nothing
    assert 0.0 < result["base_strict"] < 1.0


def test_instruction_scores_on_hand_made_answers():
    """Prompt 1 (lowercase): base follows, fine-tuned breaks it. Prompt 2 (no commas and < 5 words): both keep
    the word limit, the fine-tuned one uses a comma, so it fails the prompt. Base 2/2, fine-tuned 0/2 -> 100 points;
    per instruction: lowercase 1 vs 0, no_comma 1 vs 0, number_words 1 vs 1."""
    checks = [
        {"messages": [{"role": "user", "content": "Answer in lowercase."}],
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"messages": [{"role": "user", "content": "No commas, fewer than 5 words."}],
         "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
         "kwargs": [{}, {"num_words": 5, "relation": "less than"}]},
    ]
    base = ["the weather is sunny and warm today in the whole town.", "short and plain"]
    tuned = ["The Weather Is Sunny And Warm Today.", "short, plain"]
    result = instruction_scores(checks, base, tuned)
    assert (result["n"], result["base_strict"], result["tuned_strict"], result["drop_points"]) == (2, 1.0, 0.0, 100.0)
    assert result["by_instruction"] == {
        "change_case:english_lowercase": {"n": 1, "base_strict": 1.0, "tuned_strict": 0.0},
        "length_constraints:number_words": {"n": 1, "base_strict": 1.0, "tuned_strict": 1.0},
        "punctuation:no_comma": {"n": 1, "base_strict": 1.0, "tuned_strict": 0.0},
    }
    assert [a["fine_tuned_strict"] for a in result["answers"]] == [False, False]


def test_a_bundled_prompt_is_scored_by_its_own_constraint():
    row = next(r for r in load_instruction_checks() if r["instruction_id_list"] == ["detectable_format:number_bullet_lists"])
    n = row["kwargs"][0]["num_bullets"]
    right = "\n".join(f"* point {i}" for i in range(n))
    wrong = "\n".join(f"* point {i}" for i in range(n + 1))
    assert instruction_scores([row], [right], [wrong])["by_instruction"] == {
        "detectable_format:number_bullet_lists": {"n": 1, "base_strict": 1.0, "tuned_strict": 0.0}
    }


def test_an_unknown_instruction_id_is_refused_not_skipped():
    check = {"messages": [{"role": "user", "content": "x"}], "instruction_id_list": ["made:up"], "kwargs": [{}]}
    with pytest.raises(ValueError, match="made:up"):
        instruction_scores([check], ["a"], ["a"])


@pytest.mark.parametrize(
    ("max_forgetting", "max_general_drop", "passed"),
    [(None, None, None), (None, 5.0, True), (None, 4.0, True), (None, 3.9, False), (2.0, 5.0, True),
     (0.5, 5.0, False), (2.0, None, True)],
)
def test_the_gate_combines_perplexity_and_general_drop(max_forgetting, max_general_drop, passed):
    result = {"perplexity_change_pct": 1.0, "general_drop_points": 4.0}
    assert forgetting_gate(result, max_forgetting, max_general_drop) is passed


def test_a_drop_gate_without_checkable_questions_is_an_error():
    with pytest.raises(ValueError, match="accept"):
        forgetting_gate({"perplexity_change_pct": 0.0}, None, 1.0)


@pytest.fixture(scope="module")
def tiny_pair(tiny_model_dir):
    return base_and_perturbed(tiny_model_dir, 0.5, generator=torch.Generator().manual_seed(3))


def test_max_general_drop_flips_passed(tiny_pair):
    """Accept lists made from words only the base says: the base is right on every question, the fine-tuned
    model on none (a 100-point drop), so a 100-point gate passes and a 50-point gate fails; the same model
    against itself drops 0 points and passes a 0-point gate."""
    from tuneforge.evaluate.forgetting import _greedy_answers

    base, other, tokenizer = tiny_pair
    questions = [[{"role": "user", "content": q}] for q in ("what is the answer", "hello please", "name order")]
    base_answers = _greedy_answers(base, tokenizer, questions, 12, 32)
    tuned_answers = _greedy_answers(other, tokenizer, questions, 12, 32)
    accepts = []
    for a, b in zip(base_answers, tuned_answers, strict=True):
        only_base = [w for w in a.split() if w.isalpha() and not answers_correctly(b, [w])]
        if not only_base:
            pytest.skip("the perturbed model repeats every word of the base here")
        accepts.append(only_base[:1])
    options = dict(n_windows=2, window=8, questions=questions, accepts=accepts, categories=["x", "x", "y"],
                   instruction_checks=[], max_new_tokens=12)
    loose = measure_forgetting(base, other, tokenizer, max_general_drop=100.0, **options)
    assert loose["general_drop_points"] == 100.0 and loose["passed"] is True
    assert loose["max_general_drop_points"] == 100.0 and loose["max_forgetting_pct"] is None
    assert loose["categories"]["x"] == {"n": 2, "base_correct": 1.0, "tuned_correct": 0.0}
    strict = measure_forgetting(base, other, tokenizer, max_general_drop=50.0, **options)
    assert strict["passed"] is False
    same = measure_forgetting(base, base, tokenizer, max_general_drop=0.0, **options)
    assert same["general_drop_points"] == 0.0 and same["passed"] is True


def test_instruction_following_is_measured_with_its_own_token_budget(tiny_pair, monkeypatch):
    """The instruction prompts get `instruction_max_new_tokens` (room for "at least 50 words"), the
    general questions `max_new_tokens`."""
    import tuneforge.evaluate.forgetting as forgetting

    budgets = []
    real = forgetting._greedy_answers

    def recording(model, tokenizer, prompts, max_new_tokens, batch_size):
        budgets.append((len(prompts), max_new_tokens))
        return real(model, tokenizer, prompts, max_new_tokens, batch_size)

    monkeypatch.setattr(forgetting, "_greedy_answers", recording)
    base, other, tokenizer = tiny_pair
    checks = load_instruction_checks()[:3]
    questions = [[{"role": "user", "content": "what is the answer"}]]
    result = measure_forgetting(base, other, tokenizer, n_windows=2, window=8, questions=questions,
                                instruction_checks=checks, max_new_tokens=6, instruction_max_new_tokens=20)
    assert budgets == [(1, 6), (1, 6), (3, 20), (3, 20)]
    assert result["instruction_following"]["n"] == 3 and set(result["seconds"]) == {
        "text", "general_questions", "instructions"}


def forgetting_report(guard: dict | None = None) -> dict:
    return {
        "variants": {
            "zero_shot": {"exact_match": 0.1, "mean_prompt_tokens": 30.0, "batch_seconds_per_answer": 0.2},
            "fine_tuned": {"exact_match": 0.9, "mean_prompt_tokens": 30.0, "batch_seconds_per_answer": 0.2},
        },
        "forgetting": {
            "perplexity_change_pct": 1.8, "answer_agreement": 0.5, "n_checked_questions": 20,
            "base_general_correct": 0.8, "tuned_general_correct": 0.7, "general_drop_points": 10.0,
            "categories": {"arithmetic": {"n": 10, "base_correct": 0.5, "tuned_correct": 0.3},
                           "geography": {"n": 10, "base_correct": 1.0, "tuned_correct": 1.0}},
            "instruction_following": {"n": 10, "base_strict": 0.3, "tuned_strict": 0.2,
                                      "by_instruction": {"punctuation:no_comma": {"n": 10, "base_strict": 0.3,
                                                                                  "tuned_strict": 0.2}}},
            "max_forgetting_pct": 5.0, "max_general_drop_points": 5.0, "passed": False,
        },
        "forgetting_guard": guard,
    }


def test_verdict_names_the_drop_instructions_both_gates_and_the_guard():
    from tuneforge.evaluate.compare import verdict

    line = verdict(forgetting_report({"method": "kl", "seconds": 57.9, "cache": "hit"}))
    assert "general questions 80% -> 70% correct (-10.0 points)" in line
    assert "instructions followed 30% -> 20%" in line
    assert "(within 5% gate, FAILS 5-point drop gate)" in line
    assert line.endswith("; guard kl, 58 s")
    assert verdict(forgetting_report({"method": "off"})).endswith("; guard off")
    assert "guard" not in verdict(forgetting_report(None))
    unchanged = forgetting_report(None)
    unchanged["forgetting"].update(tuned_general_correct=0.8, general_drop_points=0.0)
    assert "80% -> 80% correct (+0.0 points)" in verdict(unchanged)


def test_the_guard_is_read_from_the_adapters_summary(tmp_path):
    from tuneforge.evaluate.compare import read_forgetting_guard

    assert read_forgetting_guard(tmp_path) is None  # no summary.json
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 3}))
    assert read_forgetting_guard(tmp_path) is None
    (tmp_path / "summary.json").write_text("{not json")
    assert read_forgetting_guard(tmp_path) is None
    guard = {"method": "kl", "seconds": 57.9, "cache": "hit"}
    (tmp_path / "summary.json").write_text(json.dumps({"forgetting_guard": guard}))
    assert read_forgetting_guard(tmp_path) == guard


def test_html_report_has_the_category_table_instruction_line_and_guard():
    from tuneforge.evaluate.report import render_html

    report = forgetting_report({"method": "kl", "seconds": 57.9, "cache": "hit"})
    report.update(data="t.jsonl", adapter="a", base_model="b", n=1, shots=0, passed=False, verdict="v")
    report["variants"]["fine_tuned"]["examples"] = []
    page = render_html(report, {})
    table = page[page.index('<table id="categories">') :]
    table = table[: table.index("</table>")]
    assert "<td>arithmetic</td><td>10</td><td>50.0%</td><td>30.0%</td><td class=\"worse\">-20.0</td>" in table
    assert "<td>geography</td><td>10</td><td>100.0%</td><td>100.0%</td><td>+0.0</td>" in table
    assert "<th>all</th><th>20</th><th>80.0%</th><th>70.0%</th><th>-10.0</th>" in table
    assert "base 30.0% → fine-tuned 20.0%" in page and "punctuation:no_comma" in page
    assert "During training: guard kl, 58 s (cache hit)." in page


def test_compare_refuses_a_drop_gate_without_the_measurement(tmp_path, tiny_model_dir):
    from tuneforge.cli import main

    test = write_jsonl(tmp_path / "test.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                              {"role": "assistant", "content": "hello"}]}])
    argv = ["compare", "--data", str(test), "--adapter", str(tiny_model_dir), "--no-forgetting",
            "--max-general-drop", "2"]
    assert main(argv) == 2
