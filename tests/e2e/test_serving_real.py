"""The serving engine on the embedded model (SmolLM2-135M-Instruct): two LoRA adapters and the base answer
concurrent requests from one batch, each exactly as that model answers alone."""

from __future__ import annotations

import threading

import pytest
import torch

from tuneforge.generation import generate_chat
from tuneforge.models import DEFAULT_MODEL, load_model, resolve_model
from tuneforge.serving import Engine, GenerationRequest

pytestmark = pytest.mark.e2e

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about tea.", "What is 12 times 7?"]


def fp32(model, adapter):
    return load_model(model, adapter, dtype=torch.float32)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two all-linear r=16 adapters with random B (PEFT initialises B to zero, which would be the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for seed in (1, 2):
        base = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL).path, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        folder = tmp_path_factory.mktemp(f"adapter{seed}")
        model.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_concurrent_requests_over_two_adapters_and_the_base_equal_each_model_alone(adapters):
    engine = Engine(load=fp32)  # the scheduler thread, as in the inference process
    done = threading.Event()
    answers: dict[str, dict] = {}

    def emit(message: dict) -> None:
        if "result" in message or "error" in message:
            answers[message["id"]] = message
            if len(answers) == 6:
                done.set()

    plan = [(f"q{i}", [None, *adapters][i % 3], QUESTIONS[i % 4]) for i in range(6)]
    for request_id, adapter, question in plan:
        engine.submit(GenerationRequest(id=request_id, model=DEFAULT_MODEL, adapter=adapter, max_new_tokens=24,
                                        messages=[{"role": "user", "content": question}]), emit)
    assert done.wait(600)
    engine.close()
    texts = {}
    for request_id, adapter, question in plan:
        model, tokenizer = fp32(DEFAULT_MODEL, adapter)
        expected = generate_chat(model, tokenizer, [[{"role": "user", "content": question}]], max_new_tokens=24)[0]
        assert "result" in answers[request_id], answers[request_id]
        got = answers[request_id]["result"]["choices"][0]
        assert got["text"] == expected["text"], (request_id, adapter, got["text"], expected["text"])
        texts[(adapter, question)] = got["text"]
    # The adapters change the answers, so the comparison is not the base three times: some adapter's answer
    # differs from the base's answer to the same question.
    base, tokenizer = fp32(DEFAULT_MODEL, None)
    base_answers = {q: generate_chat(base, tokenizer, [[{"role": "user", "content": q}]], max_new_tokens=24)[0]["text"]
                    for q in QUESTIONS}
    assert any(text != base_answers[question] for (adapter, question), text in texts.items() if adapter is not None)
    assert engine.stats["max_rows"] >= 2 and len(engine._bases) == 1
