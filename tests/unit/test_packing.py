"""Packing (padding-free): several examples in one row, each attending only to itself.

What must hold, on tiny random Llama and Qwen2 in fp32: the logits of a document packed beside others equal
those of the document alone (SDPA and eager attention), and so does the recipe's summed token loss; a training
step cut into packed rows has the gradient of the same step cut into padded micro-batches; `packing=on` and
`packing=off` runs of the recipe end on the same weights and say which they used.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_tokenizer, write_jsonl
from tests.tiny_models import build_tiny_model
from tuneforge.config import build_config
from tuneforge.data.batching import (
    collate,
    collate_packed,
    count_trained_targets,
    pack_micro_batches,
    split_micro_batches,
)
from tuneforge.data.tokenize import tokenize_conversation
from tuneforge.recipes.sft import micro_batch_loss_sum, train

QUESTIONS = ["what is a", "please what is the answer to b c d e f", "hello", "yes or no or maybe please answer"]
ANSWERS = ["b", "g h i", "hi you are helpful", "maybe"]


def documents():
    """Chat examples of different lengths, tokenized by the project's own tokenizer step."""
    tokenizer = make_tokenizer()
    return [
        tokenize_conversation(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], None, 256)
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]


def load_tiny(architecture: str, folder, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(architecture, folder)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention).eval()


def test_pack_micro_batches_keeps_every_example_once_under_the_budget():
    lengths = [5, 9, 3, 12, 7, 7, 1, 20]
    rows = pack_micro_batches(list(range(len(lengths))), lengths, max_tokens=16)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 16 for row in rows if len(row) > 1)
    assert [7] in rows  # longer than the budget: a row of its own
    assert len(rows) == 4  # first fit, longest first: 20 | 12+3+1 | 9+7 | 7+5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_packed_document_has_the_logits_and_loss_of_the_document_alone(tmp_path, architecture, attention):
    """Row = doc0 doc1 doc2 doc3 end to end, position ids 0..n_k-1 for each. Causal attention restricted to
    the block of each document is exactly causal attention over that document alone, and rotary positions are
    relative to its own start, so the hidden states (and logits) of each block equal the document's own.
    The loss: collate_packed ignores each document's first label (its prediction would read the previous
    document), which no single-document batch trains either, so the packed row's summed loss and trained-token
    count are the sums over the documents alone."""
    model = load_tiny(architecture, tmp_path / architecture, attention)
    docs = documents()
    packed = collate_packed(docs)
    assert packed["input_ids"].shape == (1, sum(len(d.input_ids) for d in docs))
    with torch.no_grad():
        # use_cache=False as in training: transformers reads packed boundaries from position_ids only without a cache.
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        packed_loss, packed_targets = micro_batch_loss_sum(model, packed)
        start, total_loss, total_targets = 0, 0.0, 0
        for doc in docs:
            alone = collate([doc], pad_id=0)
            alone_logits = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0]
            n = len(doc.input_ids)
            torch.testing.assert_close(logits[start : start + n], alone_logits, rtol=1e-5, atol=1e-5)
            loss, targets = micro_batch_loss_sum(model, alone)
            total_loss, total_targets, start = total_loss + float(loss), total_targets + targets, start + n
    assert packed_targets == total_targets == count_trained_targets(docs)
    assert float(packed_loss) == pytest.approx(total_loss, rel=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_packed_step_has_the_gradient_of_the_padded_step(tmp_path, architecture):
    """One optimizer step's examples, cut by each planner under the same token budget and normalised by the
    step's trained tokens (CONVENTIONS habit 3), give the same gradient on every weight."""
    model = load_tiny(architecture, tmp_path / architecture)
    docs = documents() * 2
    lengths = [len(d.input_ids) for d in docs]
    indices = list(range(len(docs)))
    normaliser = count_trained_targets(docs)

    def gradient(micro_batches, collate_one):
        model.zero_grad(set_to_none=True)
        for micro in micro_batches:
            loss_sum, _ = micro_batch_loss_sum(model, collate_one([docs[i] for i in micro]))
            (loss_sum / normaliser).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    budget = 2 * max(lengths)
    packed_rows = pack_micro_batches(indices, lengths, budget)
    padded = gradient(split_micro_batches(indices, lengths, budget, max_rows=8), lambda rows: collate(rows, pad_id=0))
    packed = gradient(packed_rows, collate_packed)
    assert len(packed_rows) < len(docs)  # several documents did share a row
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_on_and_off_train_the_same_weights_and_say_which(tmp_path, tiny_model_dir, qa_rows, attention):
    rows = qa_rows[:16]
    for i, row in enumerate(rows):  # different lengths, so rows pack differently from padded batches
        row["messages"][0]["content"] = " ".join(["please"] * (i % 5)) + " " + row["messages"][0]["content"]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    common = {"data": str(data), "model": str(tiny_model_dir), "max_steps": 3, "batch_size": 8, "dtype": "float32",
              "learning_rate": 1e-2, "micro_batch_tokens": 64, "forgetting_guard": "off", "attention": attention}
    summaries = {}
    for packing in ("on", "off"):
        summaries[packing] = train(build_config({**common, "output": str(tmp_path / packing), "packing": packing}))
    assert summaries["on"]["packing"]["packed"] is True and summaries["off"]["packing"]["packed"] is False
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["packing"]["why"] == "packing=on"
    on, off = (load_file(str(tmp_path / p / "adapter_model.safetensors")) for p in ("on", "off"))
    for key in on:  # fp32 sums in another order (eager's packed mask: ~2e-5 of the largest weight), not a bug's size
        torch.testing.assert_close(on[key], off[key], rtol=1e-4, atol=1e-4 * float(off[key].abs().max()), msg=key)
