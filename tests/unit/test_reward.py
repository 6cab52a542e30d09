"""The reward-model recipe end to end on a tiny random Llama: files, accuracy rises, what changed, loader."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.recipes.reward import train
from tuneforge.reward_model import load_reward_model

LETTERS = "abcdefghijklmnopqrstuvwxy"


def rows(n=40):
    """Prefer answering 'yes' over 'no' (same length, so length alone cannot separate them)."""
    return [{"prompt": f"what is {LETTERS[i % 25]}", "chosen": f"yes {LETTERS[(i + 3) % 25]}",
             "rejected": f"no {LETTERS[(i + 3) % 25]}"} for i in range(n)]


def test_reward_model_learns_pairs_and_loads_as_a_reward_function(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prefs.jsonl", rows())
    out = tmp_path / "rm"
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(out), "method": "reward",
                           "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "validation_split": 0.2})
    summary = train(config)
    for name in ("adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "reward_config.json",
                 "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    assert summary["pairwise_accuracy"] >= 0.9 and summary["method"] == "reward"
    for key in ("trained_tokens", "train_seconds", "tokens_per_second", "final_train_loss", "final_valid_loss"):
        assert summary[key] is not None, key

    # Exactly the LoRA matrices and the value head were trained; the base weights are untouched.
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert set(load_file(str(out / "value_head.safetensors"))) == {"weight", "bias"}
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, original[name.replace(".base_layer", "")]), name

    rm = load_reward_model(out)
    prompt = [{"role": "user", "content": "what is a"}]
    good, bad = rm(prompt, "yes d"), rm(prompt, "no d")
    assert good > bad
    batched = rm.batch([prompt, prompt], ["yes d", "no d"], [None, None])
    assert torch.allclose(torch.tensor(batched), torch.tensor([good, bad]), atol=1e-5)


def test_reward_run_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does(tmp_path, tiny_model_dir):
    """Checkpoints hold the LoRA weights, the value head, AdamW, the RNG and the data position: resuming a
    6-step run from its step-3 checkpoint gives exactly the value head and adapter of the straight run."""
    data = write_jsonl(tmp_path / "prefs.jsonl", rows())
    common = {"data": str(data), "model": str(tiny_model_dir), "method": "reward", "max_steps": 6, "batch_size": 8,
              "learning_rate": 1e-2, "dtype": "float32", "seed": 4}
    train(build_config({**common, "output": str(tmp_path / "straight")}))
    resumed = build_config({**common, "output": str(tmp_path / "resumed"), "save_every": 3})
    train(resumed)
    step3 = tmp_path / "resumed" / "checkpoints" / "step-3"
    assert (step3 / "manifest.json").is_file()
    summary = train(build_config({**resumed.to_dict(), "resume": str(step3)}))
    assert summary["resumed_from"] == str(step3) and summary["steps"] == 6
    for name in ("value_head.safetensors", "adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


class _FixedDecoder(torch.nn.Module):
    """Stands in for a decoder: returns preset final hidden states."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids, attention_mask, use_cache, position_ids=None):  # as trainable.py calls a decoder
        return type("Output", (), {"last_hidden_state": self.hidden})()


class _FixedModel(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.decoder = _FixedDecoder(hidden)

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return None


def test_score_pooling_reads_the_last_answer_token_or_the_mean_or_sum_over_answer_tokens():
    """Hand derivation. Head weight (1, 0), bias 0.5, so a position's value is hidden[..., 0] + 0.5.
    Row 0: hidden[..., 0] = 1, 2, 3, 4, 0(pad); answer labels at positions 2 and 3.
      last = 4 + 0.5 = 4.5;  sum = (3 + 0.5) + (4 + 0.5) = 8.0;  mean = 8.0 / 2 = 4.0
    Row 1: hidden[..., 0] = 10, 20, 30, 40, 50; answer labels at positions 1, 2 and 4.
      last = 50 + 0.5 = 50.5;  sum = 20.5 + 30.5 + 50.5 = 101.5;  mean = 101.5 / 3 = 33.8333...
    Mean pooling scaled by answer_tokens = 3 (a training set's mean answer length): 12.0 and 101.5."""
    from tuneforge.reward_model import ScoredModel

    hidden = torch.zeros(2, 5, 2)
    hidden[0, :, 0] = torch.tensor([1.0, 2, 3, 4, 0])
    hidden[1, :, 0] = torch.tensor([10.0, 20, 30, 40, 50])
    hidden[:, :, 1] = 7.0  # ignored by the head
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 8, 9, -100, 3]])
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5), "labels": labels}
    scores = {}
    for pooling in ("last", "mean", "sum"):
        scored = ScoredModel(_FixedModel(hidden), hidden_size=2, pooling=pooling)
        with torch.no_grad():
            scored.value_head.weight.copy_(torch.tensor([[1.0, 0.0]]))
            scored.value_head.bias.fill_(0.5)
        scores[pooling] = scored(batch)
    assert torch.allclose(scores["last"], torch.tensor([4.5, 50.5]))
    assert torch.allclose(scores["mean"], torch.tensor([4.0, 101.5 / 3]))
    assert torch.allclose(scores["sum"], torch.tensor([8.0, 101.5]))
    scaled = ScoredModel(_FixedModel(hidden), hidden_size=2, pooling="mean", answer_tokens=3)
    with torch.no_grad():
        scaled.value_head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        scaled.value_head.bias.fill_(0.5)
    assert torch.allclose(scaled(batch), torch.tensor([12.0, 101.5]))


def test_last_token_reward_model_learns_and_its_loader_pools_the_same_way(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prefs.jsonl", rows())
    out = tmp_path / "rm"
    summary = train(build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(out), "method": "reward",
                                  "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "validation_split": 0.2,
                                  "reward_pooling": "last", "dtype": "float32"}))
    assert summary["pairwise_accuracy"] >= 0.9
    assert json.loads((out / "reward_config.json").read_text())["pooling"] == "last"
    rm = load_reward_model(out)
    assert rm.scored.pooling == "last"
    prompt = [{"role": "user", "content": "what is a"}]
    assert rm(prompt, "yes d") > rm(prompt, "no d")


def test_unknown_reward_pooling_is_refused():
    import pytest

    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="reward_pooling"):
        build_config({"data": "x.jsonl", "method": "reward", "reward_pooling": "max"})
