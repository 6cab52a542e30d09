"""Set-up shared by the recipes: model + LoRA, optimizer, metrics log, SIGTERM handling, run summary.

Only orchestration lives here; every loss and every number lives once in `tuneforge.losses`,
`tuneforge.schedule` and `tuneforge.data.batching`.
"""

from __future__ import annotations

import json
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from tuneforge.checkpoint import write_json_atomic
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl; flushed at once so watchers see progress."""

    def __init__(self, path: Path, append: bool = False, enabled: bool = True):
        self.handle = None
        if enabled:  # under torchrun only rank 0 logs
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("a" if append else "w")

    def write(self, record: dict) -> None:
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits cleanly (pre-emption)."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_summary(output: Path, summary: dict) -> None:
    write_json_atomic(output / "summary.json", summary)


class Throughput:
    def __init__(self):
        self.started = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)
