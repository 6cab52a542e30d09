"""The forgetting guard (tuneforge/forgetting_guard.py): its KL loss against hand derivations and the model's own
logits, its cache keyed by the base weights, its per-step draw, and what it does to a tiny-model training run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.data.replay import read_general_prompts
from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample
from tuneforge.forgetting_guard import Guard, base_answers, cache_file, guard_loss_sum, weights_digest
from tuneforge.losses import OutputHead, linear_kl_sum, reference_kl_sum


def test_kl_by_hand():
    """hidden = [1, 0] (student), teacher hidden = [0, 0], weight = I: student logits [1, 0], teacher logits [0, 0].
    p_t = [1/2, 1/2], log p_s = [-log(1 + e^-1), -log(1 + e)], so
    KL(p_t || p_s) = sum_v p_t (log p_t - log p_s) = log(1/2) + (log(1 + e^-1) + log(1 + e)) / 2 ~= 0.12011,
    and d KL / d logits_s = p_s - p_t = [e/(1+e) - 1/2, 1/(1+e) - 1/2] (weight = I: the hidden's gradient too)."""
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    kl = linear_kl_sum(hidden, torch.eye(2), torch.zeros(1, 2))
    expected = math.log(0.5) + (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert math.isclose(kl.item(), expected, rel_tol=1e-6)
    kl.backward()
    p0 = math.e / (1 + math.e)
    assert torch.allclose(hidden.grad, torch.tensor([[p0 - 0.5, 1 - p0 - 0.5]]), atol=1e-6)


def test_kl_matches_reference_in_chunks_for_every_head_kind():
    torch.manual_seed(0)
    bias = torch.randn(11, dtype=torch.float64)
    for head_of in (lambda w: OutputHead(w), lambda w: OutputHead(w, softcap=3.0, scale=0.7),
                    lambda w: OutputHead(w, bias=bias)):
        hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
        teacher = torch.randn(7, 5, dtype=torch.float64)
        weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
        fused = linear_kl_sum(hidden, head_of(weight), teacher, chunk_rows=3)
        fused.backward()
        grads = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        reference = reference_kl_sum(hidden, head_of(weight), teacher)
        reference.backward()
        assert torch.allclose(fused, reference, atol=1e-10)
        assert torch.allclose(grads[0], hidden.grad, atol=1e-10) and torch.allclose(grads[1], weight.grad, atol=1e-10)
        assert float(linear_kl_sum(hidden, head_of(weight), hidden.detach())) == pytest.approx(0.0, abs=1e-12)


def _lora_model(tiny_model_dir, **settings):
    from tuneforge.trainable import build_model

    config = build_config({"data": "unused.jsonl", "model": str(tiny_model_dir), "dtype": "float32", **settings})
    model, tokenizer, _, _ = build_model(config, "cpu")
    return model, tokenizer


def test_guard_loss_is_kl_of_the_models_own_logits_to_its_base(tiny_model_dir):
    """The guard's loss on a micro-batch equals sum over trained positions of KL(base || model), with both
    distributions from the model's own forward (adapter off, adapter on): zero while LoRA's B is zero, and that
    sum once the adapter has moved."""
    model, tokenizer = _lora_model(tiny_model_dir)
    ids = tokenizer("what is a b c yes no", add_special_tokens=False)["input_ids"]
    example = TokenizedExample(input_ids=ids, labels=list(ids))
    guard = Guard(method="kl", weight=1.0, examples=[example], per_step=1, seed=0)
    from tuneforge.data.batching import collate

    batch = collate([example], pad_id=tokenizer.pad_token_id)
    zero, n = guard_loss_sum(model, guard, batch)
    assert n == len(ids) - 1 and float(zero) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    loss, _ = guard_loss_sum(model, guard, batch)
    with torch.no_grad():
        tuned = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1].float(), -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1].float(), -1)
    expected = float((base.exp() * (base - tuned)).sum())
    assert expected > 0.01 and float(loss) == pytest.approx(expected, rel=1e-4)


def test_replay_guard_is_cross_entropy_on_answer_tokens(tiny_model_dir):
    model, tokenizer = _lora_model(tiny_model_dir)
    ids = tokenizer("what is a b", add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX, IGNORE_INDEX, ids[2], ids[3]]
    from tuneforge.data.batching import collate

    batch = collate([TokenizedExample(input_ids=ids, labels=labels)], pad_id=tokenizer.pad_token_id)
    loss, n = guard_loss_sum(model, Guard(method="replay", weight=1.0, examples=[], per_step=1, seed=0), batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0].float()
    expected = float(torch.nn.functional.cross_entropy(logits[1:3], torch.tensor(ids[2:4]), reduction="sum"))
    assert n == 2 and float(loss) == pytest.approx(expected, rel=1e-4)


