"""Forgetting measures: perplexity and KL on hand-checkable cases, zero drift for identical models, corpus splits."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import base_and_perturbed
from tuneforge.evaluate.forgetting import (
    AdapterDisabled,
    general_corpus,
    kl_sum,
    load_general_accepts,
    load_general_questions,
    load_instruction_checks,
    measure_forgetting,
    nll_sum,
    perplexity,
    text_drift,
    token_windows,
)


def test_uniform_logits_have_perplexity_equal_to_vocab_size():
    """Uniform p = 1/V at every position: NLL per token = log V, so perplexity = exp(log V) = V."""
    logits = torch.zeros(5, 7)
    targets = torch.tensor([0, 3, 6, 2, 1])
    assert perplexity(nll_sum(logits, targets), 5) == pytest.approx(7.0)


def test_perplexity_hand_computed():
    """Two positions, vocab 2. Logits [ln 3, 0] give p = (3/4, 1/4); logits [0, 0] give (1/2, 1/2).

    Targets 0 then 1: NLL = -ln(3/4) - ln(1/2) = ln(8/3); perplexity = exp(NLL / 2) = sqrt(8/3).
    """
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1])
    assert nll_sum(logits, targets) == pytest.approx(math.log(8 / 3))
    assert perplexity(nll_sum(logits, targets), 2) == pytest.approx(math.sqrt(8 / 3))


def test_kl_hand_computed_and_nonnegative():
    """p = (3/4, 1/4), q = (1/2, 1/2): KL(p||q) = 3/4 ln(3/2) + 1/4 ln(1/2), checked against torch's kl_div."""
    p_logits = torch.tensor([[math.log(3.0), 0.0]])
    q_logits = torch.tensor([[0.0, 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_sum(p_logits, q_logits) == pytest.approx(expected)
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(q_logits, -1), torch.log_softmax(p_logits, -1), log_target=True, reduction="sum"
    )
    assert kl_sum(p_logits, q_logits) == pytest.approx(float(reference))
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 11, generator=generator), torch.randn(50, 11, generator=generator)
    assert kl_sum(a, b) >= 0 and kl_sum(a, a) == pytest.approx(0.0, abs=1e-6)


def test_corpus_splits_are_disjoint_and_fixed():
    evaluation, replay = general_corpus("eval"), general_corpus("replay")
    assert evaluation["texts"] and replay["texts"]
    assert not set(evaluation["texts"]) & set(replay["texts"])
    assert general_corpus("eval")["sha256"] == evaluation["sha256"]
    assert sum(len(t) for t in evaluation["texts"]) > 100_000  # real prose, not a toy


def test_token_windows_are_evenly_spaced_and_full(tiny_tokenizer):
    words = " ".join(["a b c d e f g h"] * 40)
    windows = token_windows(tiny_tokenizer, [words], n_windows=4, window=16)
    assert len(windows) == 4 and all(len(w) == 16 for w in windows)
    ids = tiny_tokenizer(words, add_special_tokens=False)["input_ids"]
    assert windows[0] == ids[:16] and windows[-1] == ids[-16:]


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir):
    return base_and_perturbed(tiny_model_dir, 0.05)


def test_identical_models_show_no_drift(tiny_models):
    base, _, tokenizer = tiny_models
    result = measure_forgetting(base, base, tokenizer, n_windows=3, window=12, max_forgetting=0.0)
    assert result["perplexity_change_pct"] == pytest.approx(0.0, abs=1e-9)
    assert result["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["answer_agreement"] == 1.0 and result["n_questions"] == len(load_general_questions())
    assert result["passed"] is True and result["n_tokens"] == 3 * 11
    # The same model is as right (or wrong) as itself on every checkable general question, in every category,
    # and follows the same instructions.
    assert result["n_checked_questions"] == sum(a is not None for a in load_general_accepts())
    assert result["base_general_correct"] == result["tuned_general_correct"] and result["general_drop_points"] == 0
    assert all(c["base_correct"] == c["tuned_correct"] for c in result["categories"].values())
    following = result["instruction_following"]
    assert following["n"] == len(load_instruction_checks()) and following["base_strict"] == following["tuned_strict"]


@pytest.mark.parametrize(
    ("answer", "accept", "correct"),
    [
        ("12 times 7 is 84.", ["84"], True),
        ('{"order_id":"B84313"}', ["84"], False),  # inside another token: not an answer
        ("The capital of France is PARIS", ["Paris"], True),
        ("Buenos días!", ["buenos días", "buenos dias"], True),
        ("It is H₂O.", ["H2O", "H₂O"], True),
        ("hotel", ["hot"], False),
        ("", ["7"], False),
    ],
)
def test_general_answers_are_checked_by_whole_words(answer, accept, correct):
    from tuneforge.evaluate.forgetting import answers_correctly

    assert answers_correctly(answer, accept) is correct


def test_text_drift_matches_a_direct_computation(tiny_models):
    """Perplexity from one full forward pass with F.cross_entropy, computed independently here."""
    base, other, _ = tiny_models
    windows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]
    result = text_drift(base, other, windows)
    with torch.no_grad():
        logits = base(input_ids=torch.tensor(windows)).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.tensor(windows)[:, 1:].reshape(-1)
        )
    assert result["base_perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert result["mean_kl"] > 0
    assert result["perplexity_change_pct"] == pytest.approx(
        100 * (result["tuned_perplexity"] / result["base_perplexity"] - 1), abs=1e-2
    )


def test_adapter_disabled_is_the_base(tiny_model_dir):
    """A PEFT model with a non-zero LoRA: with the adapter disabled it computes exactly the base logits."""
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_model

    base, _ = load_model(str(tiny_model_dir))
    wrapped, _ = load_model(str(tiny_model_dir))
    peft_model = get_peft_model(wrapped, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        assert not torch.allclose(peft_model(input_ids=ids).logits, expected)
        assert torch.allclose(AdapterDisabled(peft_model)(input_ids=ids).logits, expected, atol=1e-6)
