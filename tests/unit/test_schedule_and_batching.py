"""Learning-rate schedule and batching: pure functions checked against hand-computed values."""

from __future__ import annotations

import math

from tuneforge.data.batching import collate, count_trained_targets, plan_epoch, split_micro_batches
from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample
from tuneforge.schedule import learning_rate_at, warmup_steps_for


def test_warmup_then_cosine_hand_values():
    """total 10, warmup 2, peak 1: steps 0,1 -> 0.5, 1.0; step 2 starts the decay at cos(0) -> 1.0;
    step 6 is halfway through 8 decay steps -> 0.5*(1+cos(pi/2)) = 0.5."""
    values = [learning_rate_at(s, 10, 1.0, 2, "cosine") for s in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[2] == 1.0
    assert math.isclose(values[6], 0.5)
    assert all(a >= b for a, b in zip(values[1:], values[2:], strict=False))


def test_linear_and_constant():
    assert math.isclose(learning_rate_at(3, 5, 2.0, 1, "linear"), 2.0 * (1 - 2 / 4))
    assert learning_rate_at(4, 5, 2.0, 0, "constant") == 2.0
    assert warmup_steps_for(100, 0.05) == 5 and warmup_steps_for(100, 0.0) == 0


def test_plan_epoch_covers_every_example_once_and_is_deterministic():
    lengths = [(i * 37) % 50 + 1 for i in range(103)]
    plan = plan_epoch(lengths, 8, seed=3, epoch=0)
    flat = [i for step in plan for i in step]
    assert sorted(flat) == list(range(103))
    assert plan == plan_epoch(lengths, 8, seed=3, epoch=0)
    assert plan != plan_epoch(lengths, 8, seed=3, epoch=1)
    assert sum(len(s) == 8 for s in plan) == 12


def test_length_grouping_reduces_padding():
    lengths = [(i * 37) % 97 + 3 for i in range(256)]
    plan = plan_epoch(lengths, 8, seed=0, epoch=0)
    padded = sum(len(s) * max(lengths[i] for i in s) for s in plan)
    assert padded < 1.25 * sum(lengths)


def test_micro_batches_respect_token_budget():
    lengths = [10, 50, 12, 48, 11, 49]
    batches = split_micro_batches(list(range(6)), lengths, max_tokens=100, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)


def test_collate_pads_right_and_ignores_padding():
    a = TokenizedExample([1, 2, 3], [IGNORE_INDEX, 2, 3])
    b = TokenizedExample([4, 5], [IGNORE_INDEX, 5])
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert count_trained_targets([a, b]) == 3


def test_step_plan_hand_values():
    """10 items, 4 per step -> 3 steps an epoch; 2.5 epochs -> ceil(7.5) = 8 steps; 5% warmup -> ceil(0.4) = 1."""
    from tuneforge.schedule import step_plan

    assert step_plan(10, 4, 2.5, None, 0.05) == (3, 8, 1)
    assert step_plan(10, 4, 2.5, 5, 0.0) == (3, 5, 0)
