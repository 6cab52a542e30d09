"""Supervised fine-tuning, LoRA or full:  tuneforge train --data train.jsonl --output runs/demo

One readable loop, top to bottom: data -> tokens and mask -> length-grouped steps -> micro-batches ->
fused linear+CE on trained positions only -> AdamW with warmup+decay -> checkpoints -> outputs.

Loss normalisation: every micro-batch's summed token loss is divided by the number of trained tokens
in the whole optimizer step (all micro-batches of the accumulation window), so the update does not
depend on how a step is cut into micro-batches (batch 8 x accumulation 1 == batch 1 x accumulation 8),
nor on how many processes share it (`torchrun --nproc-per-node N -m tuneforge train ...`: DDP for LoRA,
FSDP2 for full fine-tuning; see `tuneforge.distributed`).
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge import distributed
from tuneforge.checkpoint import (
    load_checkpoint,
    restore_trainable,
    resume_point,
    save_checkpoint,
    save_weights,
    trainable_state,
    write_json_atomic,
)
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, count_trained_targets, plan_epoch, split_micro_batches
from tuneforge.data.formats import Conversation, load_conversations
from tuneforge.data.replay import replay_examples
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.losses import linear_cross_entropy_sum, shifted_trained_positions
from tuneforge.recipes.common import (
    MetricsLog,
    StopRequest,
    Throughput,
    autocast_for,
    build_model,
    count_parameters,
    decoder_and_head,
    final_hidden_states,
    make_optimizer,
    seed_everything,
    write_summary,
)
from tuneforge.runfiles import trim_metrics
from tuneforge.schedule import learning_rate_at, step_plan


def split_validation(conversations: list[Conversation], fraction: float, seed: int):
    """Deterministic train/validation split by seed (the same seed always holds out the same rows)."""
    if fraction <= 0:
        return conversations, []
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, math.ceil(len(conversations) * fraction))
    held_out = set(order[:n_valid])
    train = [c for i, c in enumerate(conversations) if i not in held_out]
    valid = [c for i, c in enumerate(conversations) if i in held_out]
    return train, valid


def tokenize_all(tokenizer, conversations: list[Conversation], max_length: int, path: str) -> list[TokenizedExample]:
    examples = []
    for conversation in conversations:
        try:
            example = tokenize_conversation(tokenizer, conversation.messages, conversation.tools, max_length)
        except UserError as exc:
            raise UserError(exc.bare_message, path=path, line=conversation.line, code=exc.code) from None
        if example.n_trained == 0:
            raise UserError(
                "no trained tokens after rendering and truncation",
                path=path,
                line=conversation.line,
                code="no_trained_tokens",
            )
        examples.append(example)
    return examples


def micro_batch_loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    hidden = final_hidden_states(model, batch)
    trained_hidden, targets = shifted_trained_positions(hidden, batch["labels"])
    _, head = decoder_and_head(model)
    return linear_cross_entropy_sum(trained_hidden, head.weight, targets), targets.numel()


class TrainedTokenLoss(torch.nn.Module):
    """The model's forward and the fused loss as one module, so DDP / FSDP wrap the whole computation
    (the fused loss reads the output head's weight directly, outside the model's own forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return micro_batch_loss_sum(
            self.model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        )


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


def train(config: TrainConfig) -> dict:
    output = Path(config.output)
    train_path = config.data
    conversations = load_conversations(train_path)
    valid_conversations = load_conversations(config.validation_data) if config.validation_data else []
    if not valid_conversations and config.validation_split > 0:
        conversations, valid_conversations = split_validation(conversations, config.validation_split, config.seed)

    world = distributed.setup()
    seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config, distributed.device_for(world))
    train_examples = tokenize_all(tokenizer, conversations, config.max_length, train_path)
    replay = replay_examples(
        tokenizer, config.replay, config.replay_ratio, len(train_examples), config.seed, config.max_length, model=model
    )
    train_examples += replay
    valid_examples = tokenize_all(
        tokenizer, valid_conversations, config.max_length, config.validation_data or train_path
    )
    pad_id = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in train_examples]

    examples_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch, total_steps, warmup = step_plan(
        len(train_examples), examples_per_step, config.epochs, config.max_steps, config.warmup_ratio
    )
    peak_lr = config.resolved_learning_rate()
    eval_every = config.eval_every or max(1, total_steps // 5)
    n_params, n_trainable = count_parameters(model)
    loss_model = distributed.wrap(TrainedTokenLoss(model), model, world, config.full)
    optimizer = make_optimizer(model, config)  # after wrapping: FSDP's optimizer holds this rank's shards

    output.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        write_json_atomic(output / "train_config.json", config.to_dict())
    progress = {"step": 0, "epoch": 0, "step_in_epoch": 0, "trained_tokens": 0, "loss_tokens": 0, "train_seconds": 0.0}
    resumed_from = resume_point(output, config.resume)
    if resumed_from is not None:
        progress = load_checkpoint(resumed_from, model, optimizer)
        if world.is_main:
            trim_metrics(output / "metrics.jsonl", progress["step"])  # drop what the dead run logged past it
    metrics = MetricsLog(output / "metrics.jsonl", append=resumed_from is not None, enabled=world.is_main)

    if world.is_main:
        print(
            f"tuneforge: {config.method} {'full' if config.full else f'LoRA r={config.lora_r}'} on {config.model} | "
            f"{len(train_examples)} examples, {total_steps} steps, {device}/{str(dtype).removeprefix('torch.')} | "
            f"trainable {n_trainable:,} of {n_params:,}"
            + (f" | resumed from {resumed_from.name}" if resumed_from else "")
            + (f" | {world.world_size} processes" if world.enabled else ""),
            file=sys.stderr,
        )
    throughput = Throughput()
    recent_losses: list[float] = []
    valid_loss = None
    best_valid, evals_since_best, best_step, best_weights = math.inf, 0, None, None  # early stopping
    step = progress["step"]
    status = "completed"
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not world.is_main,
    )
    with StopRequest() as stop:
        epoch = progress["epoch"]
        skip = progress["step_in_epoch"]
        while step < total_steps:
            plan = plan_epoch(lengths, examples_per_step, config.seed, epoch)
            for step_in_epoch, indices in enumerate(plan):
                if step_in_epoch < skip:
                    continue
                if step >= total_steps:
                    break
                window = [train_examples[i] for i in indices]
                window_targets = count_trained_targets(window)
                step_loss = 0.0
                micro_batches, passes = distributed.forward_plan(
                    indices,
                    lengths,
                    world,
                    lambda share: split_micro_batches(share, lengths, config.resolved_micro_batch_tokens(device), config.batch_size),
                )
                for position in range(passes):
                    # A rank with fewer micro-batches than another runs a zero-weighted pass (collectives stay in step).
                    weight = world.world_size if position < len(micro_batches) else 0
                    micro = micro_batches[position] if weight else (micro_batches or [indices])[0][:1]
                    batch = collate([train_examples[i] for i in micro], pad_id, device)
                    with distributed.gradient_sync(loss_model, sync=position == passes - 1):
                        with autocast_for(device, dtype):
                            loss_sum, _ = loss_model(**batch)
                        # x world size: DDP/FSDP average gradients over ranks, the step's loss is their sum.
                        (loss_sum * (weight / window_targets)).backward()
                    if weight:
                        step_loss += float(loss_sum.detach()) / window_targets
                step_loss, stop_votes = distributed.sum_over_ranks([step_loss, float(stop.requested)], world)
                if stop_votes:  # a signal reached some rank: all stop after this same step
                    stop.requested = True
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
                    )
                lr = learning_rate_at(step, total_steps, peak_lr, warmup, config.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

                step += 1
                tokens = sum(len(e.input_ids) for e in window)
                throughput.add(tokens)
                progress.update(
                    step=step,
                    epoch=epoch,
                    step_in_epoch=step_in_epoch + 1,
                    trained_tokens=progress["trained_tokens"] + tokens,
                    loss_tokens=progress["loss_tokens"] + window_targets,
                )
                recent_losses.append(step_loss)
                record = {
                    "type": "train",
                    "step": step,
                    "epoch": round(epoch + (step_in_epoch + 1) / len(plan), 4),
                    "loss": round(step_loss, 6),
                    "lr": lr,
                    "tokens_per_second": round(throughput.tokens_per_second, 2),
                    "trained_tokens": progress["trained_tokens"],
                }
                if step % config.log_every == 0 or step == total_steps:
                    metrics.write(record)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{throughput.tokens_per_second:.0f}")
                bar.update(1)
                if valid_examples and (step % eval_every == 0 or step == total_steps):
                    valid_loss = validation_loss(loss_model, valid_examples, config, device, dtype, world)
                    metrics.write({"type": "valid", "step": step, "valid_loss": round(valid_loss, 6)})
                    if valid_loss < best_valid:
                        best_valid, evals_since_best, best_step = valid_loss, 0, step
                        if config.early_stopping_patience:  # the weights to keep if training stops later
                            best_weights = {name: t.cpu() for name, t in trainable_state(model).items()}
                    else:
                        evals_since_best += 1
                    if config.early_stopping_patience and evals_since_best >= config.early_stopping_patience:
                        status = "early_stopped"
                epoch_end = step_in_epoch + 1 == len(plan)
                if (
                    config.save_every
                    and (step % config.save_every == 0 or stop.requested or epoch_end)
                    and step < total_steps
                ):
                    progress["train_seconds"] = progress.get("train_seconds", 0.0) + throughput.seconds
                    path = save_checkpoint(
                        output,
                        step,
                        model,
                        optimizer,
                        progress,
                        config.keep_checkpoints,
                        config.to_dict(),
                        writer=world.is_main,
                    )
                    progress["train_seconds"] -= throughput.seconds
                    metrics.write(
                        {
                            "type": "checkpoint",
                            "step": step,
                            "path": str(path),
                            "train_loss": round(step_loss, 6),
                            "valid_loss": valid_loss,
                        }
                    )
                if stop.requested and step < total_steps:  # a stop during the last step changes nothing
                    status = "stopped"
                if status != "completed":
                    break
            if status != "completed":
                break
            epoch += 1
            skip = 0
    bar.close()
    if status == "early_stopped" and best_weights is not None:
        restore_trainable(model, best_weights)  # keep the best validation loss, not the last step
    train_seconds = progress.get("train_seconds", 0.0) + throughput.seconds
    save_weights(model, tokenizer, output, writer=world.is_main)
    distributed.teardown(world)  # the last collective; rank 0's evaluation below runs on its own
    tail = recent_losses[-max(1, len(recent_losses) // 10) :] if recent_losses else []
    summary = {
        "status": status,
        "model": config.model,
        "method": config.method,
        "full": config.full,
        "output": str(output),
        "n_examples": len(train_examples),
        "n_validation_examples": len(valid_examples),
        "n_replay_examples": len(replay),
        "steps": step,
        "total_steps": total_steps,
        "epochs": round(step / steps_per_epoch, 4),
        "trained_tokens": progress["trained_tokens"],
        "loss_tokens": progress["loss_tokens"],
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(throughput.tokens / max(throughput.seconds, 1e-9), 2),
        "final_train_loss": round(sum(tail) / len(tail), 6) if tail else None,
        "final_valid_loss": round(valid_loss, 6) if valid_loss is not None else None,
        "best_valid_loss": round(best_valid, 6) if best_step is not None else None,
        "best_step": best_step,
        "weights_from_step": best_step if status == "early_stopped" and best_weights is not None else step,
        "n_parameters": n_params,
        "n_trainable_parameters": n_trainable,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": world.world_size,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if (config.eval_data or config.max_forgetting is not None) and world.is_main:
        from tuneforge.evaluate.compare import training_eval

        summary.update(training_eval(model, tokenizer, config))  # "eval" and "forgetting" (with its gate)
    if world.is_main:
        write_summary(output, summary)
    metrics.close()
    return summary
