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


# Packing (padding-free): a micro-batch is one row holding several examples end to end. Position ids restart
# at 0 for every document and no attention mask is passed: transformers then reads the document boundaries
# from the position ids (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal causal mask
# for SDPA / eager, or varlen `cu_seqlens` for flash attention, so each document attends only to itself and
# its logits are those of the document alone.


def pack_micro_batches(indices: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Cut one step into packed rows of at most max_tokens tokens (first fit, longest first); an example
    longer than the budget has a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(indices, key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(max_tokens - lengths[index])
    return rows


def collate_packed(examples: list[TokenizedExample], device=None) -> dict[str, torch.Tensor]:
    """One row [1, total tokens]: input_ids, position_ids restarting per document, labels. The first label of
    every document is ignored: it would be predicted from the previous document's last token."""
    input_ids, position_ids, labels = [], [], []
    for example in examples:
        input_ids += example.input_ids
        position_ids += range(len(example.input_ids))
        labels += [IGNORE_INDEX, *example.labels[1:]]
    batch = {
        "input_ids": torch.tensor([input_ids]),
        "attention_mask": None,  # the boundaries are in position_ids; a 2D mask would hide them
        "position_ids": torch.tensor([position_ids]),
        "labels": torch.tensor([labels]),
    }
    return {k: v.to(device) if v is not None else None for k, v in batch.items()} if device is not None else batch


def padding_share(steps: list[list[int]], lengths: list[int], max_tokens: int, max_rows: int) -> float:
    """The share of padding tokens in the padded micro-batches of these steps (what packing would save)."""
    padded = real = 0
    for step in steps:
        for micro in split_micro_batches(step, lengths, max_tokens, max_rows):
            padded += len(micro) * max(lengths[i] for i in micro)
            real += sum(lengths[i] for i in micro)
    return 1 - real / max(padded, 1)
