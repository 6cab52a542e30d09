"""python bench/multi_lora_delta.py [--dtype fp32|bf16] [--crossover [--ranks 16,64]]: the time of one decode
step's LoRA terms in a batch that mixes adapters (tuneforge/multi_lora.py), for the embedded model's Linears.

Every Linear of SmolLM2-135M-Instruct (read from its config.json: 30 layers x q, k, v, o, gate, up, down) is
wrapped by `MultiLoraLinear` over random weights; eight random r=16 adapters target all of them. One step is
what a decode step asks of the wrappers: `AdapterRows.assign` for the step's rows, then each Linear's adapter
terms added to its base output ([rows, 1, in] in, [rows, 1, out] out), rows shared round-robin between the
adapters in the batch. Compared, at rows 1/4/16/64 and 1/2/4/8 adapters in the batch:

  * the old loop (the forward tuneforge had before issue 19, copied below): per adapter index_select, two
    matmuls, scale, index_add;
  * `concatenated`: the adapters present side by side, three ops per Linear whatever their number;
  * gather + bmm (Punica's BGMV shape, written here only to compare): each row's A and B gathered, two bmm;
  * `auto`: what the engine runs, concatenated or grouped per Linear by `concatenation_pays`;
and, for scale, the base Linears of the same step.

`--crossover` times the grouped loop against the concatenated form where the concatenated form's extra
multiply-adds grow (more rows, prefill shapes, rank 64): the measurement behind `concatenation_pays`.

Torch runs one thread: these are small ops whose cost is mostly per-op overhead, and the machine's other core
may be busy. Each figure is the best of several rounds in which the paths take turns (the least disturbed by
other work). Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from tuneforge.models import DEFAULT_MODEL, resolve_model
from tuneforge.multi_lora import AdapterRows, LoraAdapter, MultiLoraLinear, concatenation_pays

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """{suffix: (in, out)} of a Llama-style decoder layer's Linears."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    return {
        "self_attn.q_proj": (hidden, config["num_attention_heads"] * head_dim),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (config["num_attention_heads"] * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }


class Setup:
    """Wrapped random Linears of every layer and random adapters over them, in one dtype."""

    def __init__(self, config: dict, layers: int, adapters: int, rank: int, dtype):
        generator = torch.Generator().manual_seed(0)
        shapes = linear_shapes(config)
        self.names = [f"model.layers.{layer}.{suffix}" for layer in range(layers) for suffix in shapes]
        self.shape = {name: shapes[name.split(".", 3)[3]] for name in self.names}
        self.linears = {name: nn.Linear(*self.shape[name], bias=False, dtype=dtype) for name in self.names}
        self.adapters = []
        for number in range(adapters):
            adapter = LoraAdapter(f"adapter{number}")
            for name in self.names:
                fan_in, fan_out = self.shape[name]
                a = (torch.randn(rank, fan_in, generator=generator) / fan_in**0.5).to(dtype)
                b = (torch.randn(fan_out, rank, generator=generator) * 0.01).to(dtype)
                adapter.modules[name] = (a, b, 2.0)
            self.adapters.append(adapter)


def old_groups(per_row):
    """The old AdapterRows.assign: (row indices or None for all, adapter) per adapter present."""
    rows_of = {}
    for row, adapter in enumerate(per_row):
        if adapter is not None:
            rows_of.setdefault(id(adapter), (adapter, []))[1].append(row)
    return [(None if len(rows) == len(per_row) else torch.tensor(rows), adapter) for adapter, rows in rows_of.values()]


def old_terms(groups, name, x, y):
    """The old MultiLoraLinear.forward after the base."""
    for row_index, adapter in groups:
        a, b, scale = adapter.modules[name]
        if row_index is None:
            y = y + (x @ a.t()) @ b.t() * scale
        else:
            delta = (x.index_select(0, row_index) @ a.t()) @ b.t() * scale
            y = y.index_add(0, row_index, delta.to(y.dtype))
    return y


class GatherBmm:
    """Punica's BGMV shape on CPU: each row's A and B (scale folded in) gathered from a stack, then two bmm."""

    def __init__(self, setup: Setup, adapters: list[LoraAdapter]):
        self.stacks = {
            name: (
                torch.stack([a.modules[name][0] for a in adapters]),
                torch.stack([a.modules[name][1] * a.modules[name][2] for a in adapters]),
            )
            for name in setup.names
        }

    def terms(self, slots, name, x, y):
        a_stack, b_stack = self.stacks[name]
        t = torch.bmm(x, a_stack.index_select(0, slots).transpose(1, 2))
        return y + torch.bmm(t, b_stack.index_select(0, slots).transpose(1, 2))


def best_ms(steps: dict, rounds: int) -> dict[str, float]:
    """ms per step of each of `steps`, the best of `rounds` rounds; the paths take turns within a round so
    that a change in the machine's load falls on all of them; each sample lasts about 5 ms, short enough for
    some to run undisturbed on a busy machine."""
    calls = {}
    for path, step in steps.items():
        step()  # warm-up: first-call allocations, the concatenation cache
        start = time.perf_counter()
        step()
        calls[path] = max(1, int(0.005 / max(time.perf_counter() - start, 1e-6)))
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for path, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls[path]):
                step()
            best[path] = min(best[path], (time.perf_counter() - start) / calls[path])
    return {path: seconds * 1e3 for path, seconds in best.items()}


