"""Many LoRA adapters over one base model in one batched forward, each row with its own adapter (or none).

    adapter = read_lora_adapter("runs/demo", model)           # plain tensors: (A, B, scale) per target Linear
    rows = AdapterRows(); install(model, adapter, rows)         # wrap the adapter's target Linears, once each
    rows.assign([adapter, None, adapter])                       # row 0 and 2 use it, row 1 is the base
    model(input_ids=...)                                        # y = base(x) + scale * (x @ A^T) @ B^T per row

The base weights are never merged or copied: each target `nn.Linear` is wrapped by `MultiLoraLinear`,
which adds each row's adapter term to the base output. A batch with one adapter for every row is one pair of
matmuls (its scale folded into B, as below). A batch that mixes adapters is computed either

  * concatenated: the present adapters side by side, A_cat [sum r, in] and B_cat [out, sum r];
    t = x A_cat^T, a per-row 0/1 mask keeps the row's own adapter's columns, y += t B_cat^T. Three ops per
    Linear whatever the number of adapters, for n times the term's multiply-adds; A_cat/B_cat are cached
    per batch composition. Or
  * grouped: per adapter, its rows' `index_select`, two matmuls and an `index_add_` back,

per Linear by `concatenation_pays` (the concatenated form wins until its extra multiply-adds outgrow the ops
it saves: long prefills, many rows, large ranks). S-LoRA and Punica write custom kernels for this;
`bench/multi_lora_delta.py` also times their gather + bmm shape. A Linear no present adapter targets adds
nothing.

Adapters that cannot be applied this way (DoRA, `modules_to_save`, trained biases or embeddings, Conv1D
layouts) are reported by `read_lora_adapter` returning None; the caller serves those merged instead.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

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


# The concatenated form multiplies every row by every present adapter: n times the grouped loop's
# multiply-adds, for 3 ops per Linear instead of ~4 per adapter. It pays while one adapter's share of those
# multiply-adds (tokens x mean rank x (in + out)) stays below these limits, measured on CPU with
# `bench/multi_lora_delta.py --crossover` (docs/benchmarks.md, "Serving (issue 19)"). bf16's limit is higher
# because there its small ops cost more and its matmuls less; other dtypes use it too.
_CONCATENATED_MAX_MACS_PER_ADAPTER = {torch.float32: 600_000, torch.float64: 600_000}
_CONCATENATED_MAX_MACS_PER_ADAPTER_HALF = 9_000_000


def concatenation_pays(tokens: int, rank_total: int, adapters: int, in_features: int, out_features: int,
                       dtype) -> bool:
    """Whether one Linear's term for `adapters` adapters of summed rank `rank_total` is cheaper concatenated
    than looped over the adapters."""
    limit = _CONCATENATED_MAX_MACS_PER_ADAPTER.get(dtype, _CONCATENATED_MAX_MACS_PER_ADAPTER_HALF)
    return tokens * rank_total * (in_features + out_features) <= limit * adapters


@dataclass(eq=False)
class _Stack:
    """The adapters of one batch composition that target one Linear: (slot, A, B, scale) each, and, once the
    concatenated path has asked, A_cat = [A_1; ...; A_n] and B_cat = [s_1 B_1 ... s_n B_n]."""

    members: list[tuple[int, torch.Tensor, torch.Tensor, float]]
    layout: tuple[tuple[int, int], ...] = field(init=False)  # (slot, rank) per member: the mask's key
    rank_total: int = field(init=False)
    a_cat: torch.Tensor | None = None
    b_cat: torch.Tensor | None = None
    column_slot: torch.Tensor | None = None  # [sum of ranks]: the slot of the adapter owning each column

    def __post_init__(self):
        self.layout = tuple((slot, a.shape[0]) for slot, a, _, _ in self.members)
        self.rank_total = sum(rank for _, rank in self.layout)


class AdapterRows:
    """Which adapter each row of the next forward uses, and what the wrapped Linears derive from that.

    `strategy` is how a batch that mixes adapters gets their terms: "concatenated" (three ops per Linear
    whatever the number of adapters), "grouped" (one pair of matmuls per adapter), or "auto", which picks per
    Linear by `concatenation_pays`. A batch with one adapter for every row is one pair of matmuls either way.

    A_cat and B_cat are kept for the last `max_compositions` batch compositions (sets of adapters present), so
    steady decoding concatenates once; each composition holds at most one copy of its adapters' weights."""

    def __init__(self, strategy: str = "auto", max_compositions: int = 2):
        if strategy not in ("auto", "concatenated", "grouped"):
            raise ValueError(f"strategy {strategy!r}: use auto, concatenated or grouped")
        self.strategy, self.max_compositions = strategy, max_compositions
        self.per_row: tuple[LoraAdapter | None, ...] = ()
        self.device = None
        self.everyone: LoraAdapter | None = None  # the one adapter of every row, when that is the batch
        self.present: tuple[LoraAdapter, ...] = ()  # the distinct adapters; a row's slot is its position here
        self.row_slot: torch.Tensor | None = None  # [rows]: each row's slot, -1 for a row without an adapter
        self.rows_of_slot: list[torch.Tensor] = []
        self.concatenations = 0  # Linears whose A_cat/B_cat were built: how tests see the cache work
        self._stacks: OrderedDict[tuple[LoraAdapter, ...], dict[str, _Stack | None]] = OrderedDict()
        self._masks: dict[tuple, torch.Tensor] = {}

    def assign(self, per_row: list[LoraAdapter | None], device=None) -> None:
        per_row = tuple(per_row)
        same = len(per_row) == len(self.per_row) and all(a is b for a, b in zip(per_row, self.per_row, strict=True))
        if same and device == self.device:
            return  # a steady decode step: masks and row indices still hold
        self.per_row, self.device, self._masks = per_row, device, {}
        # Sorted by identity, so the same adapters in any row order are one composition (one cache entry).
        self.present = tuple(sorted({id(a): a for a in per_row if a is not None}.values(), key=id))
        slot_of = {id(adapter): slot for slot, adapter in enumerate(self.present)}
        slots = [-1 if a is None else slot_of[id(a)] for a in per_row]
        self.everyone = self.present[0] if len(self.present) == 1 and -1 not in slots else None
        self.row_slot = torch.tensor(slots, device=device)
        self.rows_of_slot = [torch.tensor([row for row, s in enumerate(slots) if s == slot], device=device)
                             for slot in range(len(self.present))]
        if not self.present:
            return
        if self.present in self._stacks:
            self._stacks.move_to_end(self.present)
        else:
            self._stacks[self.present] = {}
            while len(self._stacks) > self.max_compositions:
                self._stacks.popitem(last=False)

    def stack(self, name: str) -> _Stack | None:
        """The present adapters that target Linear `name` (None when none does)."""
        stacks = self._stacks[self.present]
        if name not in stacks:
            members = [(slot, *adapter.modules[name]) for slot, adapter in enumerate(self.present)
                       if name in adapter.modules]
            stacks[name] = _Stack(members) if members else None
        return stacks[name]

    def concatenated(self, stack: _Stack) -> tuple[torch.Tensor, torch.Tensor]:
        """A_cat [sum r, in] and B_cat [out, sum r], each adapter's scale folded into its columns of B_cat (in
        fp32 arithmetic, rounded once to the weights' dtype, so a bf16 scale is not rounded on its own)."""
        if stack.a_cat is None:
            a_parts = [a for _, a, _, _ in stack.members]
            stack.a_cat = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts)
            stack.b_cat = torch.cat([(b.float() * scale).to(b.dtype) for _, _, b, scale in stack.members], dim=1)
            stack.column_slot = torch.tensor([slot for slot, a, _, _ in stack.members for _ in range(a.shape[0])],
                                             device=stack.a_cat.device)
            self.concatenations += 1
        return stack.a_cat, stack.b_cat

    def mask(self, stack: _Stack, dtype) -> torch.Tensor:
        """[rows, sum r]: 1 where the column belongs to the row's own adapter, else 0 (all 0 for a row
        without one); shared by every Linear with the same column layout until the rows change."""
        key = (stack.layout, dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = (self.row_slot.to(stack.column_slot.device)[:, None] == stack.column_slot[None, :]).to(dtype)
            self._masks[key] = mask
        return mask


def _add_product(y: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y += t @ b^T over the last dimension, in place (one fused op)."""
    y.view(-1, y.shape[-1]).addmm_(t.reshape(-1, t.shape[-1]), b.t())
    return y


class MultiLoraLinear(nn.Module):
    """A base Linear plus, per row, the low-rank term of that row's adapter (rows without one get the base)."""

    def __init__(self, base: nn.Linear, name: str, rows: AdapterRows):
        super().__init__()
        self.base, self.name, self.rows = base, name, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_adapter_terms(x, self.base(x).contiguous())

    def add_adapter_terms(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y (this Linear's base output for x, contiguous; updated in place) plus each row's adapter term, in
        y's dtype. Rows are x's first dimension; a decode step is [rows, 1, in], a prefill [rows, seq, in]."""
        rows = self.rows
        stack = rows.stack(self.name) if rows.present else None
        if stack is None:
            return y
        if rows.everyone is not None:  # one adapter, every row: A and the scaled B, no mask
            a, b = rows.concatenated(stack)
            return _add_product(y, F.linear(x, a), b)
        tokens = x.numel() // x.shape[-1]
        concatenate = rows.strategy == "concatenated" or (
            rows.strategy == "auto"
            and concatenation_pays(tokens, stack.rank_total, len(stack.members), x.shape[-1], y.shape[-1], x.dtype)
        )
        if concatenate:
            # t holds every present adapter's projection of every row; the mask keeps each row's own.
            a_cat, b_cat = rows.concatenated(stack)
            t = F.linear(x, a_cat)
            mask = rows.mask(stack, t.dtype)
            t.mul_(mask.view(mask.shape[0], *[1] * (x.dim() - 2), mask.shape[1]))
            return _add_product(y, t, b_cat)
        for slot, a, b, scale in stack.members:
            row_index = rows.rows_of_slot[slot]
            delta = F.linear(F.linear(x.index_select(0, row_index), a), b)
            y.index_add_(0, row_index, delta.to(y.dtype), alpha=scale)
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
