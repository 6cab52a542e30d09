"""The DPO recipe end to end on a tiny random Llama: files, preference accuracy rises, what changed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.recipes.dpo import train

LETTERS = "abcdefghijklmnopqrstuvwxy"


def preference_rows(n=40):
    """Prefer the next letter over the one after it; half in OpenAI DPO format, half prompt/chosen/rejected."""
    rows = []
    for i in range(n):
        letter = LETTERS[i % 23]
        chosen, rejected = LETTERS[i % 23 + 1], f"{LETTERS[i % 23 + 2]} no"
        if i % 2:
            rows.append({"prompt": f"what is {letter}", "chosen": chosen, "rejected": rejected})
        else:
            rows.append({"input": {"messages": [{"role": "user", "content": f"what is {letter}"}]},
                         "preferred_output": [{"role": "assistant", "content": chosen}],
                         "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return rows


def run(tmp_path, tiny_model_dir, name="out", **overrides):
    data = write_jsonl(tmp_path / f"{name}.jsonl", preference_rows())
    settings = {"data": str(data), "model": str(tiny_model_dir), "output": str(tmp_path / name), "method": "dpo",
                "epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "validation_split": 0.2, **overrides}
    config = build_config(settings)
    return train(config)


def assert_only_lora_changed(tiny_model_dir, out):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, out)
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, original[name.replace(".base_layer", "")]), name
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


# IPO regresses the summed log-ratio margin to 1/(2 beta): at DPO's learning rate it overshoots the target
# (the squared loss grows again), so it gets a smaller step.
@pytest.mark.parametrize("loss_type,beta,lr", [("sigmoid", 0.5, 1e-2), ("ipo", 0.5, 3e-3), ("simpo", 2.0, 1e-2)])
def test_preference_accuracy_rises_and_only_lora_changes(tmp_path, tiny_model_dir, loss_type, beta, lr):
    summary = run(tmp_path, tiny_model_dir, loss_type=loss_type, beta=beta, learning_rate=lr)
    out = tmp_path / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    valid_records = [r for r in records if r["type"] == "valid"]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in train_records[0], key
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    # The policy itself (reference-free log-probs) comes to prefer the chosen answers on held-out pairs.
    assert valid_records[0]["step"] == 0 and valid_records[-1]["logps/accuracies"] >= 0.9
    assert summary["preference_accuracy"] >= 0.9 and summary["train_preference_accuracy"] >= 0.9
    for key in ("trained_tokens", "train_seconds", "tokens_per_second", "final_train_loss", "final_valid_loss", "model", "method"):
        assert summary[key] is not None, key
    assert summary["method"] == "dpo" and summary["loss_type"] == loss_type
    assert_only_lora_changed(tiny_model_dir, out)


def test_rpo_term_raises_the_chosen_answers_likelihood_beyond_plain_dpo(tmp_path, tiny_model_dir):
    """Plain DPO only widens the chosen-rejected gap (both log-probs may fall); with rpo_alpha the chosen
    answer's own log-prob must end higher than under plain DPO, from the same seed and data."""
    run(tmp_path, tiny_model_dir, name="plain", max_steps=6, dtype="float32", seed=3, rpo_alpha=0.0)
    rpo = run(tmp_path, tiny_model_dir, name="rpo", max_steps=6, dtype="float32", seed=3, rpo_alpha=1.0)

    def last_chosen_logp(name):
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["type"] == "valid"][-1]["logps/chosen"]

    assert rpo["preference_accuracy"] >= 0.5
    assert last_chosen_logp("rpo") > last_chosen_logp("plain")


def test_dpo_from_an_sft_adapter_uses_it_as_reference(tmp_path, tiny_model_dir):
    """Starting from an adapter, step 0 has policy == reference: every implicit reward is exactly 0."""
    first = run(tmp_path, tiny_model_dir, name="first", max_steps=2)
    test = [{"messages": [{"role": "user", "content": f"what is {c}"}, {"role": "assistant", "content": n}]}
            for c, n in zip("abc", "bcd", strict=True)]
    eval_data = write_jsonl(tmp_path / "test.jsonl", test)
    summary = run(tmp_path, tiny_model_dir, name="second", init_adapter=first["output"], max_steps=4, eval_data=str(eval_data))
    records = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "valid" and records[0]["rewards/chosen"] == 0 and records[0]["rewards/accuracies"] == 0.5
    assert summary["steps"] == 4 and (tmp_path / "second" / "adapter_model.safetensors").is_file()
    # --eval-data answers the test set with the tuned policy, as after SFT.
    assert summary["eval"]["n"] == 3 and 0 <= summary["eval"]["exact_match"] <= 1


def test_full_fine_tune_runs(tmp_path, tiny_model_dir):
    summary = run(tmp_path, tiny_model_dir, full=True, max_steps=2, learning_rate=1e-4)
    assert summary["full"] is True and (tmp_path / "out" / "model.safetensors").is_file()
