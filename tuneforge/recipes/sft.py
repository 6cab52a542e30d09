"""Supervised fine-tuning, LoRA or full:  tuneforge train --data train.jsonl --output runs/demo

One readable loop, top to bottom: data -> tokens and mask -> length-grouped steps -> micro-batches ->
fused linear+CE on trained positions only -> AdamW with warmup+decay -> checkpoints -> outputs.

Packing (`packing`, `choose_packing`): a micro-batch is then one row of several examples end to end, each
attending only to itself (`data.batching.collate_packed`); the trained tokens and their normaliser are the
same, so the update is that of the padded micro-batches.

Loss normalisation: every micro-batch's summed token loss is divided by the number of trained tokens
in the whole optimizer step (all micro-batches of the accumulation window), so the update does not
depend on how a step is cut into micro-batches (batch 8 x accumulation 1 == batch 1 x accumulation 8),
nor on how many processes share it (`torchrun --nproc-per-node N -m tuneforge train ...`: DDP for LoRA,
FSDP2 for full fine-tuning; see `tuneforge.distributed`).
"""

from __future__ import annotations

import math
import time

import torch

from tuneforge import distributed, generation
from tuneforge.checkpoint import restore_trainable, save_weights, trainable_state
from tuneforge.config import TrainConfig
from tuneforge.data.batching import (
    collate,
    collate_packed,
    count_trained_targets,
    pack_micro_batches,
    padding_share,
    plan_epoch,
    split_micro_batches,
)
from tuneforge.data.formats import Conversation, load_conversations
from tuneforge.data.replay import (
    BUILTIN_SELF,
    GENERAL_PROMPTS,
    SELF_REPLAY_MAX_NEW_TOKENS,
    read_general_prompts,
    replay_examples,
)
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation_examples
from tuneforge.errors import UserError
from tuneforge.forgetting_guard import Guard, build_guard, guard_loss_sum
from tuneforge.losses import linear_cross_entropy_sum, shifted_trained_positions
from tuneforge.recipes import run
from tuneforge.schedule import step_plan
from tuneforge.trainable import autocast_for, build_model, choose_attention, core, final_hidden_states, output_head

# packing=auto packs where the padded micro-batches would be at least this much padding. Measured on the CPU
# (bench/packing.py, docs/benchmarks.md): a packed token cost ~1.6x a padded one (the block-diagonal mask
# computes attention over the whole row), so packing pays past ~37% padding.
PACKING_MIN_PADDING_SHARE = 0.40


def tokenize_all(tokenizer, conversations: list[Conversation], max_length: int, path: str) -> list[TokenizedExample]:
    examples = []
    for conversation in conversations:
        try:
            found = tokenize_conversation_examples(tokenizer, conversation.messages, conversation.tools, max_length)
        except UserError as exc:
            raise UserError(exc.bare_message, path=path, line=conversation.line, code=exc.code) from None
        if not any(example.n_trained for example in found):
            raise UserError(
                "no trained tokens after rendering and truncation",
                path=path,
                line=conversation.line,
                code="no_trained_tokens",
            )
        # More than one where the chat template rewrites earlier turns (see data/tokenize.py).
        examples.extend(example for example in found if example.n_trained)
    return examples


def micro_batch_loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    hidden = final_hidden_states(model, batch)
    trained_hidden, targets = shifted_trained_positions(hidden, batch["labels"])
    return linear_cross_entropy_sum(trained_hidden, output_head(model), targets), targets.numel()


class TrainedTokenLoss(torch.nn.Module):
    """The model's forward and the fused loss as one module, so DDP / FSDP wrap the whole computation
    (the fused loss reads the output head's weight directly, outside the model's own forward). A micro-batch
    of the forgetting guard's conversations takes the guard's loss instead."""

    def __init__(self, model, guard: Guard | None = None):
        super().__init__()
        self.model = model
        self._guard = [guard]  # in a list: a full fine-tune's frozen base must stay out of DDP / FSDP's module tree

    def forward(self, input_ids, attention_mask, labels, position_ids=None, guard_pass: bool = False):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "position_ids": position_ids}
        if guard_pass:
            return guard_loss_sum(self.model, self._guard[0], batch)
        return micro_batch_loss_sum(self.model, batch)


