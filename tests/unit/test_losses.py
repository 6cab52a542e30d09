"""Fused linear + cross-entropy against the plain formula (value and gradients)."""

from __future__ import annotations

import math

import torch

from tuneforge.losses import (
    linear_cross_entropy_sum,
    reference_cross_entropy_sum,
    shifted_trained_positions,
    token_logprobs,
)


def test_hand_derived_value():
    """hidden = [1, 0], weight rows e0=[1,0], e1=[0,1]: logits = [1, 0].
    CE(target 0) = log(e^1 + e^0) - 1 = log(1 + e^-1) ~= 0.31326."""
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.eye(2)
    loss = linear_cross_entropy_sum(hidden, weight, torch.tensor([0]))
    assert math.isclose(float(loss), math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_matches_reference_value_and_gradients_in_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    fused = linear_cross_entropy_sum(hidden, weight, targets, chunk_rows=10)
    (g_hidden, g_weight) = torch.autograd.grad(fused * 0.5, (hidden, weight))
    reference = reference_cross_entropy_sum(hidden, weight, targets)
    (r_hidden, r_weight) = torch.autograd.grad(reference * 0.5, (hidden, weight))
    assert torch.allclose(fused.double(), reference, atol=1e-5)
    assert torch.allclose(g_hidden, r_hidden, atol=1e-6)
    assert torch.allclose(g_weight.double(), r_weight, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_no_grad_path_agrees():
    torch.manual_seed(1)
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    targets = torch.randint(0, 9, (5,))
    loss = linear_cross_entropy_sum(hidden, weight, targets)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy_sum(hidden, weight, targets), loss.detach(), atol=1e-5)


def test_token_logprobs_are_minus_token_ce():
    torch.manual_seed(2)
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(11, 4)
    targets = torch.randint(0, 11, (6,))
    logprobs = token_logprobs(hidden, weight, targets, chunk_rows=4)
    assert torch.allclose(-logprobs.sum(), reference_cross_entropy_sum(hidden, weight, targets), atol=1e-5)
    logprobs.sum().backward()
    assert hidden.grad is not None


def test_shift_picks_positions_that_predict_trained_labels():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    selected, targets = shifted_trained_positions(hidden, labels)
    # Row 0: positions 1 and 2 predict labels 5 and 6; row 1: position 0 predicts 7.
    assert targets.tolist() == [5, 6, 7]
    assert selected.squeeze(1).tolist() == [1.0, 2.0, 4.0]
