"""tuneforge advise: the break-even arithmetic, the held-out split, nested learning-curve subsets, the fit and
its extrapolation, the decision, and the verb end to end on the tiny random Llama (real SFT recipe)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_compare import ticket_rows
from tuneforge.evaluate.advise import (
    break_even,
    curve_steps,
    decide,
    extrapolate_gain,
    fit_log_linear,
    holdout_split,
    nested_subsets,
    predicted_gain,
)


def test_break_even_against_a_hand_calculation():
    """Training 1800 s at 2.00/hour costs 1800/3600 * 2 = 1.00. Per request: 240 prompt tokens saved at
    0.0005 per 1k = 0.00012; 0.9 s saved at 2.00/hour = 0.9/3600*2 = 0.0005; together 0.00062.
    1.00 / 0.00062 = 1612.9 -> 1613 requests. By time alone 1800 / 0.9 = 2000 requests."""
    result = break_even(train_seconds=1800, prompt_tokens_saved=240, latency_saved_s=0.9, price_per_hour=2.0,
                        price_per_1k_tokens=0.0005)
    assert result["training_cost"] == pytest.approx(1.0)
    assert result["saving_per_request_tokens"] == pytest.approx(0.00012)
    assert result["saving_per_request_time"] == pytest.approx(0.0005)
    assert result["saving_per_request"] == pytest.approx(0.00062)
    assert result["requests"] == 1613
    assert result["requests_by_time"] == 2000


def test_break_even_without_savings_is_never():
    result = break_even(train_seconds=100, prompt_tokens_saved=0, latency_saved_s=0, price_per_hour=1,
                        price_per_1k_tokens=0.001)
    assert result["requests"] is None and result["requests_by_time"] is None
    # Tokens alone: 100 s at 1/hour = 0.027778; 500 tokens at 0.001/1k = 0.0005 -> ceil(55.6) = 56.
    tokens_only = break_even(train_seconds=100, prompt_tokens_saved=500, latency_saved_s=0, price_per_hour=1,
                             price_per_1k_tokens=0.001)
    assert tokens_only["requests"] == 56 and tokens_only["requests_by_time"] is None


def test_learning_curve_subsets_are_nested_and_deterministic_by_seed():
    fractions = (0.125, 0.25, 0.5, 1.0)
    subsets = nested_subsets(80, fractions, seed=3)
    assert [len(s) for s in subsets] == [10, 20, 40, 80]
    for smaller, larger in zip(subsets, subsets[1:], strict=False):
        assert set(smaller) < set(larger)
    assert subsets == nested_subsets(80, fractions, seed=3)
    assert nested_subsets(80, fractions, seed=4)[0] != subsets[0]
    assert subsets[-1] == list(range(80))
    assert [len(s) for s in nested_subsets(5, fractions, seed=0)] == [1, 1, 2, 5]  # never empty


def test_holdout_is_the_validation_split_capped():
    from tuneforge.data.curation import split_validation

    items = list(range(100))
    rest, held = holdout_split(items, 0.2, seed=7)
    assert (rest, held) == split_validation(items, 0.2, 7)
    capped_rest, capped = holdout_split(items, 0.2, seed=7, max_held_out=5)
    assert capped == held[:5] and sorted(capped_rest + capped) == items
    assert holdout_split(items, 0.2, seed=7, max_held_out=5) == (capped_rest, capped)


def test_curve_steps_are_epochs_within_bounds():
    assert curve_steps(40, 8, 1.0, 4, 32) == 5
    assert curve_steps(8, 8, 1.0, 4, 32) == 4
    assert curve_steps(1000, 8, 1.0, 4, 32) == 32


def test_log_linear_fit_and_gain_by_hand():
    """Points (2, 0.2), (4, 0.4), (8, 0.6): x = log2 n = 1, 2, 3, exactly y = 0.2 x, so alpha 0, beta 0.2.
    From 8 to 16 examples (x 3 -> 4): 0.6 -> 0.8, a gain of 0.2; to 64 (x 6): 1.2 is capped at 1, gain 0.4."""
    alpha, beta = fit_log_linear([2, 4, 8], [0.2, 0.4, 0.6])
    assert alpha == pytest.approx(0.0, abs=1e-12) and beta == pytest.approx(0.2)
    assert predicted_gain([2, 4, 8], [0.2, 0.4, 0.6], 16) == pytest.approx(0.2)
    assert predicted_gain([2, 4, 8], [0.2, 0.4, 0.6], 64) == pytest.approx(0.4)


def test_extrapolation_interval_holds_the_estimate():
    # 20 held-out examples: 4, 8, 12 of them right after 10, 20, 40 training examples (nested right answers).
    correct = [[j < k for j in range(20)] for k in (4, 8, 12)]
    ext = extrapolate_gain([10, 20, 40], correct, 80, n_boot=300, seed=1)
    assert ext["gain"] == pytest.approx(0.2)  # +4 of 20 per doubling
    assert ext["gain_low"] <= ext["gain"] <= ext["gain_high"]
    assert ext["from_examples"] == 40 and ext["to_examples"] == 80
    flat = extrapolate_gain([10, 20, 40], [[True] * 20] * 3, 80, n_boot=50)
    assert flat["gain"] == flat["gain_low"] == flat["gain_high"] == 0.0


def test_decision():
    assert decide(0.95, 0.9, None) == "prompting suffices"
    assert decide(0.95, 0.9, 0.99) == "prompting suffices"
    assert decide(0.05, 0.9, None) == "fine-tune"
    assert decide(0.05, 0.9, 0.6) == "fine-tune"
    assert decide(0.50, 0.9, 0.52) == "more data"


def test_advise_cli_on_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    """The verb end to end: held-out split, zero/few-shot measured, the real cost estimate, a learning curve
    of real SFT trainings on nested subsets, advice.json and a readable text."""
    from tuneforge.cli import main
    from tuneforge.evaluate.advise import format_advice

    data = write_jsonl(tmp_path / "train.jsonl", ticket_rows(24))
    out = tmp_path / "advice"
    code = main(["advise", str(data), "--model", str(tiny_model_dir), "--holdout", "0.25", "--max-held-out", "4",
                 "--shots", "1,2", "--learning-curve", "--curve-max-steps", "2", "--batch-size", "4",
                 "--max-new-tokens", "6", "--output", str(out), "--json"])
    assert code == 0
    advice = json.loads(capsys.readouterr().out)
    assert advice["n_held_out"] == 4 and advice["n_rest"] == 20
    assert set(advice["prompting"]) == {"zero_shot", "1_shot", "2_shot"}
    assert advice["prompting"]["2_shot"]["mean_prompt_tokens"] > advice["prompting"]["zero_shot"]["mean_prompt_tokens"]
    assert advice["cost"]["train_seconds"] > 0 and advice["cost"]["peak_memory_mb"] > 0
    assert advice["break_even"] is not None
    curve = advice["learning_curve"]
    assert [p["examples"] for p in curve["points"]] == [2, 5, 10, 20]
    assert all(1 <= p["steps"] <= 2 for p in curve["points"])
    assert curve["extrapolation"]["to_examples"] == 40
    assert advice["decision"] in ("prompting suffices", "fine-tune", "more data")
    assert advice["command"][:2] == ["tuneforge", "advise"]
    saved = json.loads((out / "advice.json").read_text())
    assert saved["summary"] == advice["summary"]
    assert (out / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    text = format_advice(advice)
    assert text.startswith(f"advice: {advice['decision']}") and "break-even" in text and "assumptions:" in text
    assert "more examples would likely add" in text
    # The best prompt: the highest metric, ties to the fewest shots.
    best = advice["prompting"][advice["best_prompting"]]
    assert all(best["metric"] >= v["metric"] for v in advice["prompting"].values())
    assert math.isclose(advice["savings"]["prompt_tokens_saved"],
                        best["mean_prompt_tokens"] - advice["prompting"]["zero_shot"]["mean_prompt_tokens"],
                        abs_tol=0.01)


def test_advise_usage_errors(tmp_path, capsys):
    from tuneforge.cli import main

    assert main(["advise", str(tmp_path / "missing.jsonl")]) == 2
    data = write_jsonl(tmp_path / "train.jsonl", ticket_rows(4))
    assert main(["advise", str(data), "--target", "2"]) == 2
    assert main(["advise", str(data), "--shots", "a,b"]) == 2
    assert "--shots" in capsys.readouterr().err
