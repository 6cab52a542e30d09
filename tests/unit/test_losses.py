"""Fused linear + cross-entropy against the plain formula and hand derivations (value and gradients), for the
bare matmul head and for heads with a bias, a logit scale and a final softcap."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuneforge.losses import (
    OutputHead,
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


# ---- heads with parts: bias, logit scale, final softcap (`OutputHead`) ------------------------------------


def test_hand_derived_values_for_each_head_part():
    """hidden = [1, 0], weight = I (raw logits [1, 0] before the parts), target 0; CE = log(1 + e^-(l0 - l1)):
    softcap 1:        logits = [tanh 1, 0]          -> log(1 + e^-tanh(1)) ~= 0.38640
    scale 2:          logits = [2, 0]               -> log(1 + e^-2)       ~= 0.12693
    bias [0, 1]:      logits = [1, 1]               -> log 2
    scale 2, cap 1:   logits = [tanh 2, 0] (scaled first, as Cohere scales and Gemma caps the head's output)."""
    hidden, weight, target = torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([0])
    cases = [
        (OutputHead(weight, softcap=1.0), math.log(1 + math.exp(-math.tanh(1)))),
        (OutputHead(weight, scale=2.0), math.log(1 + math.exp(-2))),
        (OutputHead(weight, bias=torch.tensor([0.0, 1.0])), math.log(2)),
        (OutputHead(weight, scale=2.0, softcap=1.0), math.log(1 + math.exp(-math.tanh(2)))),
    ]
    for head, expected in cases:
        assert math.isclose(float(linear_cross_entropy_sum(hidden, head, target)), expected, rel_tol=1e-6), head
        with torch.no_grad():
            assert math.isclose(float(linear_cross_entropy_sum(hidden, head, target)), expected, rel_tol=1e-6), head
        assert math.isclose(float(-token_logprobs(hidden, head, target)), expected, rel_tol=1e-6), head


def test_hand_derived_gradient_through_the_softcap():
    """hidden = [x, y] = [1, 0], weight = I, cap 1, target 0: l = [tanh x, tanh y] = [tanh 1, 0]. With
    p1 = softmax(l)_1 = 1 / (1 + e^tanh(1)), dCE/dl = [p0 - 1, p1] = [-p1, p1] and dl/d[x, y] = [1 - tanh^2 x,
    1 - tanh^2 y], so the gradient is [-p1 (1 - tanh^2 1), p1]."""
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    linear_cross_entropy_sum(hidden, OutputHead(torch.eye(2), softcap=1.0), torch.tensor([0])).backward()
    p1 = 1 / (1 + math.exp(math.tanh(1)))
    assert math.isclose(float(hidden.grad[0, 0]), -p1 * (1 - math.tanh(1) ** 2), rel_tol=1e-6)
    assert math.isclose(float(hidden.grad[0, 1]), p1, rel_tol=1e-6)


def explicit_head_logits(hidden, weight, bias, scale, softcap):
    """The head written out on its own (not through OutputHead), as Gemma 2 / Cohere forwards compute it."""
    logits = (hidden @ weight.T + bias) * scale
    return softcap * torch.tanh(logits / softcap)


def test_head_parts_match_the_explicit_formula_in_value_and_every_gradient():
    """Fused, chunked (10 rows of 37), against autograd through the explicit formula in float64: the gradients
    of hidden, weight (full fine-tuning) and bias all go through the hand-written chain rule in the fused pass."""
    torch.manual_seed(3)
    hidden = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    head = OutputHead(weight, bias, scale=0.7, softcap=3.0)  # a cap small enough to bend these logits hard
    fused = linear_cross_entropy_sum(hidden, head, targets, chunk_rows=10)
    fused_grads = torch.autograd.grad(fused * 0.5, (hidden, weight, bias))
    reference = F.cross_entropy(explicit_head_logits(hidden, weight, bias, 0.7, 3.0), targets, reduction="sum")
    reference_grads = torch.autograd.grad(reference * 0.5, (hidden, weight, bias))
    assert torch.allclose(fused, reference, atol=1e-10)
    for mine, theirs in zip(fused_grads, reference_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-10)
    logprobs = token_logprobs(hidden, head, targets, chunk_rows=10)  # float32 by design: fp32 rounding
    assert torch.allclose(-logprobs.sum().double(), reference, rtol=1e-6)
    assert torch.allclose(reference_cross_entropy_sum(hidden, head, targets), reference, atol=1e-10)


def test_no_trained_positions_still_reach_every_head_tensor():
    """An empty micro-batch gives loss 0 with a (zero) gradient for weight and bias, so DDP sees every parameter."""
    weight, bias = torch.randn(5, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    loss = linear_cross_entropy_sum(torch.zeros(0, 3), OutputHead(weight, bias, softcap=2.0), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(weight.grad, torch.zeros(5, 3)) and torch.equal(bias.grad, torch.zeros(5))
