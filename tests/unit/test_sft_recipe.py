"""The SFT recipe end to end on a tiny random Llama: files, loss, what changed, accumulation invariance."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.recipes.sft import train


def run(tmp_path, tiny_model_dir, rows, name="out", **overrides):
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(tmp_path / name), **overrides})
    return config, train(config)


def test_lora_run_writes_peft_adapter_and_loss_falls(tmp_path, tiny_model_dir, qa_rows):
    config, summary = run(tmp_path, tiny_model_dir, qa_rows, epochs=10, learning_rate=3e-2, batch_size=4, validation_split=0.1,
                          dtype="float32")
    out = tmp_path / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    # The last epoch's mean, not its last step: at this learning rate single steps jump by +-0.5 and where they land
    # moves with the rounding of the sums (PEFT's forward and the fused one part after ~20 steps).
    last_epoch = losses[-9:]
    assert sum(last_epoch) / len(last_epoch) < 0.6 * losses[0]
    assert any(r["type"] == "valid" for r in records)
    for key in ("trained_tokens", "train_seconds", "tokens_per_second", "final_train_loss", "final_valid_loss", "model", "method"):
        assert key in summary
    assert summary["method"] == "sft" and summary["final_valid_loss"] is not None

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, out)
    # Exactly the LoRA matrices were trained: the base weights inside the adapter-wrapped model are unchanged.
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        plain_name = name.replace(".base_layer", "")
        assert torch.equal(value, original[plain_name]), name
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_full_fine_tune_writes_a_loadable_model(tmp_path, tiny_model_dir, qa_rows):
    _, summary = run(tmp_path, tiny_model_dir, qa_rows, full=True, max_steps=3, learning_rate=1e-3)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and summary["steps"] == 3 and summary["full"] is True


def test_batch_8_accumulation_1_equals_batch_1_accumulation_8(tmp_path, tiny_model_dir, qa_rows):
    """The loss is normalised over the whole accumulation window, so cutting a step into micro-batches
    of different sizes (with different padding) must give the same update."""
    rows = qa_rows[:8]
    for i, row in enumerate(rows):  # different answer lengths, so the normalisation actually matters
        row["messages"][1]["content"] = " ".join(["a"] * (1 + i % 4))
    # fp32: the invariance is exact arithmetic; bf16 rounds differently for differently shaped batches.
    common = dict(max_steps=1, learning_rate=1e-2, warmup_ratio=0.0, max_grad_norm=0.0, dtype="float32")
    run(tmp_path, tiny_model_dir, rows, name="b8", batch_size=8, gradient_accumulation=1, **common)
    run(tmp_path, tiny_model_dir, rows, name="b1", batch_size=1, gradient_accumulation=8, **common)
    a = load_file(str(tmp_path / "b8" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b1" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_padding_does_not_leak_into_logits_or_loss(tiny_model_dir):
    """A row right-padded by the project's own `collate` beside a longer one gives the logits of the document
    alone, and the recipe's summed token loss of the batch is the sum of each document's loss alone."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.batching import collate
    from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample
    from tuneforge.recipes.sft import micro_batch_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    short = TokenizedExample([1, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 6, 7])
    long = TokenizedExample([1, 8, 9, 10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 10, 11, 12, 13])
    together = collate([short, long], pad_id=0)
    assert together["input_ids"].shape == (2, 7) and together["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    with torch.no_grad():
        logits = model(input_ids=together["input_ids"], attention_mask=together["attention_mask"]).logits
        alone_short = model(**{k: v for k, v in collate([short], pad_id=0).items() if k != "labels"}).logits
        alone_long = model(**{k: v for k, v in collate([long], pad_id=0).items() if k != "labels"}).logits
        batch_loss, batch_targets = micro_batch_loss_sum(model, together)
        short_loss, short_targets = micro_batch_loss_sum(model, collate([short], pad_id=0))
        long_loss, long_targets = micro_batch_loss_sum(model, collate([long], pad_id=0))
    assert torch.allclose(logits[0, :4], alone_short[0], atol=1e-5)
    assert torch.allclose(logits[1], alone_long[0], atol=1e-5)
    assert batch_targets == short_targets + long_targets == 6
    assert float(batch_loss) == pytest.approx(float(short_loss + long_loss), rel=1e-5)


def test_resume_after_stop_matches_uninterrupted_run(tmp_path, tiny_model_dir, qa_rows):
    """Checkpoint at step 2, resume, and the final weights equal those of an uninterrupted 4-step run."""
    common = dict(max_steps=4, learning_rate=1e-2, batch_size=4, lora_dropout=0.1)
    run(tmp_path, tiny_model_dir, qa_rows, name="straight", **common)
    data = write_jsonl(tmp_path / "resumed.jsonl", qa_rows)
    first = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(tmp_path / "resumed"), **common,
                          "max_steps": 2, "save_every": 1})
    # Stop after 2 of 4 planned steps: train with total 4 but interrupt via max_steps is not the same
    # schedule, so instead run 4 steps with checkpoints and resume from the step-2 checkpoint.
    first = build_config({**first.to_dict(), "max_steps": 4, "save_every": 2, "keep_checkpoints": 5})
    train(first)
    import shutil

    from tuneforge.checkpoint import complete_checkpoints

    step2 = [p for p in complete_checkpoints(tmp_path / "resumed") if p.name == "step-2"][0]
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-4", ignore_errors=True)
    train(build_config({**first.to_dict(), "resume": str(step2)}))
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("bad, message", [({"lora_r": 0}, "lora_r"), ({"nonsense": 1}, "unknown key"), ({"epochs": "x"}, "epochs")])
def test_config_problems_are_reported(bad, message, tmp_path):
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match=message):
        build_config({"data": "x.jsonl", **bad})


def test_config_reports_every_problem_at_once():
    from tuneforge.errors import UserError

    with pytest.raises(UserError) as caught:
        build_config({"data": "x.jsonl", "lora_rnk": 8, "batch_size": "many"})
    assert "lora_rnk" in str(caught.value) and "batch_size" in str(caught.value)


def test_compiled_blocks_train_like_eager_ones(tmp_path, tiny_model_dir, qa_rows):
    """compile=true compiles each decoder block (dynamic shapes); the numbers stay those of eager mode."""
    common = {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "dtype": "float32", "seed": 1}
    run(tmp_path, tiny_model_dir, qa_rows, name="eager", **common)
    run(tmp_path, tiny_model_dir, qa_rows, name="compiled", compile=True, **common)

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]

    assert losses("compiled") == pytest.approx(losses("eager"), rel=1e-4)
