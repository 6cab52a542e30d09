"""Examples -> steps -> micro-batches -> padded tensors, with as little padding as possible.

An optimizer step takes `examples_per_step` examples. Within an epoch the order is shuffled by seed,
then examples are sorted by length inside windows of a few steps, so a step holds examples of similar
length; steps are shuffled again so the model does not see lengths in order. A step is cut into
micro-batches whose padded size stays under a token budget; the loss is normalised over the whole step
(see `tuneforge.recipes.sft`), so how a step is cut never changes the update.

Padding never leaks into the result: right padding with an attention mask, and labels of padding are
ignored (tests check that a padded row's logits equal those of the document alone).
"""

from __future__ import annotations

import random

import torch

from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample

SORT_WINDOW_STEPS = 16


def plan_epoch(lengths: list[int], examples_per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of the examples of each optimizer step of one epoch (the last step may be smaller)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = examples_per_step * SORT_WINDOW_STEPS
    steps = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        steps.extend(chunk[i : i + examples_per_step] for i in range(0, len(chunk), examples_per_step))
    # Keep full steps first in random order, then the one short step (if any) where it falls.
    rng.shuffle(steps)
    return steps


def split_micro_batches(indices: list[int], lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Cut one step into micro-batches: padded size (rows x longest) <= max_tokens, at most max_rows rows."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in ordered:
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def collate(examples: list[TokenizedExample], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def count_trained_targets(examples: list[TokenizedExample]) -> int:
    """Tokens that carry loss: trained labels at positions >= 1 (position 0 has no prediction)."""
    return sum(sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples)
