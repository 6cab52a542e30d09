"""The forgetting guard, on by default:  tuneforge train --data train.jsonl   (off: forgetting_guard=off)

A model fine-tuned only on "ticket -> JSON" learns to answer *everything* with JSON. The guard keeps it
behaving like the base model on inputs unlike the training data, while it learns the task:

1. The base model answers a broad set of general prompts greedily (`data/general_prompts.txt`, or
   `forgetting_guard_prompts=FILE`), once per base model: the answers are cached under
   `$TUNEFORGE_HOME/forgetting-guard/`, keyed by a digest of the base weights (and the chat template, the
   compute dtype and the answer budget), so a second run on the same base pays nothing, and a changed
   base never reuses another's answers. Only the prompts a run will use are answered.
2. Every optimizer step carries, on top of its task examples, round(forgetting_guard_ratio x examples
   per step) of those conversations, drawn by seed and step number (so a resumed run draws the same).
3. `kl` (default): on every position of a guard conversation, the KL divergence from the base's full
   next-token distribution to the model's (`losses.linear_kl_sum`). The base is the same model with its
   LoRA adapter switched off, so no second copy sits in memory; for full fine-tuning, where there is no
   adapter to switch off, a frozen copy of the base is kept when it fits in memory, else the guard falls
   back to `replay`. `replay`: cross-entropy on the base's own (finished) answers, no base forward.

The task loss is normalised exactly as without the guard (its trained tokens in the step); the guard
term is its own per-token mean over the step's guard tokens, times `forgetting_guard_weight`. So the
task's learning rate, step count and schedule are those of the unguarded run, and `forgetting_guard=off`
runs exactly the unguarded code. Why this method and these defaults: docs/benchmarks.md (issue 17).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneforge import distributed, generation
from tuneforge.data.batching import collate, count_trained_targets, split_micro_batches
from tuneforge.data.replay import read_general_prompts
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.losses import linear_cross_entropy_sum, linear_kl_sum, shifted_trained_positions
from tuneforge.models import tuneforge_home
from tuneforge.trainable import autocast_for, core, final_hidden_states, output_head

GUARD_MAX_NEW_TOKENS = 64  # the base's answer budget; an answer cut there still carries its distributions (kl)
GUARD_GENERATION_BATCH = 64  # one decode step of 64 rows costs little more than one of 32 on CPU
CACHE_FORMAT = 1
FROZEN_COPY_MAX_SHARE = 0.5  # a full fine-tune keeps a frozen base copy only if it takes under half of free memory


def weights_digest(model) -> str:
    """SHA-256 over the base model's parameters (names, dtypes, shapes, bytes), LoRA tensors left out, so
    the base inside a PEFT model and the same base alone give one digest."""
    digest = hashlib.sha256()
    for name, parameter in sorted(core(model).named_parameters(), key=lambda item: item[0]):
        if "lora_" in name:
            continue
        tensor = parameter.detach().contiguous().cpu()
        digest.update(f"{name.replace('.base_layer', '')}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_file(model, tokenizer, dtype: torch.dtype) -> Path:
    key = hashlib.sha256(
        json.dumps([CACHE_FORMAT, weights_digest(model), tokenizer.chat_template or "", str(dtype),
                    GUARD_MAX_NEW_TOKENS]).encode()
    ).hexdigest()[:32]
    return tuneforge_home() / "forgetting-guard" / f"{key}.jsonl"


def _read_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            answers[entry["prompt"]] = entry
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line costs one regenerated answer, never the run
    return answers


def _write_cache(path: Path, answers: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: ranks may write at once
    staging.write_text("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in answers.values()),
                       encoding="utf-8")
    os.replace(staging, path)


@torch.no_grad()
def base_answers(model, tokenizer, prompts: list[str], dtype: torch.dtype) -> tuple[list[dict], dict]:
    """The base model's greedy answers to `prompts` ({"prompt", "answer", "finish_reason"} each), from the
    cache where present; the rest are generated (adapter off) and added to it. Returns (answers, cache info)."""
    started = time.perf_counter()
    path = cache_file(model, tokenizer, dtype)
    cached = _read_cache(path)
    missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in cached]
    if missing:
        was_training = model.training
        model.eval()
        try:
            with base_of(model):
                outputs = generation.generate_chat(
                    model, tokenizer, [[{"role": "user", "content": prompt}] for prompt in missing],
                    max_new_tokens=GUARD_MAX_NEW_TOKENS, batch_size=GUARD_GENERATION_BATCH,
                )
        finally:
            model.train(was_training)
        for prompt, output in zip(missing, outputs, strict=True):
            cached[prompt] = {"prompt": prompt, "answer": output["text"].strip(), "finish_reason": output["finish_reason"]}
        _write_cache(path, cached)
    info = {
        "cache": "hit" if not missing else ("miss" if len(missing) == len(set(prompts)) else "partial"),
        "generated": len(missing),
        "cache_file": str(path),
        "cache_seconds": round(time.perf_counter() - started, 2),
    }
    return [cached[prompt] for prompt in prompts], info


def base_of(model):
    """A context inside which the model runs as its base: a LoRA model with its adapter off; a model without an
    adapter is the base already."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def guard_example(tokenizer, prompt: str, answer: str, max_length: int, every_position: bool) -> TokenizedExample:
    """The conversation user: prompt, assistant: answer; trained on every position (kl) or the answer (replay)."""
    example = tokenize_conversation(tokenizer, [{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": answer}], None, max_length)
    if every_position:
        return TokenizedExample(input_ids=example.input_ids, labels=list(example.input_ids),
                                truncated_tokens=example.truncated_tokens)
    return example


@dataclass
class Guard:
    """What the recipe needs of the guard: its examples, which of them each step carries, and its teacher."""

    method: str
    weight: float
    examples: list[TokenizedExample]
    per_step: float  # guard conversations per optimizer step, on average
    seed: int
    frozen_base: torch.nn.Module | None = None  # full fine-tuning's teacher; None: the adapter-off model
    info: dict = field(default_factory=dict)
    train_seconds: float = 0.0

    def indices_for_step(self, step_number: int) -> list[int]:
        """The guard examples of optimizer step `step_number`: slots [floor(k*s), floor(k*(s+1))) of an endless
        sequence of seeded shuffles of the pool, k = per_step (a fraction allowed: 0.5 is one every other
        step), so every example is seen once before any is seen twice, and a resumed run draws what the
        uninterrupted one drew."""
        n = len(self.examples)
        chosen = []
        for slot in range(math.floor(self.per_step * step_number + 1e-9), math.floor(self.per_step * (step_number + 1) + 1e-9)):
            cycle, position = divmod(slot, n)
            order = list(range(n))
            random.Random(self.seed * 1_000_003 + 7919 * cycle).shuffle(order)
            chosen.append(order[position])
        return chosen

    def passes_for_step(self, step_number: int, world, micro_tokens: int, max_rows: int) -> tuple[list, list]:
        """(the step's guard conversations, its forward passes as the recipe runs them: (pool, indices, weight,
        normaliser, True)). The normaliser is the step's guard tokens / weight, so the guard adds its own
        per-token mean times its weight, and the task's loss keeps its own normalisation."""
        window = [self.examples[i] for i in self.indices_for_step(step_number)]
        if not window:  # a fractional per_step: this step carries none
            return [], []
        lengths = [len(e.input_ids) for e in window]
        normaliser = count_trained_targets(window) / self.weight
        passes = distributed.forward_passes(list(range(len(window))), lengths, world,
                                            lambda share: split_micro_batches(share, lengths, micro_tokens, max_rows))
        return window, [(window, micro, weight, normaliser, True) for micro, weight in passes]

    def summary(self) -> dict:
        return {"method": self.method, "weight": self.weight, "per_step": round(self.per_step, 4),
                "n_examples": len(self.examples), **self.info,
                "train_seconds": round(self.train_seconds, 2),
                "seconds": round(self.train_seconds + self.info.get("cache_seconds", 0.0), 2)}


def fits_frozen_copy(model) -> bool:
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    device = next(model.parameters()).device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return True
    return size < FROZEN_COPY_MAX_SHARE * free


def build_guard(config, model, tokenizer, dtype: torch.dtype, total_steps: int) -> Guard | None:
    """The guard for this run (None when off): base answers (cached), tokenized conversations, teacher."""
    method = config.forgetting_guard
    per_step = config.forgetting_guard_ratio * config.batch_size * config.gradient_accumulation
    if method == "off" or per_step <= 0 or config.forgetting_guard_weight <= 0:
        return None
    source = config.forgetting_guard_prompts
    prompts = read_general_prompts(source) if source else read_general_prompts()
    if not prompts:
        raise UserError("no prompts in the forgetting guard's prompt file", path=source)
    order = list(range(len(prompts)))
    random.Random(config.seed).shuffle(order)
    wanted = [prompts[i] for i in order[: min(len(prompts), math.ceil(per_step * max(total_steps, 1)))]]
    answers, info = base_answers(model, tokenizer, wanted, dtype)
    info["prompts"] = source or "builtin"
    frozen = None
    if method == "kl" and not hasattr(model, "disable_adapter"):  # full fine-tuning
        if fits_frozen_copy(model):
            frozen = copy.deepcopy(model).requires_grad_(False).eval()
        else:
            method, info["fallback"] = "replay", "no memory for a frozen copy of the base: replay only"
    examples = []
    for entry in answers:
        if method == "replay" and entry["finish_reason"] != "stop":
            continue  # training on an answer cut by the budget would teach stopping mid-sentence
        example = guard_example(tokenizer, entry["prompt"], entry["answer"], config.max_length, method == "kl")
        if example.n_trained > 1:
            examples.append(example)
    if not examples:
        raise UserError("the forgetting guard has no usable conversation (the base finished no answer); "
                        "set forgetting_guard=kl or give forgetting_guard_prompts")
    return Guard(method=method, weight=config.forgetting_guard_weight, examples=examples, per_step=per_step,
                 seed=config.seed, frozen_base=frozen, info=info)


def backward_guard_step(guard: Guard, model, step_number: int, pad_id: int, device: str, dtype: torch.dtype,
                        micro_tokens: int, max_rows: int, world=None) -> float | None:
    """Forward and backward over this rank's share of one optimizer step's guard conversations (their gradient
    joins the task's before the recipe's optimizer step, which averages an unwrapped model's gradients over
    ranks: hence each pass's weight, see distributed.forward_passes). Returns the guard's per-token loss of the
    whole step for the log (the same on every rank), None for a step that carries no guard conversation. SFT
    runs its guard passes in its own loop instead, where they must share DDP's gradient sync with the task's."""
    started = time.perf_counter()
    world = world or distributed.World()
    window, passes = guard.passes_for_step(step_number, distributed.World(), micro_tokens, max_rows)
    if not window:
        return None
    if world.enabled:  # this rank's share, no padding passes (no collective runs inside a forward here)
        lengths = [len(e.input_ids) for e in window]
        normaliser = passes[0][3]
        passes = [(window, micro, weight, normaliser, True) for micro, weight in distributed.forward_passes(
            list(range(len(window))), lengths, world,
            lambda share: split_micro_batches(share, lengths, micro_tokens, max_rows), lockstep=False)]
    total = 0.0
    for pool, micro, weight, normaliser, _ in passes:
        batch = collate([pool[i] for i in micro], pad_id, device)
        with autocast_for(device, dtype):
            loss_sum, _ = guard_loss_sum(model, guard, batch)
        (loss_sum * (weight / normaliser)).backward()
        total += float(loss_sum.detach()) / (normaliser * guard.weight)
    guard.train_seconds += time.perf_counter() - started
    (total,) = distributed.sum_over_ranks([total], world)
    return total


def guard_loss_sum(model, guard: Guard, batch) -> tuple[torch.Tensor, int]:
    """Summed guard loss of one micro-batch of guard conversations, and its token count: KL to the base on
    every trained position (kl) or cross-entropy on the base's answer tokens (replay)."""
    hidden = final_hidden_states(model, batch)
    trained_hidden, targets = shifted_trained_positions(hidden, batch["labels"])
    if guard.method == "replay":
        return linear_cross_entropy_sum(trained_hidden, output_head(model), targets), targets.numel()
    with torch.no_grad():
        if guard.frozen_base is not None:
            teacher, teacher_head = final_hidden_states(guard.frozen_base, batch), output_head(guard.frozen_base)
        else:
            with base_of(model):
                teacher = final_hidden_states(model, batch)
            teacher_head = None  # LoRA leaves the output head alone: the base's head is the model's
        teacher_trained, _ = shifted_trained_positions(teacher, batch["labels"])
    return linear_kl_sum(trained_hidden, output_head(model), teacher_trained, teacher_head), targets.numel()
