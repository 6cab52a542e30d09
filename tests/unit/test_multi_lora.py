"""The mixed-adapter LoRA term (tuneforge/multi_lora.py): every row equals PEFT's own forward of that row's adapter
applied alone, however the term is computed (concatenated, grouped, or as `auto` picks), for prefill and decode
shapes; rows without an adapter get exactly the base; A_cat/B_cat are built once per batch composition.

The adapters (test_serving's three) differ in what PEFT's scale depends on: alpha/r with r=4, rsLoRA's
alpha/sqrt(r) with r=8 on three modules only, and per-module rank and alpha patterns (r=2, down_proj r=6, o_proj
alpha 12), so a concatenation mixes unequal ranks and scales, and some Linears lack some adapters."""

from __future__ import annotations

import pytest
import torch
from test_serving import ADAPTER_CONFIGS, make_lora

from tuneforge.models import load_model
from tuneforge.multi_lora import (
    AdapterRows,
    MultiLoraLinear,
    concatenation_pays,
    install,
    linear_names,
    read_lora_adapter,
)

STRATEGIES = ["concatenated", "grouped", "auto"]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multi-lora")
    return {
        name: make_lora(tiny_model_dir, root / name, seed, **config)
        for seed, (name, config) in enumerate(ADAPTER_CONFIGS.items())
    }


def served_model(base_dir, adapter_dirs: dict[str, str], rows: AdapterRows, dtype=torch.float32):
    """The base with every adapter installed over `rows`, and {name: LoraAdapter}."""
    model, _ = load_model(str(base_dir), dtype=dtype, device="cpu")
    adapters = {}
    for name, folder in adapter_dirs.items():
        adapters[name] = read_lora_adapter(folder, linear_names(model), "cpu", dtype)
        install(model, adapters[name], rows)
    return model, adapters


def peft_models(base_dir, adapter_dirs: dict[str, str], dtype=torch.float32) -> dict:
    """{adapter name: PEFT's model of that adapter alone (unmerged)}, and None: the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = {None: AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)}
    for name, folder in adapter_dirs.items():
        models[name] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype), folder)
    return models


def inner(model):
    """The transformers model under PEFT's wrappers (module names as read_lora_adapter writes them)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "rows_names",
    [["plain", "rslora", None, "patterns", "plain"], ["patterns", "patterns"]],
    ids=["mixed", "one-for-all"],
)
@pytest.mark.parametrize("seq", [1, 7], ids=["decode", "prefill"])
def test_each_rows_term_equals_peft_alone_at_every_linear(tiny_model_dir, adapter_dirs, strategy, rows_names, seq):
    """For every wrapped Linear, row i of the batched output equals PEFT's LoRA layer of row i's adapter run on
    row i alone: the LoRA term (output minus base) to 1e-5 relative, and a row without an adapter (or whose
    adapter skips this Linear) equals the base exactly."""
    rows = AdapterRows(strategy)
    model, adapters = served_model(tiny_model_dir, adapter_dirs, rows)
    references = peft_models(str(tiny_model_dir), adapter_dirs)
    rows.assign([adapters.get(name) for name in rows_names])
    generator = torch.Generator().manual_seed(0)
    wrapped = [m for m in model.modules() if isinstance(m, MultiLoraLinear)]
    assert len(wrapped) == 14  # 2 layers x 7 Linears: the plain adapter targets all of them
    moved = 0
    with torch.no_grad():
        for module in wrapped:
            x = torch.randn(len(rows_names), seq, module.base.in_features, generator=generator)
            base = module.base(x)
            got = module(x)
            for row, name in enumerate(rows_names):
                expected = inner(references[name]).get_submodule(module.name)(x[row : row + 1])[0]
                term, expected_term = got[row] - base[row], expected - base[row]
                if name is None or module.name not in adapters[name].modules:
                    assert torch.equal(got[row], base[row]), (module.name, row)
                    continue
                error = (term - expected_term).norm() / expected_term.norm()
                assert error <= 1e-5, (module.name, row, name, float(error))
                moved += 1
    assert moved >= 14  # the comparison covered real terms, not only base rows


