"""Fold a LoRA adapter into its base model and save a plain Hugging Face model directory.

    tuneforge export --adapter runs/demo --format hf --output exported/demo-hf

The merge is PEFT's `merge_and_unload(safe_merge=True)`: each merged weight is checked for NaN/inf before
it replaces the original, so a broken adapter fails loudly instead of producing a model that answers
garbage. Everything is done in fp32 on the CPU; the requested storage dtype is applied only when saving. An
adapter trained on a quantised base (QLoRA, `quantize=4bit`) is merged into that base's dequantised weights, the
ones it learnt to correct (`models.load_base_for_adapter`).
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

# --dtype for the hf format -> torch dtype name; quantised types are GGUF-only.
HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def is_full_model_dir(folder: Path) -> bool:
    return (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()


def merged_model(adapter: str | None, model: str | None = None):
    """(model, tokenizer) in fp32 on the CPU: the adapter merged into its base, a full fine-tune as is,
    or (with no adapter) the base model itself."""
    import torch

    from tuneforge.models import (
        ResolvedModel,
        adapter_base_spec,
        load_adapter,
        load_base_for_adapter,
        load_base_model,
        load_tokenizer,
        resolve_model,
    )

    if adapter is None:
        resolved = resolve_model(model)
        merged = load_base_model(resolved, torch.float32, "cpu")
        tokenizer = load_tokenizer(resolved.path)
    else:
        adapter_dir = Path(adapter).expanduser()
        if not adapter_dir.is_dir():
            raise UserError(f"{adapter}: adapter directory not found")
        if is_full_model_dir(adapter_dir):
            merged = load_base_model(ResolvedModel(str(adapter_dir), adapter_dir, "dir"), torch.float32, "cpu")
            tokenizer = load_tokenizer(adapter_dir)
        elif not (adapter_dir / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: no adapter_config.json or config.json (not an adapter or model directory)")
        else:
            resolved = resolve_model(model or adapter_base_spec(adapter_dir))
            base = load_base_for_adapter(resolved, adapter_dir, torch.float32, "cpu")
            peft_model = load_adapter(base, adapter_dir)
            try:
                merged = peft_model.merge_and_unload(safe_merge=True)
            except ValueError as exc:  # PEFT's safe merge reports NaN/inf in the merged weights this way
                raise UserError(f"{adapter}: merging the adapter gives non-finite weights ({exc}); retrain it") from None
            has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
            tokenizer = load_tokenizer(adapter_dir if has_tokenizer else resolved.path)
    check_finite(merged, adapter or model or "model")
    return merged.eval(), tokenizer


def check_finite(model, label: str) -> None:
    """A full fine-tune (or a base) is not merged by PEFT, so check its weights here too."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{label}: weight {name} has NaN or inf values; the model cannot be exported")


def save_hf(model, tokenizer, output: Path, dtype: str = "f32") -> list[Path]:
    """Save as safetensors + tokenizer + chat template; loads with plain `AutoModelForCausalLM`."""
    import torch

    if dtype not in HF_DTYPES:
        raise UserError(f"--dtype {dtype} is not available for --format hf: use one of {', '.join(HF_DTYPES)}")
    output.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, HF_DTYPES[dtype]))
    model.config.use_cache = True
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    return sorted(p for p in output.iterdir() if p.is_file())
