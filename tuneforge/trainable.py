"""The model a recipe trains: the base with LoRA (PEFT) or fully trainable, its compute dtype, the parts
the fused losses read (decoder body, output head) and the optimizer over what trains.

    model, tokenizer, device, dtype = build_model(config)
    optimizer = make_optimizer(model, config)
    loss = linear_cross_entropy_sum(hidden_at_trained_positions, output_head(model), targets)

Loading itself (resolving `--model`, GGUF conversion, tokenizer) is `tuneforge.models`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from contextlib import nullcontext
from pathlib import Path

import torch

from tuneforge.config import TrainConfig
from tuneforge.errors import UserError
from tuneforge.fused_lora import fuse_lora_linears
from tuneforge.losses import OutputHead
from tuneforge.models import (
    bf16_is_fast,
    decoder_layers,
    default_device,
    load_adapter,
    load_base_model,
    load_quantized_base,
    load_tokenizer,
    portable_base_name,
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
    tokenizer = load_tokenizer(resolved.path, config.chat_template)
    # Frozen base weights in bf16 (when bf16 is the compute dtype) halve memory and skip per-step casts;
    # anything trained keeps fp32 master weights.
    storage = dtype if not config.full else torch.float32
    if config.quantize != "none":
        model = load_quantized_base(resolved, config.quantize, dtype, device)
    else:
        model = load_base_model(resolved, dtype=storage, device=device)
    model.config.use_cache = False
    if config.full:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        if config.init_adapter:
            model = load_adapter(model, config.init_adapter, is_trainable=True)
        else:
            model = new_adapter(model, config, resolved.path)
        # PEFT records the base in adapter_config.json: a name a user on another machine can resolve (the hub
        # id where one is known), not this machine's cache folder; tuneforge itself finds the base from
        # train_config.json's `model`.
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = portable_base_name(resolved)
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        if config.fused_lora:
            fuse_lora_linears(model)
    check_output_head(model, device, dtype)
    if config.neftune_noise_alpha is not None:
        add_neftune_noise(core(model).get_input_embeddings(), config.neftune_noise_alpha)
    if config.gradient_checkpointing:
        core(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.compile:
        # Block by block: the blocks share their code, so one compiled graph serves all of them, and dynamic
        # shapes keep a new sequence length from recompiling. The fused loss stays eager (it is one matmul).
        for layer in decoder_layers(model):
            layer.compile(dynamic=True)
    model.train()
    return model, tokenizer, device, dtype


# lora_init -> PEFT's init_lora_weights. loftq starts as the default and is replaced after the adapter exists:
# PEFT's in-layer LoftQ quantises an unquantised base and rewrites its weights, while `replace_lora_weights_loftq`
# fits the adapter to the error of the 4-bit base actually loaded, reading the original weights from the file.
PEFT_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "loftq": True}


def new_adapter(model, config: TrainConfig, model_dir: Path):
    """A new LoRA adapter on the base (PEFT), shaped by the config's LoRA keys."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        init_lora_weights=PEFT_INITS[config.lora_init],
    )
    if config.lora_init == "loftq" and next(model.parameters()).device.type not in ("cuda", "xpu"):
        raise UserError("lora_init=loftq needs a CUDA GPU: PEFT computes LoftQ's decomposition on 'cuda' (or XPU) "
                        "whatever the model's device (peft/utils/loftq_utils.py); use lora_init=default on the CPU",
                        code="loftq_needs_gpu")
    model = get_peft_model(model, lora)
    if config.lora_init == "loftq":
        from peft import replace_lora_weights_loftq

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if len(files) != 1:
            raise UserError(f"{model_dir}: lora_init=loftq reads the unquantised weights from one safetensors file "
                            f"(PEFT's replace_lora_weights_loftq); found {len(files)}", code="loftq_needs_one_file")
        replace_lora_weights_loftq(model, model_path=str(files[0]))
    if config.lora_init in ("pissa", "olora"):
        # The base now holds the residual W - B0 A0. Saved adapters are converted against these initial weights
        # (PEFT's path_initial_model_for_weight_conversion: the pair [B, -B0] [A; A0] of rank 2r) into plain LoRA
        # for the original base, which every loader (PEFT, merge, serving, compare) applies as usual. Resume
        # rebuilds the same initial weights (the SVD / QR of the same base) before restoring the trained ones.
        folder = Path(tempfile.mkdtemp(prefix="tuneforge-initial-adapter-"))
        weakref.finalize(model, shutil.rmtree, folder, True)
        model.save_pretrained(folder, safe_serialization=True)
        model.initial_adapter_dir = str(folder)
    return model


def add_neftune_noise(embedding: torch.nn.Module, alpha: float) -> None:
    """NEFTune (Jain et al. 2023): training passes see their input embeddings plus uniform noise in
    [-alpha / sqrt(L d), alpha / sqrt(L d)], L the padded sequence length and d the width (as transformers'
    Trainer scales it). Added where the embedding runs, as transformers' Trainer does, rather than by wrapping
    the module: a wrapper renames the weight a full fine-tune saves and loosens its tie to the output head.

    Only a pass that trains gets noise: the module in train mode and gradients on. Validation, generation
    (eval mode) and the forgetting guard's teacher pass (no_grad in train mode) see the clean embeddings."""

    def noisy(module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):
            return output
        bound = alpha / math.sqrt(output.shape[-2] * output.shape[-1])
        return output + torch.empty_like(output).uniform_(-bound, bound)

    embedding.register_forward_hook(noisy)


# On the CPU, eager attention (two matmuls and a softmax) trained SmolLM2 on the demo tickets faster than
# SDPA, whose CPU flash kernel's backward was 18% of a step (1 thread: 226 vs 191 tokens/s; PERF_NOTES.md).
# Eager keeps each layer's T x T attention weights for backward, so long rows stay on SDPA.
EAGER_ATTENTION_MAX_TOKENS = 1024


