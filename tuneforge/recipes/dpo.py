"""Preference tuning (DPO, IPO, SimPO):  tuneforge train --method dpo --data prefs.jsonl [--init-adapter runs/sft]

Set-up, loop, save, top to bottom, in the shape of `tuneforge.recipes.sft`:
pairs -> (prompt+chosen, prompt+rejected) tokens -> reference log-probs, computed once -> length-grouped
steps of pairs -> sequence log-probs of both answers -> preference loss -> AdamW -> adapter + metrics.

The reference policy is the model as training starts, and its log-probs are precomputed in one
no-grad pass before the first step (a constant of the loss, so nothing is lost by caching it, and it
halves the forward passes per step on CPU):
  * LoRA from scratch: the base model, scored with the adapter disabled (`model.disable_adapter()`),
    so there is never a second copy of the weights in memory;
  * LoRA from an SFT adapter (--init-adapter): the SFT policy itself, the usual DPO reference;
  * full fine-tuning (--full): the initial weights, again without a frozen copy.
SimPO (loss_type=simpo) is reference-free and skips the pass.

Loss normalisation: per-pair losses are summed per micro-batch and divided by the number of pairs in
the whole optimizer step, so how a step is cut into micro-batches never changes the update.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge.checkpoint import load_checkpoint, resume_point, save_checkpoint, save_weights, write_json_atomic
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, plan_epoch, split_micro_batches
from tuneforge.data.formats import load_preference_pairs
from tuneforge.data.preference import TokenizedPair, tokenize_pairs
from tuneforge.losses import chosen_nll, dpo_sigmoid_loss, ipo_loss, sequence_logprobs, simpo_loss
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
from tuneforge.recipes.sft import split_validation
from tuneforge.schedule import learning_rate_at, step_plan


def pair_logprobs(model, pairs: list[TokenizedPair], pad_id: int, device: str) -> tuple[torch.Tensor, ...]:
    """(chosen sums, rejected sums, chosen token counts, rejected token counts) in one forward pass."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    hidden = final_hidden_states(model, batch)
    _, head = decoder_and_head(model)
    sums, counts = sequence_logprobs(hidden, head.weight, batch["labels"])
    n = len(pairs)
    return sums[:n], sums[n:], counts[:n], counts[n:]


def reference_mode(model, config: TrainConfig):
    """Where the reference policy is the base model under a fresh adapter: switch the adapter off."""
    if not config.full and not config.init_adapter:
        return model.disable_adapter()
    return nullcontext()


@torch.no_grad()
def reference_logprobs(
    model, pairs: list[TokenizedPair], config: TrainConfig, pad_id: int, device: str, dtype
) -> torch.Tensor:
    """[n_pairs, 2] sequence log-probs of (chosen, rejected) under the reference policy."""
    result = torch.zeros(len(pairs), 2)
    if config.loss_type == "simpo" or not pairs:
        return result
    was_training = model.training
    model.eval()
    lengths = [p.length for p in pairs]
    with reference_mode(model, config):
        for micro in split_micro_batches(list(range(len(pairs))), lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=32):
            with autocast_for(device, dtype):
                chosen, rejected, _, _ = pair_logprobs(model, [pairs[i] for i in micro], pad_id, device)
            result[micro] = torch.stack([chosen, rejected], dim=1).float().cpu()
    model.train(was_training)
    return result


def pair_losses(config: TrainConfig, chosen, rejected, chosen_n, rejected_n, reference: torch.Tensor):
    """(losses, chosen rewards, rejected rewards) per pair for the configured loss type."""
    if config.loss_type == "simpo":
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen / chosen_n, rejected / rejected_n, config.beta, config.simpo_gamma
        )
    else:
        loss_fn = {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss}[config.loss_type]
        reference = reference.to(chosen.device, chosen.dtype)
        losses, chosen_rewards, rejected_rewards = loss_fn(chosen, rejected, reference[:, 0], reference[:, 1], config.beta)
    if config.rpo_alpha > 0:
        losses = losses + config.rpo_alpha * chosen_nll(chosen, chosen_n)
    return losses, chosen_rewards, rejected_rewards


