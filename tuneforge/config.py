"""Typed training configuration:  tuneforge config [--method M] [--json]  lists every key.

Layers: defaults < YAML file (`tuneforge train FILE.yaml` or --config) < key=value overrides < explicit
flags. Parsing is strict: unknown keys (with the likely key suggested), wrong types, out-of-range values
and keys the chosen method does not use are all collected and reported together in one UserError, before
any model loads. Each field carries its one-line description and the methods that read it (`setting`), so
the `tuneforge config` listing, the method check and the code cannot drift apart. `ALIASES` accepts the
names TRL, Axolotl and LLaMA-Factory configs use; `tuneforge config --example METHOD` prints a commented
config (tuneforge/configs/METHOD.yaml).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.chat_templates import BUILTIN_TEMPLATES
from tuneforge.errors import UserError

METHODS = ("sft", "dpo", "reward", "grpo")
REWARD_POOLINGS = ("last", "mean", "sum")
SCHEDULES = ("cosine", "linear", "constant")
LOSS_TYPES = ("sigmoid", "ipo", "simpo")
GUARD_METHODS = ("kl", "replay", "off")  # tuneforge/forgetting_guard.py
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb")  # tuneforge/tracking.py, one class each
QUANTIZE = ("none", "4bit", "8bit")  # the frozen base through bitsandbytes (tuneforge/models.py)
LORA_INITS = ("default", "gaussian", "pissa", "olora", "loftq")  # PEFT's init_lora_weights (tuneforge/trainable.py)
# Initialisations that move the principal part of each weight into the adapter: the adapter-off model is the
# residual, not the base.
RESIDUAL_INITS = ("pissa", "olora")
PACKINGS = ("auto", "on", "off")  # tuneforge/data/batching.py pack_micro_batches; auto: recipes/sft.py
# transformers' attention implementations a run may name; auto: trainable.choose_attention
ATTENTIONS = ("auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
EXAMPLES = Path(__file__).parent / "configs"  # METHOD.yaml for each method, shipped in the package

# The recipes that read a key (tuneforge/recipes/<method>.py with the shared run shell and trainable.py).
# A key outside its methods would be silently ignored, so setting it is an error.
NOT_GRPO = ("sft", "dpo", "reward")
NOT_REWARD = ("sft", "dpo", "grpo")
GUARD_WHY_NOT = "a reward model scores answers, it has no general behaviour to keep"


def setting(default: Any, doc: str, methods: tuple[str, ...] = METHODS, why_not: str = "") -> Any:
    """A TrainConfig field with its description, the methods that use it and, optionally, why the others don't."""
    metadata = {"doc": doc, "methods": methods, "why_not": why_not}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    data: str = setting("", "training file: chat or prompt/completion rows (sft), preference rows (dpo, reward), "
                        "prompts (grpo)")
    output: str = setting("runs/latest", "output directory: adapter, checkpoints, metrics.jsonl, summary.json")
    model: str = setting("smollm2-135m-instruct", "base model: alias, HF model dir, .gguf file or cached hub id")
    method: str = setting("sft", "sft, dpo, reward or grpo")
    validation_data: str | None = setting(None, "validation file, measured every eval_every steps")
    columns: dict[str, str] = setting({}, "read data and validation_data with the file's own field names mapped "
                                      "onto a format's: prompt:question,completion:answer (YAML: a mapping)")
    validation_split: float = setting(0.0, "without validation_data: hold out this fraction of data (by seed)")
    full: bool = setting(False, "full fine-tuning of every weight instead of LoRA")
    # Optimisation.
    epochs: float = setting(3.0, "passes over the training data (fractions allowed)")
    max_steps: int | None = setting(None, "run exactly this many optimizer steps instead of counting epochs")
    batch_size: int = setting(8, "examples per optimizer step (grpo: prompts per step)")
    gradient_accumulation: int = setting(1, "examples per optimizer step = batch_size x this", NOT_GRPO,
                                         "a grpo step is batch_size prompts x group_size completions")
    learning_rate: float | None = setting(None, "peak learning rate; none: 1e-3 for LoRA, 5e-5 for full")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.05, "fraction of the steps that ramp the learning rate up linearly")
    lr_schedule: str = setting("cosine", "decay after warm-up: cosine, linear or constant")
    max_grad_norm: float = setting(1.0, "clip the gradient to this norm (0 disables clipping)")
    seed: int = setting(42, "seed of the shuffle, the validation split, initialisation and sampling")
    # LoRA.
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: float = setting(32.0, "LoRA scale numerator: updates are scaled by lora_alpha / lora_r (use_rslora: "
                                "lora_alpha / sqrt(lora_r))")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input")
    lora_target_modules: list[str] = setting(["all-linear"], "modules that get LoRA: all-linear or a comma-separated "
                                             "list of module names")
    # QLoRA: the frozen base stored in 4 bits (NF4 with double quantisation) or 8 bits (LLM.int8) by bitsandbytes,
    # computed in the compute dtype; merge and export dequantise the same quantised weights the adapter trained on.
    quantize: str = setting("none", "frozen base in 4bit (NF4, double quantisation) or 8bit through bitsandbytes "
                            "(QLoRA; LoRA only; 8bit needs CUDA); none: the compute dtype")
    use_dora: bool = setting(False, "DoRA: LoRA on the direction of each weight plus a trained magnitude vector")
    use_rslora: bool = setting(False, "rsLoRA: scale updates by lora_alpha / sqrt(lora_r), stable at high ranks")
    lora_init: str = setting("default", "LoRA initialisation: default (B = 0), gaussian, pissa, olora (saved as plain "
                             "LoRA) or loftq (quantize=4bit, CUDA: cancels the quantisation error)")
    loraplus_lr_ratio: float | None = setting(None, "LoRA+: learning rate of the B matrices = this x the learning "
                                              "rate (the paper suggests 16); none: one learning rate")
    # Data and speed.
    max_length: int = setting(2048, "tokens per example (dpo, reward: per prompt + answer); the end of a longer "
                              "one is cut", NOT_GRPO, "grpo keeps whole prompts and samples max_new_tokens")
    # Tokens per forward/backward pass (an optimizer step is split into passes of at most this many; the
    # update is the same). None, LoRA on CPU: 512 where the heap keeps what bigger passes free (bench, 200
    # examples, PEFT's own forward: peak RSS 2.95 -> 2.30 GB, 20% slower; DPO / reward 5.1-5.7 -> 2.7 GB);
    # SFT 1024 since its LoRA Linears are fused (fused_lora: 1024 vs 512, 419 vs 378 tokens/s for +30 MB,
    # PERF_NOTES.md). 4096 on GPU and for full fine-tuning, whose memory is mostly weights and optimizer state
    # (512 cost it 27% speed for 9% memory).
    micro_batch_tokens: int | None = setting(None, "tokens per forward/backward pass (same update, less memory); "
                                             "none: on CPU with LoRA 1024 for sft, 512 otherwise; else 4096")
    dtype: str = setting("auto", "compute dtype: auto, float32 or bfloat16")
    gradient_checkpointing: bool = setting(False, "recompute activations during backward: less memory, slower")
    compile: bool = setting(False, "torch.compile each decoder block")
    fused_lora: bool = setting(True, "LoRA Linears as one fused autograd function (same result as PEFT's forward, "
                               "fewer dtype copies); false: PEFT's own forward")
    neftune_noise_alpha: float | None = setting(None, "NEFTune: uniform noise on the input embeddings of training "
                                                "passes, at most alpha / sqrt(tokens x width) (the paper: 5); none: "
                                                "off", ("sft",), "NEFTune regularises instruction tuning, and in the "
                                                "other methods it would blur the scores they compare")
    attention: str = setting("auto", "attention kernel: auto (CPU: eager for rows <= 1024 tokens, measured faster; else "
                             "the model's default), eager, sdpa, flash_attention_2/3, flex_attention", ("sft",),
                             "measured and chosen for SFT so far, the other recipes run the model's default (sdpa)")
    packing: str = setting("auto", "several examples per row, each attending only to itself (no padding): on, off "
                           "or auto (on where it measures faster: docs/benchmarks.md)", ("sft",))
    # Logging, evaluation, checkpoints.
    log_every: int = setting(1, "write a train record to metrics.jsonl every N steps")
    eval_every: int | None = setting(None, "measure the validation data every N steps; none: about 5 times a run")
    save_every: int | None = setting(None, "write a resumable checkpoint every N steps")
    keep_checkpoints: int = setting(2, "how many of the latest checkpoints to keep")
    report_to: list[str] = setting([], "experiment trackers, several allowed: tensorboard, mlflow, trackio, wandb "
                                   "(docs/tracking.md); none: metrics.jsonl only")
    run_name: str | None = setting(None, "the run's name in the trackers; none: the output folder's name")
    project: str | None = setting(None, "tracker project (MLflow experiment, trackio / W&B project); none: "
                                  "$MLFLOW_EXPERIMENT_NAME / $WANDB_PROJECT, else tuneforge")
    resume: str | None = setting(None, "'auto' (the latest checkpoint in output) or a checkpoint directory")
    eval_data: str | None = setting(None, "after training, exact match on this test file (in summary.json)",
                                    NOT_REWARD, "a reward model does not answer prompts, its measure is pairwise "
                                    "accuracy on validation_data")
    chat_template: str | None = setting(None, f"how rows are rendered: a built-in ({', '.join(BUILTIN_TEMPLATES)}; "
                                        "-tools for tool calls) or a Jinja file; none: the model's own or a built-in")
    init_adapter: str | None = setting(None, "start from this LoRA adapter, e.g. an SFT run (dpo and grpo: also the "
                                       "reference policy)")
    # Preference tuning (dpo).
    beta: float = setting(0.1, "DPO temperature: how strongly the policy is held to the reference", ("dpo",))
    loss_type: str = setting("sigmoid", "preference loss: sigmoid (DPO), ipo or simpo", ("dpo",))
    simpo_gamma: float = setting(0.5, "SimPO target margin (loss_type=simpo)", ("dpo",))
    # RPO (Pang et al. 2024): add rpo_alpha x the chosen answer's mean token NLL to each pair's loss, so the
    # policy also learns to *write* the preferred answer, not only to rank it. On by default: plain DPO
    # took the demo's SFT policy from 99% to 0% valid JSON while its preference accuracy rose (both
    # answers' likelihoods fell). 0.2, not 1: at 1 the term also trains the chosen answers as answers in
    # general, and held-out pairs that reject another prompt's chosen answer fell to 0.84 (capitals task);
    # 0.2 kept both above the bar (docs/benchmarks.md). 0 gives the paper's DPO / IPO / SimPO.
    rpo_alpha: float = setting(0.2, "weight of the chosen answer's token NLL added to each pair's loss (0: off)",
                               ("dpo",))
    # Reward model: where the value head reads. "mean" (default): its values over every answer token, averaged
    # and scaled by the training answers' mean length; "sum": summed; "last": the end-of-turn token only.
    # Demo pairs, held-out accuracy: mean 0.94, sum 0.92, last 0.84 (docs/benchmarks.md).
    reward_pooling: str = setting("mean", "where the value head reads: mean, sum or last (answer tokens)", ("reward",))
    # Reward-driven RL (grpo).
    reward: str | None = setting(None, "reward function: exact_match, json_format, json_fields or module:function",
                                 ("grpo",))
    reward_model: str | None = setting(None, "reward model: a directory written by --method reward", ("grpo",))
    grader: str | None = setting(None, "grader: a JSON file holding an OpenAI grader object (string_check, "
                                 "text_similarity, score_model, label_model, python or multi)", ("grpo",))
    group_size: int = setting(4, "completions sampled per prompt; advantages compare them within the group",
                              ("grpo",))
    max_new_tokens: int = setting(64, "longest sampled completion, in tokens", ("grpo",))
    kl_beta: float = setting(0.04, "weight of the per-token KL to the reference policy (0: no reference)", ("grpo",))
    clip_epsilon: float = setting(0.2, "clip of the policy ratio (matters when policy_updates > 1)", ("grpo",))
    temperature: float = setting(1.0, "sampling temperature of the completions", ("grpo",))
    policy_updates: int = setting(1, "optimizer steps per batch of sampled completions", ("grpo",))
    # Forgetting: replay general data, stop early, gate on general-text perplexity (see tuneforge.evaluate.forgetting).
    replay: str | None = setting(None, "general data mixed in against forgetting: JSONL/text file, builtin:pydoc or "
                                 "builtin:self (the model's own answers)", ("sft",))
    replay_ratio: float = setting(0.0, "replay examples per training example", ("sft",))
    # The forgetting guard (tuneforge/forgetting_guard.py), on by default: each step also carries general
    # conversations answered by the base, and the model is held to the base's distributions on them.
    forgetting_guard: str = setting("kl", "keep the model like the base on general prompts: kl (distil the base's "
                                    "next-token distributions), replay (train on its answers) or off", NOT_REWARD, GUARD_WHY_NOT)
    # 0.0625 (one conversation every other step of 8), by measurement on the demo: as good as 0.125 and 0.25
    # (general questions 52.6% -> 53.3%, perplexity +1.1%) for 1.10x the unguarded training time warm, 1.29x
    # with a cold cache; 0.125 took 1.49x / 1.74x (docs/benchmarks.md, issue 17).
    forgetting_guard_ratio: float = setting(0.0625, "guard conversations per training example, added to each step",
                                            NOT_REWARD, GUARD_WHY_NOT)
    forgetting_guard_weight: float = setting(1.0, "weight of the guard's per-token loss against the task's", NOT_REWARD,
                                             GUARD_WHY_NOT)
    forgetting_guard_prompts: str | None = setting(None, "general prompts for the guard, one per line (default: the "
                                                   "built-in set)", NOT_REWARD, GUARD_WHY_NOT)
    max_forgetting: float | None = setting(None, "fail the run (exit 1) if general-text perplexity rises more than "
                                           "this %", NOT_REWARD, "the gate measures a model that answers prompts")
    max_general_drop: float | None = setting(None, "fail the run (exit 1) if the share of general questions answered "
                                             "correctly falls more than this many points", NOT_REWARD,
                                             "the gate measures a model that answers prompts")
    early_stopping_patience: int | None = setting(None, "stop after N validation passes without a new best; the "
                                                  "best weights are kept", ("sft",))

    def resolved_micro_batch_tokens(self, device: str) -> int:
        if self.micro_batch_tokens is not None:
            return self.micro_batch_tokens
        if str(device).startswith("cpu") and not self.full:
            return 1024 if self.method == "sft" else 512
        return 4096

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-5 if self.full else 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_TYPES = {name: f.type for name, f in FIELDS.items()}

