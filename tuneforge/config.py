"""Typed training configuration: defaults < YAML file (--config) < key=value overrides < explicit flags.

Parsing is strict: unknown keys, wrong types and out-of-range values are all collected and reported
together in one UserError, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError

METHODS = ("sft", "dpo", "reward", "grpo")
REWARD_POOLINGS = ("last", "mean", "sum")
SCHEDULES = ("cosine", "linear", "constant")
LOSS_TYPES = ("sigmoid", "ipo", "simpo")


@dataclass
class TrainConfig:
    data: str = ""
    output: str = "runs/latest"
    model: str = "smollm2-135m-instruct"
    method: str = "sft"
    validation_data: str | None = None
    validation_split: float = 0.0
    full: bool = False
    # Optimisation. learning_rate None = the method's default (1e-3 for LoRA, 5e-5 for full fine-tuning).
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    # LoRA.
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # Data and speed.
    max_length: int = 2048
    # Tokens per forward/backward pass (an optimizer step is split into passes of at most this many; the
    # update is the same). None: 512 for LoRA on CPU, where the heap keeps what bigger passes free (bench,
    # 200 examples: peak RSS 2.95 -> 2.30 GB, 20% slower; DPO / reward 5.1-5.7 -> 2.7 GB); 4096 on GPU and
    # for full fine-tuning, whose memory is mostly weights and optimizer state (512 cost it 27% speed
    # for 9% memory).
    micro_batch_tokens: int | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16
    gradient_checkpointing: bool = False
    compile: bool = False
    # Logging, evaluation, checkpoints.
    log_every: int = 1
    eval_every: int | None = None  # None: about 5 validation passes per run
    save_every: int | None = None
    keep_checkpoints: int = 2
    resume: str | None = None
    eval_data: str | None = None
    # Preference tuning (dpo / reward).
    beta: float = 0.1
    loss_type: str = "sigmoid"
    init_adapter: str | None = None
    simpo_gamma: float = 0.5  # SimPO target margin (loss_type=simpo)
    # RPO (Pang et al. 2024): add rpo_alpha x the chosen answer's mean token NLL to each pair's loss, so the
    # policy also learns to *write* the preferred answer, not only to rank it. On by default: plain DPO
    # took the demo's SFT policy from 99% to 0% valid JSON while its preference accuracy rose (both
    # answers' likelihoods fell). 0.2, not 1: at 1 the term also trains the chosen answers as answers in
    # general, and held-out pairs that reject another prompt's chosen answer fell to 0.84 (capitals task);
    # 0.2 kept both above the bar (docs/benchmarks.md). 0 gives the paper's DPO / IPO / SimPO.
    rpo_alpha: float = 0.2
    # Reward model: where the value head reads. "mean" (default): its values over every answer token, averaged
    # and scaled by the training answers' mean length; "sum": summed; "last": the end-of-turn token only.
    # Demo pairs, held-out accuracy: mean 0.94, sum 0.92, last 0.84 (docs/benchmarks.md).
    reward_pooling: str = "mean"
    # Reward-driven RL (grpo). reward: "exact_match" / "json_format" / "json_fields" or "module:function".
    reward: str | None = None
    reward_model: str | None = None
    group_size: int = 4
    max_new_tokens: int = 64
    kl_beta: float = 0.04
    clip_epsilon: float = 0.2
    temperature: float = 1.0
    policy_updates: int = 1  # optimizer steps per batch of sampled completions (clipping matters when > 1)
    # Forgetting: replay general data, stop early, gate on general-text perplexity (see tuneforge.evaluate.forgetting).
    replay: str | None = None  # JSONL/text file, builtin:pydoc or builtin:self (self-replay, see data/replay.py)
    replay_ratio: float = 0.0  # replay examples per training example
    max_forgetting: float | None = None  # % perplexity rise on general text that fails the run's gate
    early_stopping_patience: int | None = None  # stop after N validation passes without a new best

    def resolved_micro_batch_tokens(self, device: str) -> int:
        if self.micro_batch_tokens is not None:
            return self.micro_batch_tokens
        return 512 if str(device).startswith("cpu") and not self.full else 4096

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-5 if self.full else 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    declared = typing.get_type_hints(TrainConfig)[name]
    optional = typing.get_origin(declared) in (typing.Union, types.UnionType) and type(None) in typing.get_args(declared)
    base = next(a for a in typing.get_args(declared) if a is not type(None)) if optional else declared
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        problems.append(f"{name}: may not be empty")
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is list:
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return value
            raise ValueError
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    problems.append(f"{name}: expected {getattr(base, '__name__', str(base))}, got {value!r}")
    return None


def _check_ranges(config: TrainConfig, problems: list[str]) -> None:
    def require(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    require(config.method in METHODS, f"method: expected one of {', '.join(METHODS)}, got {config.method!r}")
    require(config.lr_schedule in SCHEDULES, f"lr_schedule: expected one of {', '.join(SCHEDULES)}")
    require(config.dtype in ("auto", "float32", "bfloat16"), "dtype: expected auto, float32 or bfloat16")
    require(config.epochs > 0, "epochs: must be > 0")
    require(config.max_steps is None or config.max_steps > 0, "max_steps: must be > 0")
    require(config.batch_size >= 1, "batch_size: must be >= 1")
    require(config.gradient_accumulation >= 1, "gradient_accumulation: must be >= 1")
    require(config.learning_rate is None or config.learning_rate > 0, "learning_rate: must be > 0")
    require(0 <= config.warmup_ratio < 1, "warmup_ratio: must be in [0, 1)")
    require(0 <= config.validation_split < 1, "validation_split: must be in [0, 1)")
    require(config.lora_r >= 1, "lora_r: must be >= 1")
    require(0 <= config.lora_dropout < 1, "lora_dropout: must be in [0, 1)")
    require(config.max_length >= 8, "max_length: must be >= 8")
    require(config.micro_batch_tokens is None or config.micro_batch_tokens >= 8, "micro_batch_tokens: must be >= 8")
    require(config.max_grad_norm >= 0, "max_grad_norm: must be >= 0 (0 disables clipping)")
    require(config.save_every is None or config.save_every > 0, "save_every: must be > 0")
    require(config.eval_every is None or config.eval_every > 0, "eval_every: must be > 0")
    require(config.keep_checkpoints >= 1, "keep_checkpoints: must be >= 1")
    require(config.beta > 0, "beta: must be > 0")
    require(config.loss_type in LOSS_TYPES, f"loss_type: expected one of {', '.join(LOSS_TYPES)}, got {config.loss_type!r}")
    require(config.rpo_alpha >= 0, "rpo_alpha: must be >= 0")
    require(config.reward_pooling in REWARD_POOLINGS,
            f"reward_pooling: expected one of {', '.join(REWARD_POOLINGS)}, got {config.reward_pooling!r}")
    require(config.group_size >= 2, "group_size: must be >= 2 (advantages compare completions within a group)")
    require(config.max_new_tokens >= 1, "max_new_tokens: must be >= 1")
    require(config.temperature > 0, "temperature: must be > 0 (GRPO samples)")
    require(config.kl_beta >= 0 and config.clip_epsilon > 0, "kl_beta must be >= 0 and clip_epsilon > 0")
    require(config.policy_updates >= 1, "policy_updates: must be >= 1")
    require(config.method != "grpo" or bool(config.reward) != bool(config.reward_model),
            "grpo needs exactly one of --reward (function) or --reward-model (directory)")
    require(config.method != "reward" or not config.eval_data,
            "eval_data: a reward model does not answer prompts; its pairwise accuracy on --validation-data is the measure")
    require(config.replay_ratio >= 0, "replay_ratio: must be >= 0")
    require(config.replay_ratio == 0 or bool(config.replay), "replay_ratio: needs --replay FILE (or builtin:pydoc)")
    require(config.early_stopping_patience is None or config.early_stopping_patience >= 1, "early_stopping_patience: must be >= 1")
    require(bool(config.data), "data: a training file is required (--data FILE)")


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"'{item}': expected key=value (e.g. lora_r=32)", code="bad_override")
        key, value = item.split("=", 1)
        overrides[key.strip().replace("-", "_")] = value
    return overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", path=str(path))
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML ({exc})", path=str(path)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError("a config file must be a mapping of key: value", path=str(path))
    return loaded


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge layers (later wins), coerce types, check ranges; report every problem at once."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k.replace("-", "_"): v for k, v in layer.items()})
    problems = []
    values = {}
    for key, value in merged.items():
        if key not in FIELD_TYPES:
            problems.append(f"unknown key '{key}'")
            continue
        values[key] = _coerce(key, value, problems)
    if problems:
        raise UserError("config: " + "; ".join(problems), code="bad_config")
    config = TrainConfig(**values)
    _check_ranges(config, problems)
    if problems:
        raise UserError("config: " + "; ".join(problems), code="bad_config")
    return config