def inputs(setup: Setup, rows: int, seq: int, dtype):
    generator = torch.Generator().manual_seed(1)
    xs = {fan_in: torch.randn(rows, seq, fan_in, generator=generator).to(dtype) for fan_in, _ in setup.shape.values()}
    ys = {name: torch.zeros(rows, seq, setup.shape[name][1], dtype=dtype) for name in setup.names}
    return xs, ys


def make_step(path: str, setup: Setup, per_row: list, x_of: dict, ys: dict):
    """One step's work on `path`: the adapter terms of every Linear (the base Linears alone for "base")."""
    if path == "base":
        return lambda: [setup.linears[name](x_of[name]) for name in setup.names]
    if path == "old":

        def step():
            groups = old_groups(per_row)
            for name in setup.names:
                old_terms(groups, name, x_of[name], ys[name])

        return step
    if path == "bmm":
        present = list({id(a): a for a in per_row}.values())
        bmm = GatherBmm(setup, present)

        def step():
            slots = torch.tensor([present.index(a) for a in per_row])
            for name in setup.names:
                bmm.terms(slots, name, x_of[name], ys[name])

        return step
    adapter_rows = AdapterRows(strategy=path)
    wrappers = [MultiLoraLinear(setup.linears[name], name, adapter_rows) for name in setup.names]

    def step():
        adapter_rows.assign(list(per_row))  # a new list each step, as the engine passes
        for wrapper in wrappers:
            wrapper.add_adapter_terms(x_of[wrapper.name], ys[wrapper.name])

    return step


def time_paths(setup: Setup, rows: int, seq: int, present: int, dtype, repeats: int, paths: list[str]) -> dict:
    """ms per step for each path, rows shared round-robin between `present` adapters."""
    xs, ys = inputs(setup, rows, seq, dtype)
    per_row = [setup.adapters[row % present] for row in range(rows)]
    x_of = {name: xs[setup.shape[name][0]] for name in setup.names}
    return best_ms({path: make_step(path, setup, per_row, x_of, ys) for path in paths}, repeats)


def decode_table(config: dict, dtype_name: str, repeats: int) -> None:
    dtype = DTYPES[dtype_name]
    setup = Setup(config, config["num_hidden_layers"], 8, 16, dtype)
    print(f"\n{dtype_name}, r=16, {len(setup.names)} Linears, ms per decode step (best of {repeats})")
    print(
        "| dtype | rows | adapters in batch | base Linears | old loop | concatenated | gather + bmm | auto "
        "| auto vs old |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in (1, 4, 16, 64):
        base = time_paths(setup, rows, 1, 1, dtype, repeats, ["base"])["base"]
        for present in (1, 2, 4, 8):
            if present > rows:
                continue
            ms = time_paths(setup, rows, 1, present, dtype, repeats, ["old", "concatenated", "bmm", "auto"])
            print(
                f"| {dtype_name} | {rows} | {present} | {base:.1f} | {ms['old']:.1f} | {ms['concatenated']:.1f} "
                f"| {ms['bmm']:.1f} | {ms['auto']:.1f} | {ms['old'] / ms['auto']:.2f}x |",
                flush=True,
            )


def crossover_table(config: dict, dtype_name: str, repeats: int, layers: int, ranks: list[int]) -> None:
    dtype = DTYPES[dtype_name]
    print(f"\n{dtype_name}, {layers} layers ({layers * 7} Linears), ms per step (best of {repeats})")
    print(
        "| dtype | rank | rows x seq | adapters | tokens x rank per adapter | grouped | concatenated "
        "| concatenated / grouped | Linears auto concatenates | auto | auto / best |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rank in ranks:
        setup = Setup(config, layers, 8, rank, dtype)
        for rows, seq in ((8, 1), (16, 1), (32, 1), (64, 1), (128, 1), (4, 64), (4, 128)):
            for present in (2, 4, 8):
                ms = time_paths(setup, rows, seq, present, dtype, repeats, ["grouped", "concatenated", "auto"])
                tokens, rank_total = rows * seq, present * rank
                chosen = sum(
                    concatenation_pays(tokens, rank_total, present, *setup.shape[name], dtype) for name in setup.names
                )
                print(
                    f"| {dtype_name} | {rank} | {rows} x {seq} | {present} | {tokens * rank} "
                    f"| {ms['grouped']:.1f} | {ms['concatenated']:.1f} | {ms['concatenated'] / ms['grouped']:.2f} "
                    f"| {chosen}/{len(setup.names)} | {ms['auto']:.1f} "
                    f"| {ms['auto'] / min(ms['grouped'], ms['concatenated']):.2f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    parser.add_argument("--crossover", action="store_true", help="grouped vs concatenated as the work grows")
    parser.add_argument("--repeats", type=int, default=15, help="rounds; each figure is the best")
    parser.add_argument("--layers", type=int, default=4, help="layers timed by --crossover")
    parser.add_argument("--ranks", default="16,64", help="adapter ranks of --crossover, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = json.loads((resolve_model(DEFAULT_MODEL).path / "config.json").read_text())
    for dtype_name in DTYPES if args.dtype == "both" else [args.dtype]:
        if args.crossover:
            crossover_table(config, dtype_name, args.repeats, args.layers, [int(r) for r in args.ranks.split(",")])
        else:
            decode_table(config, dtype_name, args.repeats)


if __name__ == "__main__":
    main()