def test_prefill_with_padding_then_a_decode_step_give_each_row_peft_logits(tiny_model_dir, adapter_dirs):
    """The whole model, as the engine runs it: a left-padded prefill of four rows (three adapters and the base),
    then one decode step from the KV cache. Each row's logits equal PEFT's model of its adapter alone over the
    row's own tokens, to 1e-5 of the row's logit scale (the terms run through 2 layers and the head, so rows
    see the other kernels' fp32 rounding, not exactly PEFT's)."""
    from transformers import DynamicCache

    rows = AdapterRows()
    model, adapters = served_model(tiny_model_dir, adapter_dirs, rows)
    references = peft_models(str(tiny_model_dir), adapter_dirs)
    names = ["plain", "rslora", "patterns", None]
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (length,), generator=generator).tolist() for length in (5, 9, 3, 7)]
    width = max(map(len, prompts))
    input_ids = torch.zeros((4, width), dtype=torch.long)
    mask = torch.zeros((4, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = torch.tensor(prompt), 1
    rows.assign([adapters.get(name) for name in names])
    cache = DynamicCache()
    next_tokens = torch.tensor([[11], [12], [13], [14]])
    with torch.no_grad():
        prefill = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{cache_argument(model): cache},
        ).logits
        mask = torch.cat([mask, torch.ones((4, 1), dtype=torch.long)], dim=1)
        decode = model(
            input_ids=next_tokens,
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            use_cache=True,
            **{cache_argument(model): cache},
        ).logits[:, -1]
        for row, name in enumerate(names):
            alone = references[name](input_ids=torch.tensor([prompts[row] + next_tokens[row].tolist()])).logits[0]
            got_prefill = prefill[row, width - len(prompts[row]) :]
            for got, expected in ((got_prefill, alone[:-1]), (decode[row], alone[-1])):
                error = (got - expected).abs().max() / expected.abs().max()
                assert error <= 1e-5, (row, name, float(error))
            if name is not None:  # the adapter really moves the logits, so the comparison means something
                assert (
                    alone - references[None](input_ids=torch.tensor([prompts[row] + [int(next_tokens[row])]])).logits[0]
                ).abs().max() > 0.05


def cache_argument(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (as the engine checks)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def run_step(model, rows: AdapterRows, per_row: list) -> None:
    rows.assign(per_row)
    with torch.no_grad():
        model(input_ids=torch.ones((len(per_row), 3), dtype=torch.long))


def test_concatenations_are_built_once_per_batch_composition_and_bounded(tiny_model_dir, adapter_dirs):
    """Steps with the same adapters present (whatever rows use them, in whatever order) reuse A_cat/B_cat; a
    new set of adapters builds them again; only the last `max_compositions` sets are kept (a step of base
    rows alone is no set)."""
    rows = AdapterRows("concatenated", max_compositions=2)
    model, adapters = served_model(tiny_model_dir, adapter_dirs, rows)
    plain, rslora, patterns = adapters["plain"], adapters["rslora"], adapters["patterns"]
    q_proj = "model.layers.0.self_attn.q_proj"

    run_step(model, rows, [plain, rslora, None])
    built = rows.concatenations
    assert built == 14  # every wrapped Linear concatenated once
    first_a, first_b = rows.concatenated(rows.stack(q_proj))

    run_step(model, rows, [rslora, plain, plain, None])  # same adapters, other rows: nothing rebuilt
    run_step(model, rows, [rslora, plain, plain, None])
    assert rows.concatenations == built
    a, b = rows.concatenated(rows.stack(q_proj))
    assert a is first_a and b is first_b

    run_step(model, rows, [plain, patterns])  # a new composition: built again
    assert rows.concatenations == built + 14
    assert rows.concatenated(rows.stack(q_proj))[0] is not first_a

    run_step(model, rows, [None, None])  # base rows only: no composition, so nothing is evicted
    run_step(model, rows, [plain, rslora])  # still cached: one of the last two compositions
    assert rows.concatenations == built + 14
    run_step(model, rows, [rslora, patterns])  # a third: the least recent ({plain, patterns}) goes
    run_step(model, rows, [plain, patterns])
    assert rows.concatenations == built + 14 * 3


def test_auto_concatenates_a_decode_batch_and_loops_over_a_long_prefill(tiny_model_dir, adapter_dirs):
    """`auto` follows concatenation_pays: a few decode rows are concatenated; a prefill whose per-adapter
    multiply-adds pass the limit is looped over adapters (nothing concatenated), with the same result."""
    rows = AdapterRows("auto")
    model, adapters = served_model(tiny_model_dir, adapter_dirs, rows)
    module = model.get_submodule("model.layers.0.self_attn.q_proj")
    per_row = [adapters["plain"], adapters["rslora"], adapters["patterns"]]
    rank_total = sum(a.modules[module.name][0].shape[0] for a in per_row)
    in_features, out_features = module.base.in_features, module.base.out_features
    long = next(
        s
        for s in range(64, 1 << 16, 64)
        if not concatenation_pays(3 * s, rank_total, 3, in_features, out_features, torch.float32)
    )
    assert concatenation_pays(3, rank_total, 3, in_features, out_features, torch.float32)
    rows.assign(per_row)
    with torch.no_grad():
        module(torch.randn(3, 1, in_features))
        assert rows.concatenations == 1
        x = torch.randn(3, long, in_features)
        got = module(x)
        assert rows.concatenations == 1
        forced = AdapterRows("concatenated")
        forced.assign(per_row)
        module.rows = forced
        reference = module(x)
        # The two orders sum the same fp32 products differently: equal to fp32 rounding of the output's scale.
        assert torch.allclose(got, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def test_bf16_terms_stay_in_bf16_and_match_fp32(tiny_model_dir, adapter_dirs):
    """Served in bf16, the output stays bf16 and each concatenated row is the fp32 answer to bf16 rounding."""
    rows16, rows32 = AdapterRows("concatenated"), AdapterRows("concatenated")
    model16, adapters16 = served_model(tiny_model_dir, adapter_dirs, rows16, torch.bfloat16)
    model32, adapters32 = served_model(tiny_model_dir, adapter_dirs, rows32, torch.float32)
    names = ["plain", "rslora", None, "patterns"]
    rows16.assign([adapters16.get(n) for n in names])
    rows32.assign([adapters32.get(n) for n in names])
    x = torch.randn(4, 5, model32.config.hidden_size)
    with torch.no_grad():
        for name in ("model.layers.1.self_attn.o_proj", "model.layers.1.mlp.gate_proj"):
            got = model16.get_submodule(name)(x.bfloat16())
            expected = model32.get_submodule(name)(x)
            assert got.dtype == torch.bfloat16
            assert ((got.float() - expected).norm() / expected.norm()) < 1e-2, name
