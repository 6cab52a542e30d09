"""Write a (merged) Hugging Face causal LM as one GGUF file with the `gguf` package.

    tuneforge export --adapter runs/demo --format gguf --dtype q8_0 --output exported/demo

The file holds what llama.cpp's `convert_hf_to_gguf.py` writes for the architecture, so llama.cpp,
Ollama and transformers (`from_pretrained(dir, gguf_file=...)`) read it; the tests load every
architecture in llama.cpp itself and compare its logits with the model's own:

- tensor names come from gguf's own HF -> GGUF table (`gguf.get_tensor_name_map`);
- llama-architecture (Llama, Mistral) Q and K projections are permuted (see `interleave_rope_halves`);
  the others keep HF's rotate-half layout, which llama.cpp runs as NeoX rope;
- Gemma's RMSNorm scales by (1 + w) where llama.cpp scales by w, so Gemma norms are written as w + 1;
- Llama 3.1+ rope scaling becomes the per-frequency `rope_freqs` tensor llama.cpp divides by;
- Gemma 2/3 local/global layers become an explicit per-layer sliding-window pattern;
- 2-D weights take the requested type; norms and other 1-D tensors stay f32 as llama.cpp keeps them;
  K-quants (q4_k_m, q5_k_m, q6_k) are made from an f32 file by llama.cpp's own quantizer (llama_cpp_quantize.py);
- tied embeddings write no `output.weight` (readers then reuse `token_embd.weight`);
- the tokenizer goes in as metadata (gguf_vocab.py), the chat template as `tokenizer.chat_template`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.errors import UserError
from tuneforge.export import GGUF_DTYPES
from tuneforge.export.gguf_vocab import vocab_metadata, write_vocab
from tuneforge.export.llama_cpp_quantize import K_QUANTS, quantize_with_llama_cpp, require_quantizer


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's llama arch rotates interleaved pairs (2i, 2i+1)
    norm_shift: float = 0.0  # added to every *norm.weight: Gemma computes x * (1 + w)
    head_must_be_tied: bool = False  # the GGUF arch has no output.weight of its own
    extra_hyperparameters: Callable | None = None  # (writer, config) -> None


def gemma_attention_scale_check(config, layers_of_27b: int) -> None:
    """llama.cpp does not read Gemma's query scale; it derives it from the model size. Refuse a mismatch.

    HF scales queries by query_pre_attn_scalar ** -0.5. llama.cpp uses 1/sqrt(head_dim), except for the
    27B model (recognised by its layer count), where it uses 1/sqrt(hidden_size / heads).
    """
    head_dim = config.head_dim
    if config.num_hidden_layers == layers_of_27b:
        head_dim = config.hidden_size // config.num_attention_heads
    scalar = getattr(config, "query_pre_attn_scalar", None) or head_dim
    if not math.isclose(scalar, head_dim):
        raise UserError(
            f"GGUF export: this Gemma model scales attention by query_pre_attn_scalar={scalar}, but llama.cpp "
            f"uses {head_dim} for a model of this shape, so it would compute different logits; use --format hf"
        )


def sliding_window_layers(writer, config) -> None:
    """The window and which layers use it, per layer, as HF's `layer_types` says (no guessed pattern)."""
    layer_types = getattr(config, "layer_types", None) or []
    if config.sliding_window and "sliding_attention" in layer_types:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])


def gemma2_hyperparameters(writer, config) -> None:
    gemma_attention_scale_check(config, layers_of_27b=46)
    if config.attn_logit_softcapping is None:
        raise UserError("GGUF export: llama.cpp's gemma2 always caps attention logits; this model does not. Use --format hf")
    writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    sliding_window_layers(writer, config)


def gemma3_hyperparameters(writer, config) -> None:
    gemma_attention_scale_check(config, layers_of_27b=62)
    if getattr(config, "attn_logit_softcapping", None):
        raise UserError("GGUF export: llama.cpp's gemma3 has no attention logit softcapping; use --format hf")
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    sliding_window_layers(writer, config)
    local = rope_parameters(config).get("sliding_attention")
    if local and local.get("rope_theta") is not None:
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))


def phi3_hyperparameters(writer, config) -> None:
    params = rope_parameters(config)
    original = params.get("original_max_position_embeddings", getattr(config, "original_max_position_embeddings", None))
    writer.add_rope_scaling_orig_ctx_len(original or config.max_position_embeddings)
    writer.add_sliding_window(config.sliding_window or 0)  # llama.cpp runs Phi-3 with full attention either way
    window_note(config)


def mistral_hyperparameters(writer, config) -> None:
    window_note(config)


def window_note(config) -> None:
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        print(f"tuneforge export: note: llama.cpp runs {type(config).__name__.removesuffix('Config')} with full "
              f"attention; it answers as this model does for prompts up to its sliding window ({window} tokens)",
              file=sys.stderr)


ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("LLAMA", permute_qk=True),
    "MistralForCausalLM": ArchSpec("LLAMA", permute_qk=True, extra_hyperparameters=mistral_hyperparameters),
    "Qwen2ForCausalLM": ArchSpec("QWEN2"),
    "Qwen3ForCausalLM": ArchSpec("QWEN3"),
    "Gemma2ForCausalLM": ArchSpec("GEMMA2", norm_shift=1.0, head_must_be_tied=True,
                                  extra_hyperparameters=gemma2_hyperparameters),
    "Gemma3ForCausalLM": ArchSpec("GEMMA3", norm_shift=1.0, extra_hyperparameters=gemma3_hyperparameters),
    "Phi3ForCausalLM": ArchSpec("PHI3", extra_hyperparameters=phi3_hyperparameters),
}


