"""The model a recipe trains: the base with LoRA (PEFT) or fully trainable, its compute dtype, the parts
the fused losses read (decoder body, output head) and the optimizer over what trains.

    model, tokenizer, device, dtype = build_model(config)
    optimizer = make_optimizer(model, config)

Loading itself (resolving `--model`, GGUF conversion, tokenizer) is `tuneforge.models`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tuneforge.config import TrainConfig
from tuneforge.models import (
    bf16_is_fast,
    decoder_layers,
    default_device,
    load_adapter,
    load_base_model,
    load_tokenizer,
    resolve_model,
)


def compute_dtype(config: TrainConfig, device: str) -> torch.dtype:
    if config.dtype == "bfloat16" or (config.dtype == "auto" and bf16_is_fast(device)):
        return torch.bfloat16
    return torch.float32


def autocast_for(device: str, dtype: torch.dtype):
    """bf16 autocast where bf16 is the compute dtype; nothing where fp32 already is."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def build_model(config: TrainConfig, device: str | None = None):
    """(model, tokenizer, device, compute dtype): the base in the storage dtype, LoRA or full trainable."""
    device = device or default_device()
    dtype = compute_dtype(config, device)
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved.path)
    # Frozen base weights in bf16 (when bf16 is the compute dtype) halve memory and skip per-step casts;
    # anything trained keeps fp32 master weights.
    storage = dtype if not config.full else torch.float32
    model = load_base_model(resolved, dtype=storage, device=device)
    model.config.use_cache = False
    if config.full:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        if config.init_adapter:
            model = load_adapter(model, config.init_adapter, is_trainable=True)
        else:
            targets = config.lora_target_modules
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        # PEFT records the base path; point it at what a plain `PeftModel.from_pretrained` can load.
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = str(resolved.path)
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    if config.gradient_checkpointing:
        core(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.compile:
        # Block by block: the blocks share their code, so one compiled graph serves all of them, and dynamic
        # shapes keep a new sequence length from recompiling. The fused loss stays eager (it is one matmul).
        for layer in decoder_layers(model):
            layer.compile(dynamic=True)
    model.train()
    return model, tokenizer, device, dtype


def core(model):
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model):
    inner = core(model)
    return inner.get_decoder(), inner.get_output_embeddings()


def final_hidden_states(model, batch) -> torch.Tensor:
    decoder, _ = decoder_and_head(model)
    return decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state


def make_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    lr = config.resolved_learning_rate()
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