# The names other fine-tuning tools' configs use for a key, accepted in YAML and key=value so their users'
# habits (and many lines of their files) work here. An alias means exactly its key, with this key's type,
# range and default; train_config.json is written with the key. One layer (a YAML file, the key=value list)
# that sets a key twice, under two of its names, is an error: which would win is a guess.
ALIASES = {
    # transformers' TrainingArguments / TRL (its GRPOConfig for the last two)
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",  # one process; under --nproc batch_size is the whole step's
    "gradient_accumulation_steps": "gradient_accumulation",
    "output_dir": "output",
    "model_name_or_path": "model",
    "lr_scheduler_type": "lr_schedule",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_checkpoints",
    "resume_from_checkpoint": "resume",
    "max_seq_length": "max_length",
    "torch_compile": "compile",
    "num_generations": "group_size",
    "max_completion_length": "max_new_tokens",
    # Axolotl
    "base_model": "model",
    "num_epochs": "epochs",
    "micro_batch_size": "batch_size",
    "lr_scheduler": "lr_schedule",
    "sequence_len": "max_length",
    "val_set_size": "validation_split",
    # LLaMA-Factory
    "cutoff_len": "max_length",
    "lora_rank": "lora_r",
    "lora_target": "lora_target_modules",
    "val_size": "validation_split",
    "pref_beta": "beta",
    "pref_loss": "loss_type",
    # Short, and the spellings of tuneforge's other verbs (validate --validation-file, split --validation-fraction)
    "lr": "learning_rate",
    "validation_file": "validation_data",
    "validation_fraction": "validation_split",
}
ALIASES_OF = {name: [alias for alias, key in ALIASES.items() if key == name] for name in FIELDS}


