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
the whole optimizer step, so how a step is cut into micro-batches never changes the update, nor how many
processes share it (`tuneforge train --nproc N`: each rank takes its share of every step's pairs, of the
reference pass and of the validation pairs; the run shell averages the gradients, see tuneforge.distributed).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tuneforge import distributed
from tuneforge.checkpoint import save_weights
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, plan_epoch, split_micro_batches
from tuneforge.data.formats import load_preference_pairs
from tuneforge.data.preference import TokenizedPair, tokenize_pairs
from tuneforge.forgetting_guard import backward_guard_step, build_guard
from tuneforge.losses import chosen_nll, dpo_sigmoid_loss, ipo_loss, sequence_logprobs, simpo_loss
from tuneforge.recipes import run
from tuneforge.schedule import step_plan
from tuneforge.trainable import autocast_for, build_model, final_hidden_states, output_head


def pair_logprobs(model, pairs: list[TokenizedPair], pad_id: int, device: str) -> tuple[torch.Tensor, ...]:
    """(chosen sums, rejected sums, chosen token counts, rejected token counts) in one forward pass."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    hidden = final_hidden_states(model, batch)
    sums, counts = sequence_logprobs(hidden, output_head(model), batch["labels"])
    n = len(pairs)
    return sums[:n], sums[n:], counts[:n], counts[n:]


def reference_mode(model, config: TrainConfig):
    """Where the reference policy is the base model under a fresh adapter: switch the adapter off."""
    if not config.full and not config.init_adapter:
        return model.disable_adapter()
    return nullcontext()


def evaluation_batches(pairs: list[TokenizedPair], config: TrainConfig, device: str, world: distributed.World):
    """This rank's micro-batches of a no-grad pass over all pairs (every N-th of them under N processes)."""
    lengths = [p.length for p in pairs]
    batches = split_micro_batches(list(range(len(pairs))), lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=32)
    return batches[world.rank :: world.world_size]


@torch.no_grad()
def reference_logprobs(
    model, pairs: list[TokenizedPair], config: TrainConfig, pad_id: int, device: str, dtype,
    world: distributed.World | None = None,
) -> torch.Tensor:
    """[n_pairs, 2] sequence log-probs of (chosen, rejected) under the reference policy (each rank scores its
    share; the sum over ranks fills the table on every rank)."""
    world = world or distributed.World()
    result = torch.zeros(len(pairs), 2)
    if config.loss_type == "simpo" or not pairs:
        return result
    was_training = model.training
    model.eval()
    with reference_mode(model, config):
        for micro in evaluation_batches(pairs, config, device, world):
            with autocast_for(device, dtype):
                chosen, rejected, _, _ = pair_logprobs(model, [pairs[i] for i in micro], pad_id, device)
            result[micro] = torch.stack([chosen, rejected], dim=1).float().cpu()
    model.train(was_training)
    return distributed.sum_tensor_over_ranks(result, world)


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

    def merged(self, world: distributed.World) -> PairStats:
        """The sums of every rank (under torchrun each rank saw its share of the pairs)."""
        n, *sums = distributed.sum_over_ranks([self.n, *self.sums.values()], world)
        self.n, self.sums = n, dict(zip(self.sums, sums, strict=True))
        return self

    def means(self, prefix: str = "") -> dict:
        values = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
        return {prefix + k: round(v, 6) for k, v in values.items()}


@torch.no_grad()
def evaluate_pairs(model, pairs, reference, config: TrainConfig, pad_id: int, device: str, dtype,
                   world: distributed.World | None = None) -> dict:
    world = world or distributed.World()
    was_training = model.training
    model.eval()
    stats = PairStats()
    for micro in evaluation_batches(pairs, config, device, world):
        with autocast_for(device, dtype):
            chosen, rejected, chosen_n, rejected_n = pair_logprobs(model, [pairs[i] for i in micro], pad_id, device)
            losses, chosen_rewards, rejected_rewards = pair_losses(
                config, chosen, rejected, chosen_n, rejected_n, reference[micro]
            )
        stats.add(losses, chosen_rewards, rejected_rewards, chosen, rejected)
    model.train(was_training)
    return stats.merged(world).means()