def test_cache_is_keyed_by_the_base_weights(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    model, tokenizer = _lora_model(tiny_model_dir)
    prompts = ["what is a", "hello please"]
    first, info = base_answers(model, tokenizer, prompts, torch.float32)
    assert info["cache"] == "miss" and info["generated"] == 2
    again, info = base_answers(model, tokenizer, prompts + ["yes or no"], torch.float32)
    assert info["cache"] == "partial" and info["generated"] == 1 and again[:2] == first
    _, info = base_answers(model, tokenizer, prompts, torch.float32)
    assert info["cache"] == "hit" and info["generated"] == 0

    # The same base with a different LoRA rank keys the same cache; a changed base weight keys another.
    other_rank, _ = _lora_model(tiny_model_dir, lora_r=4)
    assert cache_file(other_rank, tokenizer, torch.float32) == cache_file(model, tokenizer, torch.float32)
    digest = weights_digest(model)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_" not in n).add_(1e-3)
    assert weights_digest(model) != digest
    _, info = base_answers(model, tokenizer, prompts, torch.float32)
    assert info["cache"] == "miss"


def test_each_step_draws_its_own_examples_and_a_cycle_covers_the_pool():
    examples = [TokenizedExample(input_ids=[1, 2], labels=[1, 2]) for _ in range(10)]
    guard = Guard(method="kl", weight=1.0, examples=examples, per_step=3, seed=5)
    drawn = [i for step in range(10) for i in guard.indices_for_step(step)]
    assert all(sorted(drawn[c * 10 : (c + 1) * 10]) == list(range(10)) for c in range(3))
    assert guard.indices_for_step(4) == Guard(method="kl", weight=1.0, examples=examples, per_step=3,
                                              seed=5).indices_for_step(4)


def test_prompt_file_comments_and_line_breaks(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# category: code\nFix this:\\nprint('hi'\n\n  Say hello.  \n")
    assert read_general_prompts(path) == ["Fix this:\nprint('hi'", "Say hello."]
    assert len(read_general_prompts()) >= 50


def _train(tmp_path, tiny_model_dir, rows, name, **settings):
    from tuneforge.recipes.sft import train

    data = write_jsonl(tmp_path / "train.jsonl", rows)
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(tmp_path / name),
                           "epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "dtype": "float32", **settings})
    return train(config)


def test_guard_off_runs_no_guard(tmp_path, tiny_model_dir, qa_rows, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    summary = _train(tmp_path, tiny_model_dir, qa_rows, "off", forgetting_guard="off")
    assert summary["forgetting_guard"] == {"method": "off"}
    assert not (tmp_path / "home" / "forgetting-guard").exists()  # nothing generated, nothing cached
    assert all("guard_kl" not in json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines())


def test_guard_holds_the_model_near_its_base_on_general_prompts(tmp_path, tiny_model_dir, qa_rows, monkeypatch):
    """Same task, same steps: with the guard on, the fine-tuned model's KL to its base on the guard's own
    conversations is far smaller than without it, the task is still learnt, and the summary says what it cost."""
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    prompts = write_jsonl(tmp_path / "prompts.txt", [f"hello what is {c} please" for c in "abcdefghij"] +
                          [f"yes or no {c} {d}" for c in "klmno" for d in "xyz"])
    guarded = _train(tmp_path, tiny_model_dir, qa_rows, "kl", forgetting_guard_prompts=str(prompts),
                     forgetting_guard_ratio=0.5)
    unguarded = _train(tmp_path, tiny_model_dir, qa_rows, "off", forgetting_guard="off")
    assert guarded["steps"] == unguarded["steps"]  # the guard rides along; the task's schedule is unchanged
    block = guarded["forgetting_guard"]
    assert block["method"] == "kl" and block["per_step"] == 2 and block["cache"] == "miss"  # 0.5 x batch 4
    assert block["seconds"] >= block["train_seconds"] > 0
    logged = [json.loads(line) for line in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["guard_kl"] >= 0 for record in logged if "loss" in record)

    from tuneforge.data.batching import collate
    from tuneforge.forgetting_guard import guard_example
    from tuneforge.models import load_model

    base, tokenizer = load_model(str(tiny_model_dir), dtype=torch.float32)
    conversations = [guard_example(tokenizer, prompt, "yes", 64, every_position=True)
                     for prompt in read_general_prompts(prompts)]

    def drift(run: str) -> float:
        """Mean KL(base || fine-tuned) per position over the guard's prompts, from both models' own logits."""
        tuned, _ = load_model(str(tiny_model_dir), str(tmp_path / run), dtype=torch.float32)
        total = count = 0
        with torch.no_grad():
            for example in conversations:
                ids = collate([example], tokenizer.pad_token_id)["input_ids"]
                base_log = torch.log_softmax(base(input_ids=ids).logits[0].float(), -1)
                tuned_log = torch.log_softmax(tuned(input_ids=ids).logits[0].float(), -1)
                total += float((base_log.exp() * (base_log - tuned_log)).sum())
                count += ids.shape[1]
        return total / count

    assert drift("kl") < 0.5 * drift("off")
    # ... and the task is learnt about as well as without it.
    first_loss = next(record["loss"] for record in logged if "loss" in record)
    assert guarded["final_train_loss"] < 0.6 * first_loss
    assert guarded["final_train_loss"] < 1.25 * unguarded["final_train_loss"]


@pytest.mark.parametrize("method", ["sft-lora", "sft-full", "dpo", "grpo"])
def test_every_method_carries_the_guard_and_starts_at_zero_kl(tmp_path, tiny_model_dir, qa_rows, monkeypatch, method):
    """sft (LoRA: the adapter-off teacher; full: a frozen copy), dpo and grpo each run the guard by default; its
    first step's KL is measured before any update, when the model is its base, so it is 0 — the teacher is
    really the base — and it is positive once the weights have moved."""
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    prompts = write_jsonl(tmp_path / "prompts.txt", [f"hello what is {c} please" for c in "abcdefghijklmnop"])
    settings = {"model": str(tiny_model_dir), "output": str(tmp_path / "out"), "max_steps": 4, "batch_size": 8,
                "learning_rate": 1e-2, "dtype": "float32", "forgetting_guard_prompts": str(prompts),
                "forgetting_guard_ratio": 0.125}
    if method.startswith("sft"):
        from tuneforge.recipes.sft import train

        settings.update(data=str(write_jsonl(tmp_path / "train.jsonl", qa_rows)), full=method == "sft-full")
        summary = train(build_config(settings))
    elif method == "dpo":
        from tests.unit.test_dpo import preference_rows
        from tuneforge.recipes.dpo import train

        settings.update(data=str(write_jsonl(tmp_path / "pairs.jsonl", preference_rows())), method="dpo")
        summary = train(build_config(settings))
    else:
        from tuneforge.recipes.grpo import train

        rows = [{"messages": [{"role": "user", "content": f"what is {c}"}]} for c in "abcdefgh"]
        settings.update(data=str(write_jsonl(tmp_path / "prompts.jsonl", rows)), method="grpo", reward="tests:unused",
                        group_size=2, max_new_tokens=4, batch_size=4, forgetting_guard_ratio=0.25)
        summary = train(build_config(settings), reward_fn=lambda prompt, completion, reference: float(len(completion)))
    assert summary["forgetting_guard"]["method"] == "kl" and summary["forgetting_guard"]["per_step"] == 1
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    guard_kl = [record["guard_kl"] for record in logged if "guard_kl" in record]
    assert len(guard_kl) == 4 and guard_kl[0] == pytest.approx(0.0, abs=1e-5) and max(guard_kl[1:]) > 1e-4


def test_a_fractional_share_spreads_the_guard_over_steps():
    """per_step 0.5: one conversation every other step; 1.5: one and two in turn, 3 per 2 steps."""
    examples = [TokenizedExample(input_ids=[1, 2], labels=[1, 2]) for _ in range(7)]
    half = Guard(method="kl", weight=1.0, examples=examples, per_step=0.5, seed=0)
    assert [len(half.indices_for_step(s)) for s in range(6)] == [0, 1, 0, 1, 0, 1]
    assert half.passes_for_step(0, None, 512, 8) == ([], [])
    one_and_half = Guard(method="kl", weight=1.0, examples=examples, per_step=1.5, seed=0)
    assert [len(one_and_half.indices_for_step(s)) for s in range(4)] == [1, 2, 1, 2]
