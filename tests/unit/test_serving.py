"""The serving engine: per-row adapters equal PEFT, continuous batching equals generating alone, and the
chat API's generation features (penalties, logit_bias, logprobs, seed, n, stop, cancel, constraints)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.tiny_models import build_tiny_model
from tuneforge.generation import generate_chat
from tuneforge.models import load_model
from tuneforge.multi_lora import AdapterRows, install, linear_names, read_lora_adapter
from tuneforge.serving import Constraint, Engine, GenerationRequest, RequestError

# Three adapters that differ in what PEFT's scale depends on: plain alpha/r, rsLoRA's alpha/sqrt(r) on a
# subset of modules, and per-module rank and alpha patterns.
ADAPTER_CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "rslora": dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
    "patterns": dict(r=2, lora_alpha=4, target_modules="all-linear", rank_pattern={"down_proj": 6},
                     alpha_pattern={"o_proj": 12}),
}


def fp32_cpu(model, adapter):
    return load_model(model, adapter, dtype=torch.float32, device="cpu")


def make_lora(base_dir, folder, seed: int, **config):
    """A PEFT adapter with random A and B (B is zero at PEFT's init, which would make every adapter the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(task_type="CAUSAL_LM", **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def served(request, tmp_path_factory):
    """(base dir, {name: adapter dir}) for a tiny random model of each architecture."""
    root = tmp_path_factory.mktemp(f"serving-{request.param}")
    base = build_tiny_model(request.param, root / "base")
    adapters = {name: make_lora(base, root / name, seed, **config)
                for seed, (name, config) in enumerate(ADAPTER_CONFIGS.items())}
    return str(base), adapters


PROMPTS = [
    [{"role": "user", "content": "what is the answer"}],
    [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "hello what is a b c"}],
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "please name the category of order 1 2 3"}],
]


def test_mixed_adapter_batch_gives_each_row_its_own_peft_logits(served):
    """One left-padded batch: rows 0-2 with one adapter each, row 3 with none. Each row's logits over its own
    tokens equal PEFT's model for that adapter (unmerged, run alone), to fp32 rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.data.tokenize import tokenize_prompt

    base_dir, adapter_dirs = served
    model, tokenizer = fp32_cpu(base_dir, None)
    rows = AdapterRows()
    adapters = []
    for folder in adapter_dirs.values():
        adapter = read_lora_adapter(folder, linear_names(model), "cpu", torch.float32)
        install(model, adapter, rows)
        adapters.append(adapter)
    prompts = [tokenize_prompt(tokenizer, messages) for messages in PROMPTS]
    width = max(map(len, prompts))
    input_ids = torch.full((4, width), tokenizer.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    rows.assign([*adapters, None])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for row, folder in enumerate([*adapter_dirs.values(), None]):
        reference = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if folder is not None:
            reference = PeftModel.from_pretrained(reference, folder)
        with torch.no_grad():
            expected = reference(input_ids=torch.tensor([prompts[row]])).logits[0]
            without = plain(input_ids=torch.tensor([prompts[row]])).logits[0]
        got = logits[row, width - len(prompts[row]):]
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (row, (got - expected).abs().max())
        # The adapter really moves the logits, so the comparison means something.
        assert folder is None or (expected - without).abs().max() > 0.05


class Collector:
    """`emit` for the engine: every message, and each request's final one."""

    def __init__(self):
        self.messages: list[dict] = []

    def __call__(self, message: dict) -> None:
        self.messages.append(message)

    def result(self, request_id: str) -> dict:
        finals = [m for m in self.messages if m["id"] == request_id and ("result" in m or "error" in m)]
        assert len(finals) == 1, finals
        assert "result" in finals[0], finals[0]
        return finals[0]["result"]

    def pieces(self, request_id: str, index: int = 0) -> list[str]:
        return [m["token"] for m in self.messages if m["id"] == request_id and m.get("index") == index and "token" in m]


def request(request_id: str, messages, **fields) -> GenerationRequest:
    return GenerationRequest.from_json({"id": request_id, "messages": messages, **fields})


def alone(base_dir, adapter, messages, **options) -> dict:
    """What the model (an adapter merged into its base) answers to one conversation by itself."""
    model, tokenizer = fp32_cpu(base_dir if adapter is None else None, adapter)
    return generate_chat(model, tokenizer, [messages], **options)[0]


def test_continuous_batching_joins_and_leaves_and_equals_each_model_alone(served):
    """Requests arrive between decode steps, over three adapters and the base, with different lengths (so
    rows leave at different steps); every greedy answer equals generate_chat on that adapter's merged model."""
    base_dir, adapter_dirs = served
    names = [*adapter_dirs, None]
    engine = Engine(load=fp32_cpu, background=False)
    emit = Collector()
    for name in names:  # load the base and every adapter first, so that arrivals meet a running batch
        engine.submit(request(f"warm-{name}", PROMPTS[0], model=base_dir, adapter=adapter_dirs.get(name), max_new_tokens=1), emit)
    engine.run_until_idle()
    plan = []  # (request id, adapter dir, messages, max_new_tokens)
    for number in range(8):
        name = names[number % 4]
        plan.append((f"r{number}", adapter_dirs.get(name), PROMPTS[(number * 3) % 4], 3 + 2 * number))
    for number, (request_id, adapter, messages, max_new) in enumerate(plan):
        engine.submit(request(request_id, messages, model=base_dir, adapter=adapter, max_new_tokens=max_new), emit)
        for _ in range(number % 3):  # 0-2 decode steps before the next arrival
            engine.step()
    engine.run_until_idle()
    assert engine.stats["joined_running"] >= 3 and engine.stats["max_rows"] >= 4, engine.stats
    for request_id, adapter, messages, max_new in plan:
        expected = alone(base_dir, adapter, messages, max_new_tokens=max_new)
        got = emit.result(request_id)
        assert got["choices"][0]["text"] == expected["text"], (request_id, adapter)
        assert got["choices"][0]["finish_reason"] == expected["finish_reason"]
        assert (got["prompt_tokens"], got["completion_tokens"]) == (expected["prompt_tokens"], expected["completion_tokens"])
    assert len(engine._bases) == 1  # one base in memory for all three adapters
