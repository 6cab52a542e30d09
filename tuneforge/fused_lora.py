"""LoRA's Linear as one autograd function: PEFT's modules and weights, fewer passes over the activations.

    model = get_peft_model(base, LoraConfig(...))   # PEFT builds, saves and loads the adapter as always
    fuse_lora_linears(model)                        # same parameters, same outputs, a faster forward/backward

PEFT's `lora.Linear.forward` on a bf16 base with fp32 adapter weights casts the input to fp32 (its
`_cast_input_dtype`), lets autocast cast it back to bf16 for `lora_A`, runs `lora_B`, multiplies by the
scaling and adds, each a separate op with its own backward: on a CPU profile of the SmolLM2 LoRA step, dtype
copies were 17% and elementwise multiplies 14% of the time against 36% for the matmuls that are the work.
Here the same sum, y = x W^T + b + s (x A^T) B^T, is four matmuls forward and five backward in the base's
dtype, with s folded into B's cast once per call and no full-size temporary beyond the output:

    forward:  u = x A^T            [T, r]     y = x W^T (+ b);  y += u (s B)^T
    backward: g_u = g_y (s B)      [T, r]     dL/dB = s g_y^T u    dL/dA = g_u^T x    g_x = g_y W + g_u A

The adapter's gradients come out in fp32 (the master weights' dtype), rounded from the compute dtype like
autocast's. What PEFT does beyond plain LoRA (dropout > 0, DoRA and other variants, several active adapters,
mixed-adapter batches, merged or disabled adapters, quantised base layers) keeps PEFT's own forward: the
fused path only takes a call it computes exactly as PEFT would.
"""

from __future__ import annotations

import torch
from torch import nn


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        dtype = weight.dtype
        x2d = x.reshape(-1, x.shape[-1]).to(dtype)
        a = lora_a.to(dtype)
        b_scaled = (lora_b * scale).to(dtype)
        u = x2d @ a.t()
        y = x2d @ weight.t() if bias is None else torch.addmm(bias.to(dtype), x2d, weight.t())
        y.addmm_(u, b_scaled.t())
        ctx.save_for_backward(x2d, u, weight, a, b_scaled)
        ctx.scale, ctx.x_shape, ctx.x_dtype = scale, x.shape, x.dtype
        ctx.master_dtypes = (lora_a.dtype, lora_b.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2d, u, weight, a, b_scaled = ctx.saved_tensors
        g = grad_y.reshape(-1, weight.shape[0]).to(weight.dtype)
        g_u = g @ b_scaled
        grad_a = grad_b = grad_x = None
        if ctx.needs_input_grad[3]:
            grad_a = (g_u.t() @ x2d).to(ctx.master_dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ u).to(ctx.master_dtypes[1]).mul_(ctx.scale)
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_u, a).reshape(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None


def _fusable_adapter(module) -> str | None:
    """The one adapter this call can compute fused, or None when PEFT's forward must run."""
    if module.disable_adapters or module.merged:
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or module.use_dora.get(name, False):
        return None
    if not isinstance(module.lora_dropout[name], nn.Identity) or getattr(module, "lora_bias", {}).get(name, False):
        return None
    base = module.get_base_layer()
    if type(base) is not nn.Linear or base.weight.requires_grad:  # quantised or trained bases: PEFT's path
        return None
    return name


def _fused_forward(module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = None if args or kwargs else _fusable_adapter(module)
    if name is None:
        return type(module).__mro__[1].forward(module, x, *args, **kwargs)
    base = module.get_base_layer()
    return _LoraLinear.apply(x, base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                             float(module.scaling[name]))


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(peft_class: type) -> type:
    # A subclass per PEFT class keeps isinstance checks, state_dict keys, save/merge/unload exactly PEFT's; only
    # forward differs, and it hands every call it cannot compute exactly back to PEFT's.
    if peft_class not in _FUSED_CLASSES:
        _FUSED_CLASSES[peft_class] = type(f"Fused{peft_class.__name__}", (peft_class,), {"forward": _fused_forward})
    return _FUSED_CLASSES[peft_class]


def fuse_lora_linears(model: nn.Module) -> int:
    """Give each of the model's PEFT LoRA Linears the fused forward; returns how many. Idempotent."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = _fused_class(LoraLinear)
            count += 1
        elif type(module) in _FUSED_CLASSES.values():
            count += 1
    return count
