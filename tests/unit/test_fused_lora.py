"""The fused LoRA Linear (tuneforge/fused_lora.py) against PEFT's own forward on the same modules and weights.

y = x W^T + b + s (x A^T) B^T, so in fp32 the outputs and every gradient (x, A, B) must agree with PEFT's to
rounding; in bf16 both round the same products to bf16, so they agree to bf16's precision. Every case PEFT
computes differently (dropout, DoRA, disabled adapters, mixed-adapter batches) must go to PEFT's forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tuneforge.fused_lora import fuse_lora_linears


class TwoLinears(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.up = nn.Linear(24, 40, bias=bias)
        self.down = nn.Linear(40, 24, bias=bias)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def peft_pair(dtype=torch.float32, bias=True, **lora):
    """(PEFT's model, the same model fused): identical weights, B non-zero so the adapter term counts."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = TwoLinears(bias).to(dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], **lora))
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = torch.randn_like(parameter, dtype=torch.float32) * 0.3
    fused = copy.deepcopy(model)
    assert fuse_lora_linears(fused) == 2
    return model, fused


def run(model, x, dtype):
    x = x.clone().requires_grad_(True)
    context = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.enable_grad()
    with context:
        y = model(x)
    (y.float() ** 2).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_outputs_and_gradients_equal_peft(bias):
    peft_model, fused = peft_pair(bias=bias)
    x = torch.randn(3, 5, 24)
    y, gx, grads = run(peft_model, x, torch.float32)
    fy, fgx, fgrads = run(fused, x, torch.float32)
    assert torch.allclose(fy, y, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fgx, gx, atol=1e-5, rtol=1e-5)
    assert grads.keys() == fgrads.keys() and len(grads) == 4
    for name in grads:
        assert fgrads[name].dtype == torch.float32
        assert torch.allclose(fgrads[name], grads[name], atol=1e-4, rtol=1e-5), name


def test_bf16_base_under_autocast_matches_peft_to_bf16_precision():
    peft_model, fused = peft_pair(dtype=torch.bfloat16)
    for model in (peft_model, fused):  # as trainable.build_model: a bf16 base, fp32 adapter master weights
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    x = torch.randn(4, 6, 24, dtype=torch.bfloat16)
    y, gx, grads = run(peft_model, x, torch.bfloat16)
    fy, fgx, fgrads = run(fused, x, torch.bfloat16)
    assert fy.dtype == y.dtype == torch.bfloat16

    def close(a, b):  # relative to the tensor's scale: bf16 keeps 8 bits of mantissa
        return float((a.float() - b.float()).abs().max()) <= 0.03 * float(b.float().abs().max())

    assert close(fy, y) and close(fgx, gx)
    for name in grads:
        assert fgrads[name].dtype == torch.float32 and close(fgrads[name], grads[name]), name


def test_only_the_adapter_trains_and_the_base_gets_no_gradient():
    _, fused = peft_pair()
    run(fused, torch.randn(2, 3, 24), torch.float32)
    for name, parameter in fused.named_parameters():
        assert (parameter.grad is not None) == ("lora_" in name), name


def test_disabled_adapter_gives_the_base_output():
    peft_model, fused = peft_pair()
    x = torch.randn(2, 24)
    with torch.no_grad():
        with fused.disable_adapter():
            disabled = fused(x)
        base = fused.get_base_model()
        expected = base.down.base_layer(torch.relu(base.up.base_layer(x)))
        assert torch.allclose(disabled, expected, atol=1e-6)
        assert not torch.allclose(fused(x), expected, atol=1e-3)  # the adapter is back on afterwards


@pytest.mark.parametrize("lora", [{"lora_dropout": 0.5}, {"use_dora": True}])
def test_what_peft_computes_differently_runs_peft_forward(lora):
    peft_model, fused = peft_pair(**lora)
    from tuneforge import fused_lora

    calls = []

    real_apply = fused_lora._LoraLinear.apply
    fused_lora._LoraLinear.apply = lambda *args: calls.append(args) or real_apply(*args)
    try:
        torch.manual_seed(1)
        peft_out = peft_model(torch.ones(2, 24))
        torch.manual_seed(1)
        fused_out = fused(torch.ones(2, 24))
    finally:
        fused_lora._LoraLinear.apply = real_apply
    assert calls == []
    assert torch.allclose(fused_out, peft_out, atol=1e-6)


def test_fused_adapter_saves_and_loads_as_plain_peft(tmp_path):
    from peft import PeftModel

    _, fused = peft_pair()
    fused.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(TwoLinears(True), tmp_path)  # the same base: drawn from the same seed
    x = torch.randn(2, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(x), fused(x), atol=1e-5)