def train(config: TrainConfig) -> dict:
    raw_pairs, raw_valid = run.train_and_validation(config, load_preference_pairs)
    world = distributed.setup()
    run.seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config, distributed.device_for(world))
    train_pairs = tokenize_pairs(tokenizer, raw_pairs, config.max_length, config.data)
    valid_pairs = tokenize_pairs(tokenizer, raw_valid, config.max_length, config.validation_data or config.data)
    pad_id = tokenizer.pad_token_id
    lengths = [p.length for p in train_pairs]
    pairs_per_step = config.batch_size * config.gradient_accumulation
    # Before any checkpoint is restored: the reference is the policy as training first started.
    train_reference = reference_logprobs(model, train_pairs, config, pad_id, device, dtype, world)
    valid_reference = reference_logprobs(model, valid_pairs, config, pad_id, device, dtype, world)

    _, total_steps, _ = step_plan(len(train_pairs), pairs_per_step, config.epochs, config.max_steps, config.warmup_ratio)
    guard = build_guard(config, model, tokenizer, dtype, total_steps)  # the base answers general prompts
    micro_tokens = config.resolved_micro_batch_tokens(device)

    describe = (f"{config.method}/{config.loss_type} beta={config.beta} {'full' if config.full else f'LoRA r={config.lora_r}'}"
                + (f" from adapter {config.init_adapter}" if config.init_adapter else "")
                + (f" + forgetting guard ({guard.method}, {guard.per_step:g}/step)" if guard else ""))
    with run.start(config, model, tokenizer, device, dtype, n_items=len(train_pairs), items_per_step=pairs_per_step,
                   describe=describe,
                   items=f"{len(train_pairs)} pairs", world=world) as shell:
        if valid_pairs and shell.progress.step == 0:
            run.log_valid(shell, evaluate_pairs(model, valid_pairs, valid_reference, config, pad_id, device, dtype, world))
        for step in run.steps(shell, lambda epoch: plan_epoch(lengths, pairs_per_step, config.seed, epoch)):
            stats = PairStats()
            for micro, weight in distributed.forward_passes(step.indices, lengths, world, lambda share: split_micro_batches(
                share, lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=config.batch_size
            ), lockstep=False):
                with autocast_for(device, dtype):
                    chosen, rejected, chosen_n, rejected_n = pair_logprobs(
                        model, [train_pairs[i] for i in micro], pad_id, device
                    )
                    losses, chosen_rewards, rejected_rewards = pair_losses(
                        config, chosen, rejected, chosen_n, rejected_n, train_reference[micro]
                    )
                # Per-pair losses over the pairs of the whole step (x world size: the shell averages over ranks).
                (losses.sum() * (weight / len(step.indices))).backward()
                stats.add(losses, chosen_rewards, rejected_rewards, chosen, rejected)
            metrics = stats.merged(world).means()
            guard_loss = backward_guard_step(guard, model, step.number, pad_id, device, dtype, micro_tokens,
                                             config.batch_size, world) if guard else None
            if guard_loss is not None:
                metrics[f"guard_{guard.method}"] = round(guard_loss, 6)
            run.optimizer_step(shell, step)
            tokens = sum(len(train_pairs[i].chosen.input_ids) + len(train_pairs[i].rejected.input_ids) for i in step.indices)
            run.log(shell, step, metrics, tokens=tokens, show=("loss", "rewards/accuracies"))
            if valid_pairs and run.validation_due(shell):
                run.log_valid(shell, evaluate_pairs(model, valid_pairs, valid_reference, config, pad_id, device, dtype, world))
            run.checkpoint_if_due(shell, step)

        save_weights(model, tokenizer, shell.output, writer=world.is_main)
        distributed.teardown(world)  # the last collective; rank 0's evaluation in finish runs on its own
        initial = shell.valid_history[0] if shell.valid_history and shell.valid_history[0]["step"] == 0 else {}
        final = shell.valid_history[-1] if shell.valid_history else {}
        train_accuracy = run.tail_mean(shell, "rewards/accuracies")
        return run.finish(shell, {
            "loss_type": config.loss_type,
            "beta": config.beta,
            "init_adapter": config.init_adapter,
            "n_pairs": len(train_pairs),
            "n_validation_pairs": len(valid_pairs),
            "forgetting_guard": guard.summary() if guard else {"method": "off"},
            "train_preference_accuracy": train_accuracy,
            # Held-out when there are validation pairs, else the last train steps'.
            "preference_accuracy": final.get("rewards/accuracies", train_accuracy),
            "initial_valid_logps_accuracy": initial.get("logps/accuracies"),
            "valid_logps_accuracy": final.get("logps/accuracies"),
            "valid_reward_margin": final.get("rewards/margins"),
        })