@torch.no_grad()
def validation_loss(
    model, examples, config: TrainConfig, device: str, dtype, world: distributed.World | None = None
) -> float | None:
    """Mean token loss; under torchrun each rank takes every N-th micro-batch (and as many passes as the rest)."""
    if not examples:
        return None
    world = world or distributed.World()
    was_training = model.training
    model.eval()
    lengths = [len(e.input_ids) for e in examples]
    batches = split_micro_batches(list(range(len(examples))), lengths, config.resolved_micro_batch_tokens(device), max_rows=64)
    passes = math.ceil(len(batches) / world.world_size)
    mine = batches[world.rank :: world.world_size]
    total, count = 0.0, 0
    for position in range(passes):
        # A rank out of batches runs a padding pass, so FSDP's collectives stay in step.
        indices = mine[position] if position < len(mine) else batches[0]
        batch = collate([examples[i] for i in indices], pad_id=0, device=device)
        with autocast_for(device, dtype):
            loss_sum, n = model(**batch)
        if position < len(mine):
            total += float(loss_sum)
            count += n
    total, count = distributed.sum_over_ranks([total, float(count)], world)
    model.train(was_training)
    return total / max(count, 1)


def choose_packing(config: TrainConfig, model, lengths: list[int], examples_per_step: int, micro_tokens: int) -> tuple[bool, str]:
    """(pack?, why) for this run. auto: varlen flash attention packs for free; otherwise pack where the padded
    micro-batches of the first epoch would carry at least PACKING_MIN_PADDING_SHARE padding."""
    if config.packing != "auto":
        return config.packing == "on", f"packing={config.packing}"
    if "flash" in str(getattr(core(model).config, "_attn_implementation", "")):
        return True, "auto: flash attention (varlen)"
    share = padding_share(plan_epoch(lengths, examples_per_step, config.seed, 0), lengths, micro_tokens,
                          config.batch_size)
    packed = share >= PACKING_MIN_PADDING_SHARE
    return packed, f"auto: padding would be {share:.0%} of the tokens ({'>=' if packed else '<'} " \
                   f"{PACKING_MIN_PADDING_SHARE:.0%})"


def self_replay_rows(model, tokenizer) -> list[Conversation]:
    """`--replay builtin:self`: the model's own greedy answers to general prompts, as chat rows (finished
    answers only). The model runs here, in the recipe; the data layer only tokenizes and samples them."""
    prompts = read_general_prompts(GENERAL_PROMPTS)
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    was_training = model.training
    model.eval()
    try:
        answers = generation.generate_chat(model, tokenizer, conversations, max_new_tokens=SELF_REPLAY_MAX_NEW_TOKENS)
    finally:
        model.train(was_training)
    rows = [
        Conversation(messages=[*conversation, {"role": "assistant", "content": answer["text"].strip()}], line=i + 1)
        for i, (conversation, answer) in enumerate(zip(conversations, answers, strict=True))
        if answer["finish_reason"] == "stop" and answer["text"].strip()
    ]
    if not rows:
        raise UserError("builtin:self: the model finished none of the general prompts within the token budget")
    return rows


