"""DPO, IPO, SimPO, Bradley-Terry and GRPO losses against values derived by hand, plus sequence log-probs."""

from __future__ import annotations

import math

import torch

from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.losses import (
    KL_TOKEN_CAP,
    bradley_terry_loss,
    chosen_nll,
    dpo_sigmoid_loss,
    group_advantages,
    grpo_token_loss,
    ipo_loss,
    sequence_logprobs,
    simpo_loss,
)


def test_dpo_sigmoid_hand_derived():
    """pi_c=-1, pi_r=-3, ref_c=-2, ref_r=-2, beta=0.5:
    chosen reward = 0.5*(-1+2) = 0.5; rejected reward = 0.5*(-3+2) = -0.5; margin 1.0;
    loss = -log sigmoid(1) = log(1 + e^-1) ~= 0.313262."""
    losses, chosen, rejected = dpo_sigmoid_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                                                torch.tensor([-2.0]), beta=0.5)
    assert math.isclose(float(losses), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert float(chosen) == 0.5 and float(rejected) == -0.5


def test_dpo_at_the_reference_is_log_2_and_gradient_pushes_chosen_up():
    """policy == reference: margin 0, loss = log 2; d loss / d pi_c = -beta * sigmoid(-0) = -beta/2."""
    policy_chosen = torch.tensor([-2.0], requires_grad=True)
    losses, _, _ = dpo_sigmoid_loss(policy_chosen, torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    losses.sum().backward()
    assert math.isclose(float(losses), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(policy_chosen.grad), -0.05, rel_tol=1e-6)


def test_ipo_hand_derived():
    """h = (pi_c - ref_c) - (pi_r - ref_r) = (-1+2) - (-3+2) = 2; beta = 0.25 -> target 1/(2*0.25) = 2;
    loss = (2 - 2)^2 = 0. With pi_c = -2 instead: h = 1, loss = (1 - 2)^2 = 1."""
    zero, _, _ = ipo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.25)
    one, chosen, _ = ipo_loss(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.25)
    assert float(zero) == 0.0 and float(one) == 1.0 and float(chosen) == 0.0


def test_simpo_hand_derived():
    """mean log-probs c = -0.5, r = -1.5, beta = 2, gamma = 1: beta*(c - r) - gamma = 2*1 - 1 = 1;
    loss = -log sigmoid(1) = log(1 + e^-1); rewards are beta * mean = -1 and -3."""
    losses, chosen, rejected = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=2.0, gamma=1.0)
    assert math.isclose(float(losses), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert float(chosen) == -1.0 and float(rejected) == -3.0


def test_chosen_nll_hand_derived():
    """RPO's term is the chosen answer's mean token NLL: sum log p = -6 over 4 tokens -> 1.5; -2 over 1 -> 2.
    Its gradient w.r.t. the summed log-prob is -1/count: -0.25 and -1."""
    sums = torch.tensor([-6.0, -2.0], requires_grad=True)
    nll = chosen_nll(sums, torch.tensor([4, 1]))
    assert torch.allclose(nll, torch.tensor([1.5, 2.0]))
    nll.sum().backward()
    assert torch.allclose(sums.grad, torch.tensor([-0.25, -1.0]))


def test_bradley_terry_hand_derived():
    """r_c - r_r = 0 -> log 2; r_c - r_r = ln 3 -> -log(3/4) = log(4/3) (sigmoid(ln 3) = 3/(3+1))."""
    losses = bradley_terry_loss(torch.tensor([1.0, math.log(3)]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(losses, torch.tensor([math.log(2), math.log(4 / 3)]), atol=1e-6)


def test_group_advantages_hand_derived():
    """Group [1, 0, 0, 1]: mean 0.5, population std 0.5 -> [1, -1, -1, 1] (eps aside);
    a group of equal rewards [2, 2] has nothing to compare: advantages 0."""
    advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), eps=0.0 + 1e-12)
    assert torch.allclose(advantages[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    assert torch.all(advantages[1] == 0)


def test_grpo_token_loss_hand_derived():
    """Token 1: logp = old = ref, A = 2: ratio 1, objective 2, KL 0 -> loss -2.
    Token 2: logp - old = ln 1.5 (ratio 1.5), A = 1, eps 0.2: min(1.5, 1.2) * 1 = 1.2;
    ref - logp = -ln 1.5: KL = 1/1.5 + ln 1.5 - 1 ~= 0.072132; kl_beta 0.1 -> loss -1.2 + 0.0072132.
    Token 3: ratio 0.5, A = -1: min(-0.5, -0.8) = -0.8 -> loss 0.8 (pessimistic side of the clip)."""
    logp = torch.tensor([-1.0, math.log(1.5) - 1.0, math.log(0.5) - 1.0])
    old = torch.tensor([-1.0, -1.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, math.log(0.5) - 1.0])
    losses, kl = grpo_token_loss(logp, old, ref, torch.tensor([2.0, 1.0, -1.0]), clip_epsilon=0.2, kl_beta=0.1)
    expected_kl = 1 / 1.5 + math.log(1.5) - 1
    assert torch.allclose(kl, torch.tensor([0.0, expected_kl, 0.0]), atol=1e-6)
    assert torch.allclose(losses, torch.tensor([-2.0, -1.2 + 0.1 * expected_kl, 0.8]), atol=1e-6)


def test_grpo_kl_per_token_is_capped_where_the_reference_far_outweighs_the_policy():
    """x = ref - logp. Token 1: x = ln 2: k3 = 2 - ln 2 - 1 ~= 0.306853, under the cap, d(k3)/d(logp) = 1 - e^x = -1.
    Token 2: x = ln 1000 (the policy gives a sampled token 1/1000 of the reference's probability): k3 would be
    1000 - 6.9078 - 1 ~= 992.09; it is capped at 10 and adds no gradient. Token 3: x = 100 would overflow
    exp in float32 without the log-ratio clamp; capped at 10 as well. A = 0 and logp = old: only KL counts."""
    logp = torch.tensor([-2.0, -8.0, -101.0], requires_grad=True)
    ref = torch.tensor([-2.0 + math.log(2), -8.0 + math.log(1000), -1.0])
    losses, kl = grpo_token_loss(logp, logp.detach(), ref, torch.zeros(3), clip_epsilon=0.2, kl_beta=1.0)
    assert torch.allclose(kl, torch.tensor([2 - math.log(2) - 1, KL_TOKEN_CAP, KL_TOKEN_CAP]), atol=1e-5)
    losses.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([-1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.isfinite(losses).all()


def test_sequence_logprobs_sum_only_answer_tokens():
    """Uniform logits over V=4 (zero hidden): every token has log p = -ln 4. Row 0 trains 2 tokens,
    row 1 trains 1 (the rest is prompt or padding): sums -2 ln 4 and -ln 4, counts 2 and 1."""
    hidden = torch.zeros(2, 4, 3)
    weight = torch.randn(4, 3)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX]])
    sums, counts = sequence_logprobs(hidden, weight, labels)
    assert torch.allclose(sums, torch.tensor([-2 * math.log(4), -math.log(4)]), atol=1e-6)
    assert counts.tolist() == [2, 1]
