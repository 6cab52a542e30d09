"""Write a (merged) llama-family model as one GGUF file with the `gguf` package.

    tuneforge export --adapter runs/demo --format gguf --dtype q8_0 --output exported/demo

The file follows what llama.cpp's `convert_hf_to_gguf.py` writes, so llama.cpp, Ollama and transformers
(`from_pretrained(dir, gguf_file=...)`) read it:

- tensor names come from gguf's own HF -> GGUF table (`gguf.get_tensor_name_map`);
- llama-architecture Q and K projections are permuted (see `interleave_rope_halves`); Qwen2 is not;
- 2-D weights take the requested type; norms and other 1-D tensors stay f32 as llama.cpp keeps them;
- tied embeddings write no `output.weight` (readers then reuse `token_embd.weight`);
- the tokenizer goes in as metadata: byte-level BPE as `gpt2`, a byte-fallback BPE (Llama-2 style
  sentencepiece) as `llama`, with the chat template as `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.errors import UserError

GGUF_DTYPES = ("f16", "bf16", "q8_0", "f32")


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # the GGUF `general.architecture`
    permute_qk: bool  # llama.cpp's llama arch uses interleaved rope pairs; qwen2 uses NeoX halves like HF


ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("llama", permute_qk=True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", permute_qk=False),
}

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


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


def arch_spec(config) -> ArchSpec:
    names = getattr(config, "architectures", None) or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise UserError(
        f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {', '.join(names) or config.model_type}. "
        "Use --format hf and llama.cpp's convert_hf_to_gguf.py"
    )


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise UserError(f"GGUF export does not support rope scaling '{rope_type}' yet; use --format hf")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def write_hyperparameters(writer, config, spec: ArchSpec) -> None:
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre`: which split regex the BPE merges were learned with.

    llama.cpp identifies it by hashing the ids of a probe text; we read the tokenizer.json instead.
    """
    text = json.dumps(backend.get("pre_tokenizer"))
    if "\\\\p{N}{1,3}" in text:
        return "llama-bpe"
    if "(?i:'s|'t" in text and "\\\\p{N}|" in text:
        return "qwen2"
    if '"Digits"' in text and '"ByteLevel"' in text:
        return "smollm"
    if '"ByteLevel"' in text:
        return "gpt2"
    return "default"


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """Everything `tokenizer.ggml.*` needs, from a fast tokenizer's tokenizer.json."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("GGUF export needs a fast tokenizer (tokenizer.json)")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"GGUF export supports byte-level BPE and sentencepiece-style BPE tokenizers; this one is "
            f"{model.get('type')}. Use --format hf"
        )
    kind = "llama" if model.get("byte_fallback") else "gpt2"
    if kind == "gpt2" and "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise UserError("GGUF export: a BPE tokenizer without byte-level pre-tokenization is not supported; use --format hf")

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = {entry["content"]: entry for entry in backend.get("added_tokens", [])}
    tokens, types, scores = [], [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif kind == "llama" and token.startswith("<0x") and len(token) == 6:  # byte-fallback pieces
            tokens.append(token)
            types.append(BYTE)
        elif token in added:
            tokens.append(token)
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        elif token == model.get("unk_token"):
            tokens.append(token)
            types.append(UNKNOWN)
        else:
            tokens.append(token)
            types.append(NORMAL)
        scores.append(-float(index))  # sentencepiece-style priority: earlier tokens merge first
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    probe = tokenizer("a")["input_ids"]
    meta = {
        "model": kind,
        "pre": pre_tokenizer_name(backend) if kind == "gpt2" else "default",
        "tokens": tokens,
        "types": types,
        "scores": scores if kind == "llama" else None,
        "merges": merges,
        "add_bos": tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id,
        "add_eos": tokenizer.eos_token_id is not None and bool(probe) and probe[-1] == tokenizer.eos_token_id,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }
    for name in ("bos", "eos", "unk", "pad"):
        meta[f"{name}_id"] = getattr(tokenizer, f"{name}_token_id", None)
    return meta


def write_tokenizer(writer, meta: dict) -> None:
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    if meta["scores"] is not None:
        writer.add_token_scores(meta["scores"])
    if meta["merges"]:
        writer.add_token_merges(meta["merges"])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if meta[f"{name}_id"] is not None:
            add(meta[f"{name}_id"])
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(meta["add_eos"])
    if meta["model"] == "gpt2":
        writer.add_add_space_prefix(False)
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


def write_gguf(model, tokenizer, path: Path, dtype: str = "f16", name: str | None = None) -> Path:
    """Write `model` (a plain, merged HF causal LM) and its tokenizer to `path`, atomically."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype} is not a GGUF type: use one of {', '.join(GGUF_DTYPES)}")
    config = model.config
    spec = arch_spec(config)
    meta = tokenizer_metadata(tokenizer, config.vocab_size)
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch.upper()], config.num_hidden_layers)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(staging, spec.gguf_arch)
    try:
        writer.add_name(name or path.stem)
        write_hyperparameters(writer, config, spec)
        writer.add_file_type(file_type(dtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_tokenizer(writer, meta)
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
            array, raw_dtype = tensor_payload(data, gguf_name, dtype)
            writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, path)
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    return path
