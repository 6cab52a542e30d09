"""Consistency and style: agreement and spread arithmetic, rule-based paraphrases, the user's style checks (a
Python predicate in its own process), sampling agreement of 1 for a deterministic model, compare --consistency."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_compare import ticket_rows
from tuneforge.errors import UserError
from tuneforge.evaluate.consistency import (
    TRANSFORMS,
    length_spread,
    load_paraphrases,
    make_paraphrases,
    measure_consistency,
    paraphrase,
    sample_agreement,
    style_check,
)


def test_sample_agreement_and_length_spread_by_hand():
    """Input 1: 3 of 4 samples are "a" -> 0.75; input 2: all "b" (whitespace stripped) -> 1.0; mean 0.875.
    Lengths [2, 2, 4, 4]: mean 3, population std 1; [5, 5, 5, 5]: 0; mean 0.5."""
    assert sample_agreement([["a", "a", "a", "c"], ["b", " b", "b\n", "b"]]) == pytest.approx(0.875)
    assert sample_agreement([["x"]]) == 1.0
    assert length_spread([[2, 2, 4, 4], [5, 5, 5, 5]]) == pytest.approx(0.5)


def test_paraphrases_are_deterministic_and_keep_content_words():
    text = "Hello, Order B86313 has not arrived and I need help. Best, Jessica Smith"
    first = [paraphrase(text, random.Random(5)) for _ in range(3)]
    assert first == [paraphrase(text, random.Random(5)) for _ in range(3)]
    for name in TRANSFORMS:
        changed = TRANSFORMS[name](text, random.Random(1))
        assert changed != text, name
        for word in ("B86313", "Jessica", "Smith"):
            assert word in changed, (name, changed)
    out, used = paraphrase(text, random.Random(2))
    assert out != text and len(used) == 2 and len(set(used)) == 2


def test_make_paraphrases_replaces_only_the_last_user_turn(tmp_path):
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "what is a. please help"}]
    groups = make_paraphrases([prompt], 3, seed=0)
    assert len(groups[0]) == 3
    for variant in groups[0]:
        assert variant[0] == prompt[0] and variant[1]["role"] == "user" and variant[1]["content"] != prompt[1]["content"]
    given = tmp_path / "para.jsonl"
    write_jsonl(given, [{"input": "what is a. please help", "paraphrases": ["what's a?"]}])
    own = make_paraphrases([prompt, [{"role": "user", "content": "other"}]], 3, given=load_paraphrases(given))
    assert [[v[-1]["content"] for v in g] for g in own] == [["what's a?"], []]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "x"}])
    with pytest.raises(UserError, match="paraphrases"):
        load_paraphrases(bad)


def test_style_checks_regex_schema_and_python_in_its_own_process(tmp_path):
    assert style_check() is None
    assert style_check(regex=r"^[^!]*$").check_all(["calm.", "loud!"]) == [True, False]
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    assert style_check(schema=str(schema)).check_all(['{"name": 1}', "{}", "no"]) == [True, False, False]
    checker = tmp_path / "polite.py"
    checker.write_text("import os\nPID = os.getpid()\n\ndef check(answer):\n"
                       "    if answer == 'boom':\n        raise ValueError('x')\n"
                       "    return answer.startswith('Dear') and PID != int(os.environ['PARENT_PID'])\n")
    import os

    os.environ["PARENT_PID"] = str(os.getpid())
    try:
        assert style_check(python=str(checker)).check_all(["Dear you", "hey", "boom"]) == [True, False, False]
    finally:
        del os.environ["PARENT_PID"]
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('no check here')\n")
    with pytest.raises(UserError, match="style check failed"):
        style_check(python=str(broken)).check_all(["x"])
    with pytest.raises(UserError, match="one of"):
        style_check(regex="a", python=str(checker))


def _prompts(n=3):
    return [[{"role": "user", "content": f"what is {'abc'[i]}"}] for i in range(n)]


def test_sampling_agreement_is_1_for_a_deterministic_model(tiny_model_dir):
    """Greedy decoding (temperature 0) and a model whose next-token distribution is one-hot (its final norm
    scaled by 1e4, so every logit gap is 1e4 times larger) both answer the same every time: agreement 1,
    one distinct answer, no spread in length. The same model unscaled at a high temperature does vary."""
    import torch

    from tuneforge.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir), dtype=torch.float32)
    prompts, references, tools = _prompts(), ["a", "b", "c"], [None] * 3
    greedy = measure_consistency(model, tokenizer, prompts, references, tools, n_samples=4, temperature=0.0,
                                 max_new_tokens=6)
    assert greedy["sample_agreement"] == 1.0 and greedy["distinct_answers"] == 1.0
    assert greedy["answer_tokens_spread"] == 0.0
    varied = measure_consistency(model, tokenizer, prompts, references, tools, n_samples=4, temperature=50.0,
                                 max_new_tokens=6, seed=1)
    assert varied["sample_agreement"] < 1.0
    with torch.no_grad():
        model.model.norm.weight.mul_(1e4)
    peaked = measure_consistency(model, tokenizer, prompts, references, tools, n_samples=4, temperature=1.0,
                                 max_new_tokens=6, seed=1, paraphrased=make_paraphrases(prompts, 2, 0),
                                 style=style_check(regex="."), checker=("any", lambda text: True))
    assert peaked["sample_agreement"] == 1.0 and peaked["answer_tokens_spread"] == 0.0
    assert peaked["format_valid_sampled"] == 1.0 and peaked["style_pass_sampled"] in (0.0, 1.0)
    assert peaked["paraphrase"]["n"] == 6 and 0.0 <= peaked["paraphrase"]["agreement"] <= 1.0


def test_compare_with_consistency_reports_and_renders(tmp_path, tiny_model_dir):
    from tuneforge.evaluate.compare import compare
    from tuneforge.evaluate.consistency import style_check
    from tuneforge.evaluate.report import write_report

    test = write_jsonl(tmp_path / "test.jsonl", ticket_rows(3, offset=2))
    train = write_jsonl(tmp_path / "train.jsonl", ticket_rows(6))
    report = compare(str(test), str(tiny_model_dir), model=str(tiny_model_dir), shots=1, shots_from=str(train),
                     max_new_tokens=6, latency_samples=1, forgetting=False, batch_size=4, consistency=3,
                     temperature=0.0, paraphrases=1, style=style_check(regex=r"\S"))
    consistency = report["consistency"]
    assert set(consistency) == {"inputs", "paraphrase_source", "few_shot", "fine_tuned"}
    # Same weights as the base, greedy: both agree with themselves, and the fine-tune with its greedy answers.
    assert consistency["few_shot"]["sample_agreement"] == consistency["fine_tuned"]["sample_agreement"] == 1.0
    assert consistency["fine_tuned"]["style"].startswith("regex")
    assert "consistency: 3 samples at T=0 agree 100% (few-shot) vs 100% (fine-tuned)" in report["verdict"]
    assert report["command"][:2] == ["tuneforge", "compare"] and "--consistency" in report["command"]
    assert "--style-regex" in report["command"]
    page = write_report(report, tmp_path / "report")["html"].read_text()
    assert "id='consistency'" in page and "agreement across samples" in page