class PairStats:
    """Sums of per-pair metrics; `means(prefix)` gives the logged averages."""

    def __init__(self):
        self.n = 0
        self.sums = {
            "loss": 0.0,
            "rewards/chosen": 0.0,
            "rewards/rejected": 0.0,
            "rewards/accuracies": 0.0,
            "logps/accuracies": 0.0,
            "logps/chosen": 0.0,
            "logps/rejected": 0.0,
        }

    def add(self, losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> None:
        self.n += losses.numel()
        self.sums["loss"] += float(losses.detach().sum())
        self.sums["rewards/chosen"] += float(chosen_rewards.sum())
        self.sums["rewards/rejected"] += float(rejected_rewards.sum())
        # Ties (every pair at step 0, when policy == reference) count half: that is chance, not failure.
        margin = chosen_rewards - rejected_rewards
        self.sums["rewards/accuracies"] += float((margin > 0).sum() + 0.5 * (margin == 0).sum())
        # What the policy itself prefers, reference-free: comparable before and after training.
        self.sums["logps/accuracies"] += float((chosen_logps.detach() > rejected_logps.detach()).sum())
        # Sequence log-probs themselves: plain DPO may lower both while widening the gap (RPO keeps chosen up).
        self.sums["logps/chosen"] += float(chosen_logps.detach().sum())
        self.sums["logps/rejected"] += float(rejected_logps.detach().sum())

    def means(self, prefix: str = "") -> dict:
        values = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
        return {prefix + k: round(v, 6) for k, v in values.items()}


@torch.no_grad()
def evaluate_pairs(model, pairs, reference, config: TrainConfig, pad_id: int, device: str, dtype) -> dict:
    was_training = model.training
    model.eval()
    stats = PairStats()
    lengths = [p.length for p in pairs]
    for micro in split_micro_batches(list(range(len(pairs))), lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=32):
        with autocast_for(device, dtype):
            chosen, rejected, chosen_n, rejected_n = pair_logprobs(model, [pairs[i] for i in micro], pad_id, device)
            losses, chosen_rewards, rejected_rewards = pair_losses(
                config, chosen, rejected, chosen_n, rejected_n, reference[micro]
            )
        stats.add(losses, chosen_rewards, rejected_rewards, chosen, rejected)
    model.train(was_training)
    return stats.means()


def train(config: TrainConfig) -> dict:
    output = Path(config.output)
    raw_pairs = load_preference_pairs(config.data)
    raw_valid = load_preference_pairs(config.validation_data) if config.validation_data else []
    if not raw_valid and config.validation_split > 0:
        raw_pairs, raw_valid = split_validation(raw_pairs, config.validation_split, config.seed)

    seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config)
    train_pairs = tokenize_pairs(tokenizer, raw_pairs, config.max_length, config.data)
    valid_pairs = tokenize_pairs(tokenizer, raw_valid, config.max_length, config.validation_data or config.data)
    pad_id = tokenizer.pad_token_id
    lengths = [p.length for p in train_pairs]

    pairs_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch, total_steps, warmup = step_plan(
        len(train_pairs), pairs_per_step, config.epochs, config.max_steps, config.warmup_ratio
    )
    peak_lr = config.resolved_learning_rate()
    eval_every = config.eval_every or max(1, total_steps // 5)
    optimizer = make_optimizer(model, config)
    n_params, n_trainable = count_parameters(model)

    # Before any checkpoint is restored: the reference is the policy as training first started.
    train_reference = reference_logprobs(model, train_pairs, config, pad_id, device, dtype)
    valid_reference = reference_logprobs(model, valid_pairs, config, pad_id, device, dtype)

    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "train_config.json", config.to_dict())
    progress = {"step": 0, "epoch": 0, "step_in_epoch": 0, "trained_tokens": 0, "train_seconds": 0.0}
    resumed_from = resume_point(output, config.resume)
    if resumed_from is not None:
        progress = load_checkpoint(resumed_from, model, optimizer)
    metrics = MetricsLog(output / "metrics.jsonl", append=resumed_from is not None)

    print(
        f"tuneforge: {config.method}/{config.loss_type} beta={config.beta} "
        f"{'full' if config.full else f'LoRA r={config.lora_r}'} on {config.model} | {len(train_pairs)} pairs, "
        f"{total_steps} steps, {device}/{str(dtype).removeprefix('torch.')} | trainable {n_trainable:,} of {n_params:,}"
        + (f" | from adapter {config.init_adapter}" if config.init_adapter else ""),
        file=sys.stderr,
    )
    valid_metrics: dict = {}
    initial_valid: dict = {}
    if valid_pairs and resumed_from is None:
        initial_valid = evaluate_pairs(model, valid_pairs, valid_reference, config, pad_id, device, dtype)
        metrics.write({"type": "valid", "step": 0, **initial_valid})
    throughput = Throughput()
    recent: list[dict] = []
    step = progress["step"]
    status = "completed"
    bar = tqdm(total=total_steps, initial=step, desc=config.loss_type, unit="step", file=sys.stderr, dynamic_ncols=True)
    with StopRequest() as stop:
        epoch = progress["epoch"]
        skip = progress["step_in_epoch"]
        while step < total_steps:
            plan = plan_epoch(lengths, pairs_per_step, config.seed, epoch)
            for step_in_epoch, indices in enumerate(plan):
                if step_in_epoch < skip:
                    continue
                if step >= total_steps:
                    break
                stats = PairStats()
                for micro in split_micro_batches(
                    indices, lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=config.batch_size
                ):
                    with autocast_for(device, dtype):
                        chosen, rejected, chosen_n, rejected_n = pair_logprobs(
                            model, [train_pairs[i] for i in micro], pad_id, device
                        )
                        losses, chosen_rewards, rejected_rewards = pair_losses(
                            config, chosen, rejected, chosen_n, rejected_n, train_reference[micro]
                        )
                    (losses.sum() / len(indices)).backward()
                    stats.add(losses, chosen_rewards, rejected_rewards, chosen, rejected)
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
                tokens = sum(
                    len(train_pairs[i].chosen.input_ids) + len(train_pairs[i].rejected.input_ids) for i in indices
                )
                throughput.add(tokens)
                progress.update(
                    step=step,
                    epoch=epoch,
                    step_in_epoch=step_in_epoch + 1,
                    trained_tokens=progress["trained_tokens"] + tokens,
                )
                step_metrics = stats.means()
                recent.append(step_metrics)
                if step % config.log_every == 0 or step == total_steps:
                    metrics.write(
                        {
                            "type": "train",
                            "step": step,
                            "epoch": round(epoch + (step_in_epoch + 1) / len(plan), 4),
                            **step_metrics,
                            "lr": lr,
                            "tokens_per_second": round(throughput.tokens_per_second, 2),
                            "trained_tokens": progress["trained_tokens"],
                        }
                    )
                bar.set_postfix(loss=f"{step_metrics['loss']:.4f}", acc=f"{step_metrics['rewards/accuracies']:.2f}")
                bar.update(1)
                if valid_pairs and (step % eval_every == 0 or step == total_steps):
                    valid_metrics = evaluate_pairs(model, valid_pairs, valid_reference, config, pad_id, device, dtype)
                    metrics.write({"type": "valid", "step": step, **valid_metrics})
                if config.save_every and (step % config.save_every == 0 or stop.requested) and step < total_steps:
                    progress["train_seconds"] = progress.get("train_seconds", 0.0) + throughput.seconds
                    path = save_checkpoint(output, step, model, optimizer, progress, config.keep_checkpoints)
                    progress["train_seconds"] -= throughput.seconds
                    metrics.write(
                        {"type": "checkpoint", "step": step, "path": str(path), "train_loss": step_metrics["loss"]}
                    )
                if stop.requested:
                    status = "stopped"
                    break
            if status == "stopped":
                break
            epoch += 1
            skip = 0
    bar.close()
    train_seconds = progress.get("train_seconds", 0.0) + throughput.seconds
    save_weights(model, tokenizer, output)
    tail = recent[-max(1, len(recent) // 10) :]

    def tail_mean(key):
        return round(sum(r[key] for r in tail) / len(tail), 6) if tail else None

    summary = {
        "status": status,
        "model": config.model,
        "method": config.method,
        "loss_type": config.loss_type,
        "beta": config.beta,
        "full": config.full,
        "init_adapter": config.init_adapter,
        "output": str(output),
        "n_pairs": len(train_pairs),
        "n_validation_pairs": len(valid_pairs),
        "steps": step,
        "total_steps": total_steps,
        "epochs": round(step / steps_per_epoch, 4),
        "trained_tokens": progress["trained_tokens"],
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(throughput.tokens / max(throughput.seconds, 1e-9), 2),
        "final_train_loss": tail_mean("loss"),
        "final_valid_loss": valid_metrics.get("loss"),
        "train_preference_accuracy": tail_mean("rewards/accuracies"),
        # Held-out when there are validation pairs, else the last train steps'.
        "preference_accuracy": valid_metrics.get("rewards/accuracies", tail_mean("rewards/accuracies")),
        "initial_valid_logps_accuracy": initial_valid.get("logps/accuracies"),
        "valid_logps_accuracy": valid_metrics.get("logps/accuracies"),
        "valid_reward_margin": valid_metrics.get("rewards/margins"),
        "n_parameters": n_params,
        "n_trainable_parameters": n_trainable,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config.eval_data or config.max_forgetting is not None:
        from tuneforge.evaluate.compare import training_eval

        summary.update(training_eval(model, tokenizer, config))  # "eval" and "forgetting", as after SFT
    write_summary(output, summary)
    metrics.close()
    return summary