def default_value(name: str) -> Any:
    f = FIELDS[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def describe_keys(method: str | None = None) -> list[dict[str, Any]]:
    """Every key as {key, type, default, methods, description, aliases} (`tuneforge config`); `method` keeps its keys."""
    return [
        {"key": name, "type": f.type, "default": default_value(name), "methods": list(f.metadata["methods"]),
         "description": f.metadata["doc"], "aliases": ALIASES_OF[name]}
        for name, f in FIELDS.items()
        if method is None or method in f.metadata["methods"]
    ]


def example_config(method: str) -> Path:
    """The commented example config of a method, shipped in the package (`tuneforge config --example METHOD`)."""
    if method not in METHODS:
        raise UserError(f"no example config for {method!r}: expected one of {', '.join(METHODS)}")
    return EXAMPLES / f"{method}.yaml"


# A problem is (the key it is about, or the keys of a rule between keys; the one-line message).
Problem = tuple[tuple[str, ...], str]


def _coerce(name: str, value: Any, problems: list[Problem]) -> Any:
    declared = typing.get_type_hints(TrainConfig)[name]
    optional = typing.get_origin(declared) in (typing.Union, types.UnionType) and type(None) in typing.get_args(declared)
    base = next(a for a in typing.get_args(declared) if a is not type(None)) if optional else declared
    origin = typing.get_origin(base)
    if origin is list and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return []  # report_to=none, as TRL spells "no tracker"
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        problems.append(((name,), f"{name}: may not be empty"))
        return None
    if name == "forgetting_guard" and isinstance(value, bool):
        return "kl" if value else "off"  # YAML reads `forgetting_guard: off` as false
    if name == "forgetting_guard" and isinstance(value, str) and value.lower() in ("false", "no", "none", "0"):
        return "off"
    if origin is dict:  # the column mapping, the one mapping-valued key: data.readers knows the fields
        from tuneforge.data.readers import parse_columns

        try:
            return parse_columns(value)
        except ValueError as exc:
            problems.append(((name,), f"{name}: {exc}"))
            return None
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
    problems.append(((name,), f"{name}: expected {getattr(base, '__name__', str(base))}, got {value!r}"))
    return None


def _check_ranges(config: TrainConfig) -> list[Problem]:
    """Every range and cross-key rule, on a config whose keys all have their type (a default stands in for
    a value that had the wrong one), so range problems are found in the same pass as type problems."""
    problems: list[Problem] = []

    def require(condition: bool, keys: str | tuple[str, ...], message: str) -> None:
        if not condition:
            problems.append(((keys,) if isinstance(keys, str) else keys, message))

    require(config.method in METHODS, "method", f"method: expected one of {', '.join(METHODS)}, got {config.method!r}")
    require(config.lr_schedule in SCHEDULES, "lr_schedule", f"lr_schedule: expected one of {', '.join(SCHEDULES)}")
    require(config.attention in ATTENTIONS, "attention",
            f"attention: expected one of {', '.join(ATTENTIONS)}, got {config.attention!r}")
    require(config.packing in PACKINGS, "packing", f"packing: expected one of {', '.join(PACKINGS)}, got {config.packing!r}")
    require(config.dtype in ("auto", "float32", "bfloat16"), "dtype", "dtype: expected auto, float32 or bfloat16")
    require(config.epochs > 0, "epochs", "epochs: must be > 0")
    require(config.max_steps is None or config.max_steps > 0, "max_steps", "max_steps: must be > 0")
    require(config.batch_size >= 1, "batch_size", "batch_size: must be >= 1")
    require(config.gradient_accumulation >= 1, "gradient_accumulation", "gradient_accumulation: must be >= 1")
    require(config.learning_rate is None or config.learning_rate > 0, "learning_rate", "learning_rate: must be > 0")
    require(0 <= config.warmup_ratio < 1, "warmup_ratio", "warmup_ratio: must be in [0, 1)")
    require(0 <= config.validation_split < 1, "validation_split", "validation_split: must be in [0, 1)")
    require(config.lora_r >= 1, "lora_r", "lora_r: must be >= 1")
    require(0 <= config.lora_dropout < 1, "lora_dropout", "lora_dropout: must be in [0, 1)")
    require(bool(config.lora_target_modules), "lora_target_modules",
            "lora_target_modules: name at least one module, or all-linear")
    require(config.lora_target_modules != ["all"], "lora_target_modules",
            "lora_target_modules: 'all' is spelled all-linear here (every linear layer but the output head)")
    require(config.max_length >= 8, "max_length", "max_length: must be >= 8")
    require(config.micro_batch_tokens is None or config.micro_batch_tokens >= 8, "micro_batch_tokens",
            "micro_batch_tokens: must be >= 8")
    require(config.max_grad_norm >= 0, "max_grad_norm", "max_grad_norm: must be >= 0 (0 disables clipping)")
    require(config.log_every >= 1, "log_every", "log_every: must be >= 1")
    require(config.save_every is None or config.save_every > 0, "save_every", "save_every: must be > 0")
    require(config.eval_every is None or config.eval_every > 0, "eval_every", "eval_every: must be > 0")
    require(config.keep_checkpoints >= 1, "keep_checkpoints", "keep_checkpoints: must be >= 1")
    unknown_trackers = [name for name in config.report_to if name not in TRACKERS]
    require(not unknown_trackers, "report_to",
            f"report_to: expected {', '.join(TRACKERS[:-1])} or {TRACKERS[-1]} (or none), got {', '.join(unknown_trackers)}")
    require(config.beta > 0, "beta", "beta: must be > 0")
    require(config.loss_type in LOSS_TYPES, "loss_type",
            f"loss_type: expected one of {', '.join(LOSS_TYPES)}, got {config.loss_type!r}")
    require(config.rpo_alpha >= 0, "rpo_alpha", "rpo_alpha: must be >= 0")
    require(config.reward_pooling in REWARD_POOLINGS, "reward_pooling",
            f"reward_pooling: expected one of {', '.join(REWARD_POOLINGS)}, got {config.reward_pooling!r}")
    require(config.group_size >= 2, "group_size",
            "group_size: must be >= 2 (advantages compare completions within a group)")
    require(config.max_new_tokens >= 1, "max_new_tokens", "max_new_tokens: must be >= 1")
    require(config.temperature > 0, "temperature", "temperature: must be > 0 (GRPO samples)")
    require(config.kl_beta >= 0 and config.clip_epsilon > 0, ("kl_beta", "clip_epsilon"),
            "kl_beta must be >= 0 and clip_epsilon > 0")
    require(config.policy_updates >= 1, "policy_updates", "policy_updates: must be >= 1")
    require(config.method != "grpo" or [bool(config.reward), bool(config.reward_model), bool(config.grader)].count(True) == 1,
            ("reward", "reward_model", "grader"),
            "grpo needs exactly one of --reward (function), --reward-model (directory) or --grader (JSON file)")
    require(config.replay_ratio >= 0, "replay_ratio", "replay_ratio: must be >= 0")
    require(config.replay_ratio == 0 or bool(config.replay), ("replay_ratio", "replay"),
            "replay_ratio: needs --replay FILE (or builtin:pydoc)")
    require(config.forgetting_guard in GUARD_METHODS, "forgetting_guard",
            f"forgetting_guard: expected one of {', '.join(GUARD_METHODS)}, got {config.forgetting_guard!r}")
    require(config.max_general_drop is None or config.max_general_drop >= 0, "max_general_drop",
            "max_general_drop: must be >= 0 (points)")
    require(config.forgetting_guard_ratio >= 0, "forgetting_guard_ratio", "forgetting_guard_ratio: must be >= 0")
    require(config.forgetting_guard_weight >= 0, "forgetting_guard_weight", "forgetting_guard_weight: must be >= 0")
    require(config.early_stopping_patience is None or config.early_stopping_patience >= 1, "early_stopping_patience",
            "early_stopping_patience: must be >= 1")
    require(bool(config.data), "data", "data: a training file is required (--data FILE)")
    problems += _adapter_problems(config)
    return problems


def _adapter_problems(config: TrainConfig) -> list[Problem]:
    """QLoRA and the PEFT variants: their ranges, and the combinations that cannot work (with why)."""
    problems: list[Problem] = []

    def require(condition: bool, keys: str | tuple[str, ...], message: str) -> None:
        if not condition:
            problems.append(((keys,) if isinstance(keys, str) else keys, message))

    require(config.quantize in QUANTIZE, "quantize", f"quantize: expected one of {', '.join(QUANTIZE)}, "
            f"got {config.quantize!r}")
    require(config.lora_init in LORA_INITS, "lora_init", f"lora_init: expected one of {', '.join(LORA_INITS)}, "
            f"got {config.lora_init!r}")
    require(config.loraplus_lr_ratio is None or config.loraplus_lr_ratio > 0, "loraplus_lr_ratio",
            "loraplus_lr_ratio: must be > 0")
    require(config.neftune_noise_alpha is None or config.neftune_noise_alpha > 0, "neftune_noise_alpha",
            "neftune_noise_alpha: must be > 0 (none turns NEFTune off)")
    lora_only = {"quantize": config.quantize != "none", "use_dora": config.use_dora, "use_rslora": config.use_rslora,
                 "lora_init": config.lora_init != "default", "loraplus_lr_ratio": config.loraplus_lr_ratio is not None}
    for key, chosen in lora_only.items():
        require(not (config.full and chosen), (key, "full"),
                f"{key}: applies to LoRA, but full=true trains every weight (drop one of them)")
    for key in ("use_dora", "use_rslora", "lora_init"):
        require(not (config.init_adapter and lora_only[key]), (key, "init_adapter"),
                f"{key}: shapes a new adapter, but init_adapter continues one whose adapter_config.json already "
                "decides it (drop one of them)")
    if config.lora_init == "loftq":
        require(config.quantize == "4bit", ("lora_init", "quantize"),
                "lora_init=loftq: LoftQ initialises the adapter to cancel a 4-bit base's quantisation error, so it "
                "needs quantize=4bit (PEFT's LoftQ on an unquantised base rewrites the base weights, which tuneforge "
                "never saves)")
    if config.lora_init in RESIDUAL_INITS:
        init = f"lora_init={config.lora_init}"
        require(config.quantize == "none", ("lora_init", "quantize"),
                f"{init}: the residual it leaves in the base must be computed in full precision (PEFT refuses a "
                "quantised base): use quantize=none, or lora_init=loftq for a 4-bit base")
        require(not config.use_dora, ("lora_init", "use_dora"),
                f"{init}: the saved adapter is converted to plain LoRA against the original base, which PEFT does "
                "for the low-rank pair only, not DoRA's magnitude (drop use_dora)")
        # The adapter-off model is the residual W - B0 A0, not the base: everything that reads it as "what the
        # base would say" would compare with a different model.
        base_readers = []
        if config.method != "reward" and config.forgetting_guard != "off":
            base_readers.append(f"forgetting_guard={config.forgetting_guard} (set forgetting_guard=off)")
        if config.method == "dpo":
            base_readers.append("dpo's reference log-probs (start from init_adapter instead)")
        if config.method == "grpo" and config.kl_beta > 0:
            base_readers.append("grpo's KL to the reference (set kl_beta=0)")
        for key in ("max_forgetting", "max_general_drop"):
            if getattr(config, key) is not None:
                base_readers.append(f"the {key} gate (drop it; `tuneforge compare` measures the saved adapter)")
        require(not base_readers, ("lora_init",),
                f"{init}: moves the principal part of each weight into the adapter, so the adapter-off model is "
                f"no longer the base, and this run reads it as the base in: {', and '.join(base_readers)}")
    return problems


def _unused_by_method(config: TrainConfig, chosen: dict[str, Any]) -> list[Problem]:
    """One problem per chosen key that `config.method` never reads (it would be silently ignored).

    Only a value other than the default counts as chosen: a saved train_config.json holds every key, and
    rebuilding a run from it (resume, the service) must not read its defaults as choices.
    """
    if config.method not in METHODS:
        return []  # reported as a bad method already
    problems = []
    for name, value in chosen.items():
        methods, why_not = FIELDS[name].metadata["methods"], FIELDS[name].metadata["why_not"]
        if config.method not in methods and value != default_value(name):
            users = " and ".join([", ".join(methods[:-1]), methods[-1]] if len(methods) > 1 else methods)
            problems.append(((name,), f"{name}: set to {value!r}, but method {config.method} does not use it "
                             f"(only {users} {'does' if len(methods) == 1 else 'do'})"
                             f"{': ' + why_not if why_not else ''}"))
    return problems


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, [*FIELDS, *ALIASES], n=1)
    return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else " (`tuneforge config` lists every key)")


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
    """Merge layers (later wins), coerce types, check ranges and methods; report every problem at once.

    A key may be set under an alias (`ALIASES`); problems name it as it was written, e.g.
    "num_train_epochs (epochs): must be > 0".
    """
    merged: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # key -> the name the winning layer used for it
    problems: list[Problem] = []
    conflicted: set[str] = set()  # set twice in one layer: reported once, its value is not checked further
    for layer in layers:
        names_in_layer: dict[str, str] = {}
        for raw, value in layer.items():
            name = str(raw).replace("-", "_")
            key = ALIASES.get(name, name)
            if key not in FIELDS:
                problems.append(((), _unknown_key(name)))
                continue
            if key in names_in_layer:
                first = names_in_layer[key]
                problems.append(((key,), f"{first} and {name} both set: they are one key ({key}), keep one"))
                conflicted.add(key)
                continue
            names_in_layer[key] = name
            merged[key], spelled[key] = value, name
    chosen: dict[str, Any] = {}
    mistyped: set[str] = set(conflicted)
    for key, value in merged.items():
        if key in conflicted:
            continue
        before = len(problems)
        coerced = _coerce(key, value, problems)
        if len(problems) == before:  # a value that failed is reported; its default stands in for the checks below
            chosen[key] = coerced
        else:
            mistyped.add(key)
    config = TrainConfig(**chosen)
    unused = _unused_by_method(config, chosen)
    # A range problem of a key whose value had the wrong type (or two values) is about the default that
    # stood in (say nothing), and the range of a key the method ignores is beside the point (the unused-key problem says
    # what to do).
    beside_the_point = mistyped | {keys[0] for keys, _ in unused}
    problems += [(keys, message) for keys, message in _check_ranges(config) if not set(keys) & beside_the_point]
    problems += unused
    if problems:
        raise UserError("config: " + "; ".join(_as_written(keys, message, spelled) for keys, message in problems),
                        code="bad_config")
    return config


def _as_written(keys: tuple[str, ...], message: str, spelled: dict[str, str]) -> str:
    """The problem of a key set under an alias names the alias too: "num_train_epochs (epochs): ..."."""
    if len(keys) != 1 or spelled.get(keys[0], keys[0]) == keys[0] or not message.startswith(f"{keys[0]}:"):
        return message
    key = keys[0]
    return f"{spelled[key]} ({key}):{message.removeprefix(f'{key}:')}"
