"""Many LoRA adapters over one base model in one batched forward, each row with its own adapter (or none).

    adapter = read_lora_adapter("runs/demo", model)           # plain tensors: (A, B, scale) per target Linear
    rows = AdapterRows(); install(model, adapter, rows)         # wrap the adapter's target Linears, once each
    rows.assign([adapter, None, adapter])                       # row 0 and 2 use it, row 1 is the base
    model(input_ids=...)                                        # y = base(x) + scale * (x @ A^T) @ B^T per row

The base weights are never merged or copied: each target `nn.Linear` is wrapped by `MultiLoraLinear`,
which adds, for every adapter present in the batch, that adapter's low-rank term to the rows that use it
(rows grouped by adapter, one pair of small matmuls per group and an `index_add_` back; S-LoRA/Punica do
the same with custom kernels). A wrapped Linear whose adapter set has no weights for it adds nothing.

Adapters that cannot be applied this way (DoRA, `modules_to_save`, trained biases or embeddings, Conv1D
layouts) are reported by `read_lora_adapter` returning None; the caller serves those merged instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import UserError

_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


@dataclass(eq=False)
class LoraAdapter:
    """One adapter's weights: {module name: (A [r, in], B [out, r], scale)}, on the model's device."""

    key: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in self.modules.values())


def _unsupported_reason(config: dict) -> str | None:
    if config.get("peft_type", "LORA") != "LORA":
        return f"peft_type {config.get('peft_type')}"
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            return flag
    if config.get("bias", "none") != "none":
        return f"bias={config.get('bias')}"
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        return "modules_to_save"
    return None


def linear_names(model: nn.Module) -> set[str]:
    """Names of the Linears an adapter may target (a wrapped one under its original name)."""
    modules = dict(model.named_modules())
    wrapped = {module.name for module in modules.values() if isinstance(module, MultiLoraLinear)}
    plain = {name for name, module in modules.items() if isinstance(module, nn.Linear)}
    return wrapped | {name for name in plain if name.removesuffix(".base") not in wrapped}


def read_lora_adapter(adapter_dir: Path | str, targets: set[str], device, dtype, key: str | None = None) -> LoraAdapter | None:
    """The adapter as plain tensors in the base's dtype and device, or None when it needs more than
    `y += scale * x A^T B^T` on the Linears named in `targets` (then serve it merged)."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights_file = adapter_dir / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors (tuneforge serves safetensors adapters only)")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if _unsupported_reason(config):
        return None
    tensors = load_file(str(weights_file), device="cpu")
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    adapter = LoraAdapter(key or str(adapter_dir))
    for tensor_name, a in tensors.items():
        if not tensor_name.endswith(_A_SUFFIX):
            if not tensor_name.endswith(_B_SUFFIX):
                return None  # embeddings, biases, saved modules: not a plain low-rank term
            continue
        module_name = tensor_name[: -len(_A_SUFFIX)].removeprefix("base_model.model.")
        b = tensors.get(tensor_name[: -len(_A_SUFFIX)] + _B_SUFFIX)
        if b is None or module_name not in targets:
            return None
        # As PEFT's LoraModel: per-module rank and alpha from the patterns, else the adapter's own.
        rank = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module_name), config["r"])
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module_name), config["lora_alpha"])
        if a.shape[0] != rank:
            raise UserError(f"{weights_file}: {module_name} has rank {a.shape[0]}, adapter_config.json says {rank}")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        to = dict(device=device, dtype=dtype)
        adapter.modules[module_name] = (a.to(**to).contiguous(), b.to(**to).contiguous(), float(scale))
    return adapter


class AdapterRows:
    """Which adapter each row of the next forward uses: groups of (row indices or None for all, adapter)."""

    def __init__(self):
        self.groups: list[tuple[torch.Tensor | None, LoraAdapter]] = []

    def assign(self, per_row: list[LoraAdapter | None], device=None) -> None:
        rows_of: dict[int, tuple[LoraAdapter, list[int]]] = {}
        for row, adapter in enumerate(per_row):
            if adapter is not None:
                rows_of.setdefault(id(adapter), (adapter, []))[1].append(row)
        groups = []
        for adapter, rows in rows_of.values():
            everyone = len(rows) == len(per_row)
            groups.append((None if everyone else torch.tensor(rows, device=device), adapter))
        self.groups = groups


class MultiLoraLinear(nn.Module):
    """A base Linear plus, per row, the low-rank term of that row's adapter (rows without one get the base)."""

    def __init__(self, base: nn.Linear, name: str, rows: AdapterRows):
        super().__init__()
        self.base, self.name, self.rows = base, name, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for row_index, adapter in self.rows.groups:
            weights = adapter.modules.get(self.name)
            if weights is None:
                continue
            a, b, scale = weights
            if row_index is None:
                y = y + (x @ a.t()) @ b.t() * scale
            else:
                delta = (x.index_select(0, row_index) @ a.t()) @ b.t() * scale
                y = y.index_add(0, row_index, delta.to(y.dtype))
        return y


def install(model: nn.Module, adapter: LoraAdapter, rows: AdapterRows) -> None:
    """Wrap each Linear the adapter targets (once; later adapters reuse the wrapper)."""
    for name in adapter.modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        current = getattr(parent, child)
        if isinstance(current, MultiLoraLinear):
            continue
        setattr(parent, child, MultiLoraLinear(current, name, rows))
