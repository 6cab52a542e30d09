"""Export on the embedded SmolLM2-135M-Instruct: a LoRA adapter -> GGUF f16 -> transformers -> same answers.

    pytest -m e2e tests/e2e/test_export_real.py

Training an adapter on CPU takes minutes, so the adapter here is PEFT's LoRA with small random B
matrices: merging it really changes every targeted weight, which is what the export must carry over.
About 45 s on an idle 2-core CPU (one base load, 6 short forwards, the GGUF write and read-back).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e

CONVERSATIONS = [
    [{"role": "user", "content": "My order #4521 never arrived. What should I do?"}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Classify: refund request, urgent"}],
    [{"role": "user", "content": "What is the capital of France?"}],
]


def test_gguf_f16_of_real_adapter_gives_the_merged_model_logits(tmp_path):
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export.gguf_writer import write_gguf
    from tuneforge.models import load_model

    base, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32, device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in CONVERSATIONS]
    ids = [tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]
    with torch.no_grad():
        with_adapter = [peft_model(x).logits for x in ids]
        with peft_model.disable_adapter():
            without = [peft_model(x).logits for x in ids]

    # What `tuneforge export --format gguf` does after loading the adapter (unit tests cover that loading;
    # a second load of the real base would double this test's time on a busy CPU).
    merged = peft_model.merge_and_unload(safe_merge=True)
    path = write_gguf(merged, tokenizer, tmp_path / "out" / "model.gguf", "f16")
    del merged, peft_model, base
    fields = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith(("llama.", "tokenizer.ggml.m"))}
    assert fields["llama.block_count"] == 30 and fields["llama.attention.head_count_kv"] == 3
    assert fields["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert fields["tokenizer.ggml.model"] == "gpt2"

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    agree, total = 0, 0
    for text, x, expected, before in zip(texts, ids, with_adapter, without, strict=True):
        assert loaded_tokenizer(text, return_tensors="pt")["input_ids"].tolist() == x.tolist()
        with torch.no_grad():
            got = loaded(x).logits
        # The adapter matters, and the GGUF carries it: the f16 error is far below the adapter's effect.
        adapter_effect = (expected - before).abs().max().item()
        export_error = (got - expected).abs().max().item()
        assert export_error < 0.1 * adapter_effect, (export_error, adapter_effect)
        agree += (got.argmax(-1) == expected.argmax(-1)).sum().item()
        total += x.shape[1]
    assert agree / total >= 0.99