def train(config: TrainConfig) -> dict:
    conversations, valid_conversations = run.train_and_validation(config, load_conversations)
    world = distributed.setup()
    run.seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config, distributed.device_for(world))
    train_examples = tokenize_all(tokenizer, conversations, config.max_length, config.data)
    own_answers = self_replay_rows(model, tokenizer) if config.replay == BUILTIN_SELF and config.replay_ratio > 0 else None
    replay = replay_examples(tokenizer, config.replay, config.replay_ratio, len(train_examples), config.seed,
                             config.max_length, self_rows=own_answers)
    train_examples += replay
    valid_examples = tokenize_all(tokenizer, valid_conversations, config.max_length, config.validation_data or config.data)
    pad_id = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in train_examples]
    examples_per_step = config.batch_size * config.gradient_accumulation
    micro_tokens = config.resolved_micro_batch_tokens(device)
    _, total_steps, _ = step_plan(len(train_examples), examples_per_step, config.epochs, config.max_steps,
                                  config.warmup_ratio)
    packed, packing_why = choose_packing(config, model, lengths, examples_per_step, micro_tokens)
    # A packed row is up to a micro-batch's token budget long (or one longer example alone).
    longest_row = max([*lengths, *(len(e.input_ids) for e in valid_examples), micro_tokens if packed else 0])
    attention, attention_why = choose_attention(config, model, device, longest_row)
    guard = build_guard(config, model, tokenizer, dtype, total_steps)  # before any weight moves: it needs the base
    loss_model = distributed.wrap(TrainedTokenLoss(model, guard), model, world, config.full)
    if packed:  # one row per micro-batch, under the same token budget
        def split(share):
            return pack_micro_batches(share, lengths, micro_tokens)
    else:
        def split(share):
            return split_micro_batches(share, lengths, micro_tokens, config.batch_size)

    describe = f"sft {'full' if config.full else f'LoRA r={config.lora_r}'}, {'packed' if packed else 'padded'} " \
               f"({packing_why}), {attention} attention"
    if guard:
        describe += f" + forgetting guard ({guard.method}, {guard.per_step:g}/step)"
    best_valid, evals_since_best, best_step, best_weights = math.inf, 0, None, None  # early stopping
    with run.start(config, model, tokenizer, device, dtype, n_items=len(train_examples),
                   items_per_step=examples_per_step, describe=describe,
                   items=f"{len(train_examples)} examples", world=world, wrapped=True) as shell:
        for step in run.steps(shell, lambda epoch: plan_epoch(lengths, examples_per_step, config.seed, epoch)):
            window = [train_examples[i] for i in step.indices]
            window_targets = count_trained_targets(window)
            passes = [(train_examples, micro, weight, window_targets, False)
                      for micro, weight in distributed.forward_passes(step.indices, lengths, world, split)]
            guard_window, guard_passes = guard.passes_for_step(step.number, world, micro_tokens, config.batch_size) \
                if guard else ([], [])
            passes += guard_passes
            step_loss = guard_loss = 0.0
            for position, (pool, micro, weight, normaliser, guard_pass) in enumerate(passes):
                started = time.perf_counter()
                # The guard's conversations keep their own padded batches (its KL reads the base on the same batch).
                rows = [pool[i] for i in micro]
                batch = collate_packed(rows, device) if packed and not guard_pass else collate(rows, pad_id, device)
                with distributed.gradient_sync(loss_model, sync=position == len(passes) - 1):
                    with autocast_for(device, dtype):
                        loss_sum, _ = loss_model(**batch, guard_pass=True) if guard_pass else loss_model(**batch)
                    # Summed token loss over the whole step's trained tokens (x world size: see distributed).
                    (loss_sum * (weight / normaliser)).backward()
                if guard_pass:
                    guard.train_seconds += time.perf_counter() - started
                    if weight:
                        guard_loss += float(loss_sum.detach()) / (normaliser * guard.weight)
                elif weight:
                    step_loss += float(loss_sum.detach()) / window_targets
            step_loss, guard_loss = distributed.sum_over_ranks([step_loss, guard_loss], world)
            run.optimizer_step(shell, step)
            metrics = {"loss": round(step_loss, 6)}
            if guard_window:
                metrics[f"guard_{guard.method}"] = round(guard_loss, 6)
            run.log(shell, step, metrics, tokens=sum(len(e.input_ids) for e in window), loss_tokens=window_targets)

            if valid_examples and run.validation_due(shell):
                valid_loss = validation_loss(loss_model, valid_examples, config, device, dtype, world)
                run.log_valid(shell, {"valid_loss": round(valid_loss, 6)})
                if valid_loss < best_valid:
                    best_valid, evals_since_best, best_step = valid_loss, 0, shell.progress.step
                    if config.early_stopping_patience:  # the weights to keep if training stops later
                        best_weights = {name: t.cpu() for name, t in trainable_state(model).items()}
                else:
                    evals_since_best += 1
                if config.early_stopping_patience and evals_since_best >= config.early_stopping_patience:
                    shell.status = "early_stopped"
            run.checkpoint_if_due(shell, step)

        if shell.status == "early_stopped" and best_weights is not None:
            restore_trainable(model, best_weights)  # keep the best validation loss, not the last step
        save_weights(model, tokenizer, shell.output, writer=world.is_main)
        distributed.teardown(world)  # the last collective; rank 0's evaluation in finish runs on its own
        return run.finish(shell, {
            "n_examples": len(train_examples),
            "n_validation_examples": len(valid_examples),
            "n_replay_examples": len(replay),
            "packing": {"packed": packed, "why": packing_why},
            "attention": {"implementation": attention, "why": attention_why},
            "forgetting_guard": guard.summary() if guard else {"method": "off"},
            "best_valid_loss": round(best_valid, 6) if best_step is not None else None,
            "best_step": best_step,
            "weights_from_step": best_step if shell.status == "early_stopped" and best_weights is not None
            else shell.progress.step,
        })