def choose_attention(config: TrainConfig, model, device: str, longest_row: int) -> tuple[str, str]:
    """(attention implementation, why) for this run, set on the model. auto: eager on the CPU for rows of at
    most EAGER_ATTENTION_MAX_TOKENS tokens, else whatever the model loaded with."""
    inner = core(model)
    loaded = str(getattr(inner.config, "_attn_implementation", None) or "eager")
    on_cpu = torch.device(device).type == "cpu"
    if config.attention != "auto":
        chosen, why = config.attention, f"attention={config.attention}"
    elif on_cpu and longest_row <= EAGER_ATTENTION_MAX_TOKENS:
        chosen, why = "eager", f"auto: CPU, rows of at most {longest_row} tokens (<= {EAGER_ATTENTION_MAX_TOKENS})"
    else:
        where = f"rows of up to {longest_row} tokens" if on_cpu else device
        chosen, why = loaded, f"auto: the model's default ({where})"
    if chosen != loaded:
        try:
            inner.set_attn_implementation(chosen)
        except (ImportError, ValueError) as error:
            raise UserError(f"attention={chosen}: {error}", code="attention_unavailable") from error
    return chosen, why


def core(model):
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def final_hidden_states(model, batch) -> torch.Tensor:
    """What the output head reads: the decoder body's last hidden states (after its final norm). A packed batch
    (`data.batching.collate_packed`) has position_ids and no attention mask: documents attend only to themselves."""
    return core(model).get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state


# Architectures whose forward scales the logits after the head matmul, and the factor as that forward computes
# it: Granite's `logits_scaling` divides, while the same field multiplies in others, so each is listed by name.
# One missing here (or doing anything else to its logits) is refused by `check_output_head`, never mistrained.
LOGIT_SCALES = {
    "cohere": lambda config: config.logit_scale,
    "cohere2": lambda config: config.logit_scale,
    "granite": lambda config: 1.0 / config.logits_scaling,
    "granitemoe": lambda config: 1.0 / config.logits_scaling,
}


def output_head(model) -> OutputHead:
    """The output head as the fused losses read it: weight, bias, logit scale and final softcap, from the same
    config fields the architecture's own forward reads. Read on every call, never cached: under FSDP the head's
    weight is a different tensor inside the forward than outside it."""
    inner = core(model)
    head = inner.get_output_embeddings()
    if hasattr(head, "base_layer"):
        raise UserError(
            "lora_target_modules includes the output head: the fused loss reads the head's weight directly and "
            "would ignore its adapter; leave the head out (the default all-linear does)",
            code="lora_on_output_head",
        )
    config = inner.config.get_text_config()
    scale = LOGIT_SCALES.get(config.model_type, lambda _: 1.0)(config)
    return OutputHead(head.weight, getattr(head, "bias", None), float(scale), getattr(config, "final_logit_softcapping", None))


CHECK_TOKENS = 16


@torch.no_grad()
def check_output_head(model, device: str, dtype: torch.dtype) -> None:
    """Refuse a model whose own logits `output_head` does not reproduce: an architecture that does something to
    its logits tuneforge does not know about would otherwise train on a silently different loss.

    One forward of CHECK_TOKENS tokens in the compute dtype, compared as log-probs (what every loss reads). The
    tolerance allows the head's own rounding: in bf16 the model rounds its logits (eps 2^-7 relative) where the
    fused loss finishes them in fp32; a missing scale or cap is off by a large fraction of the logits instead."""
    head = output_head(model)
    ids = torch.arange(min(CHECK_TOKENS, head.weight.shape[0]), device=head.weight.device)[None]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    was_training = model.training
    model.eval()  # no dropout: both paths must see the same hidden states
    try:
        with autocast_for(device, dtype):
            own = core(model)(**batch, use_cache=False).logits.float()
            ours = head.logits(final_hidden_states(model, batch)).float()
    finally:
        model.train(was_training)
    gap = float((own.log_softmax(-1) - ours.log_softmax(-1)).abs().max())
    tolerance = 1e-3 + 4 * torch.finfo(dtype).eps * float(own.abs().max())
    if not gap <= tolerance:
        model_type = core(model).config.model_type
        raise UserError(
            f"the model's output head (architecture '{model_type}') computes logits tuneforge's fused loss does not "
            f"reproduce (log-probs differ by up to {gap:.3g}, allowed {tolerance:.3g}): it scales, caps or shifts its "
            "logits in a way tuneforge does not know; please report the architecture",
            code="unsupported_output_head",
        )


def make_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over what trains. Each parameter group carries `lr_ratio`, its learning rate over the schedule's
    (`run.optimizer_step` sets each group's lr from it): 1, but loraplus_lr_ratio for LoRA's B matrices (LoRA+,
    Hayou et al. 2024: B learns faster than A). Weight decay spares vectors (biases, norms, DoRA magnitudes)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    ratio = config.loraplus_lr_ratio

    def ratio_of(name: str) -> float:
        return ratio if ratio is not None and ".lora_B." in name else 1.0

    groups = []
    for group_ratio in sorted({1.0, *(ratio_of(name) for name, _ in named)}):
        for decays in (True, False):
            params = [p for name, p in named if ratio_of(name) == group_ratio and (p.ndim >= 2) == decays]
            groups.append({"params": params, "weight_decay": config.weight_decay if decays else 0.0,
                           "lr_ratio": group_ratio})
    groups = [g for g in groups if g["params"]]
    lr = config.resolved_learning_rate()
    for group in groups:
        group["lr"] = lr * group["lr_ratio"]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