def interleave_rope_halves(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection from HF's rotate-half layout to llama.cpp's pairs.

    HF's rotary embedding pairs dimension i with i + d/2 inside each head of size d; llama.cpp's
    llama arch (the original Meta layout) pairs 2i with 2i+1. Viewing a head's rows as (2, d/2) and
    transposing to (d/2, 2) moves row i+d/2 right after row i. transformers' GGUF loader undoes exactly
    this (view as (d/2, 2), transpose back). For K, `n_head` is the number of KV heads.
    """
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensor_payload(data: np.ndarray, gguf_name: str, dtype: str):
    """(array, raw_dtype) for `GGUFWriter.add_tensor`; 1-D tensors and norms stay f32."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if dtype == "f32" or data.ndim <= 1 or gguf_name.endswith("_norm.weight"):
        return data, None
    if dtype == "f16":
        return data.astype(np.float16), None
    if dtype == "bf16":
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
    if data.shape[-1] % block:  # llama.cpp falls back the same way for rows that do not fill whole blocks
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def file_type(dtype: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]


def arch_spec(model) -> ArchSpec:
    names = [type(model).__name__, *(getattr(model.config, "architectures", None) or [])]
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise UserError(
        f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {names[0]}. "
        "Use --format hf and llama.cpp's convert_hf_to_gguf.py"
    )


def rope_parameters(config) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters` (per layer type for Gemma 3); 4.x in rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "rope_theta" not in params and "full_attention" not in params and getattr(config, "rope_theta", None):
        params["rope_theta"] = config.rope_theta
    return params


def write_rope(writer, model, spec: ArchSpec) -> dict[str, np.ndarray]:
    """Rope base and scaling keys; returns the extra tensors llama.cpp needs (Llama 3.1's rope_freqs)."""
    import gguf

    config = model.config
    params = rope_parameters(config)
    if ("full_attention" in params or "sliding_attention" in params) and spec.gguf_arch != "GEMMA3":
        raise UserError("GGUF export: per-layer-type rope settings are only supported for Gemma 3; use --format hf")
    full = params.get("full_attention", params)
    writer.add_rope_freq_base(float(full.get("rope_theta") or 10000.0))
    rope_type = full.get("rope_type", full.get("type")) or "default"
    if rope_type == "default":
        return {}
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
        return {}
    if rope_type == "llama3" and spec.gguf_arch == "LLAMA":
        return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": llama3_rope_divisors(model, full)}
    raise UserError(f"GGUF export does not support rope scaling '{rope_type}' for {type(model).__name__} yet; use --format hf")


def llama3_rope_divisors(model, params: dict) -> np.ndarray:
    """llama.cpp divides each rope frequency by rope_freqs[i]; Llama 3.1 scaling is exactly such a division.

    The scaled frequencies are read from the model's own rotary embedding (the ones HF computes with),
    so the file carries what the model does rather than a second implementation of the formula.
    """
    inv_freq = model.model.rotary_emb.inv_freq.detach().to("cpu").double().numpy()
    dim = inv_freq.shape[0] * 2
    plain = 1.0 / (float(params["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return (plain / inv_freq).astype(np.float32)


def write_hyperparameters(writer, model, spec: ArchSpec) -> dict[str, np.ndarray]:
    config = model.config
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rotary = rope_parameters(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(rotary * head_dim))
    extra_tensors = write_rope(writer, model, spec)
    if spec.extra_hyperparameters:
        spec.extra_hyperparameters(writer, config)
    return extra_tensors


def gguf_tensors(model, spec: ArchSpec):
    """(gguf name, f32 array) for every tensor the GGUF arch reads, in HF order."""
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if spec.head_must_be_tied and not tied:
        raise UserError(f"GGUF export: llama.cpp's {spec.gguf_arch.lower()} reuses the embeddings as the output "
                        "layer; this model has its own lm_head. Use --format hf")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch], config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"GGUF export: no GGUF name for tensor {hf_name}; use --format hf")
        data = tensor.detach().to("cpu").float().numpy()
        if spec.permute_qk and ".attn_q." in gguf_name:
            data = interleave_rope_halves(data, n_head)
        elif spec.permute_qk and ".attn_k." in gguf_name:
            data = interleave_rope_halves(data, n_kv_head)
        if spec.norm_shift and hf_name.endswith("norm.weight"):
            data = data + spec.norm_shift
        yield gguf_name, data


def write_gguf(model, tokenizer, path: Path, dtype: str = "f16", name: str | None = None) -> Path:
    """Write `model` (a plain, merged HF causal LM) and its tokenizer to `path`, atomically."""
    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype} is not a GGUF type: use one of {', '.join(GGUF_DTYPES)}")
    if dtype in K_QUANTS:
        require_quantizer(dtype)
    spec = arch_spec(model)
    meta = vocab_metadata(tokenizer, model.config.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        if dtype in K_QUANTS:  # llama.cpp quantizes best from full precision
            full = path.with_name(f".{path.name}.f32.tmp")
            try:
                write_file(model, spec, meta, full, "f32", name or path.stem)
                quantize_with_llama_cpp(full, staging, dtype)
            finally:
                full.unlink(missing_ok=True)
        else:
            write_file(model, spec, meta, staging, dtype, name or path.stem)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def write_file(model, spec: ArchSpec, meta: dict, path: Path, dtype: str, name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]])
    try:
        writer.add_name(name)
        extra_tensors = write_hyperparameters(writer, model, spec)
        writer.add_file_type(file_type(dtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, meta)
        for gguf_name, data in extra_tensors.items():
            writer.add_tensor(gguf_name, data)
        for gguf_name, data in gguf_tensors(model, spec):
            array, raw_dtype = tensor_payload(data, gguf_name, dtype)
            writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
