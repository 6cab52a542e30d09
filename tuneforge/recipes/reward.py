"""Reward model:  tuneforge train --method reward --data prefs.jsonl --output runs/rm

A scalar score for a conversation: the base model's body with LoRA, plus a trainable linear value head
reading the final hidden state at the last answer token (the template's end-of-turn token, the last
token whose label is trained, so the score has read the whole answer and its ending). Trained on
preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), summed per pair and
divided by the pairs in the optimizer step; evaluated by pairwise accuracy on validation pairs. Under
`tuneforge train --nproc N` each rank takes its share of every step's pairs and of the validation pairs, and
the run shell averages the gradients (tuneforge.distributed): the same update as one process.

Output: the PEFT adapter and tokenizer (as SFT), `value_head.safetensors`, `reward_config.json`; the
model itself, its files and loading are `tuneforge.reward_model`, whose `load_reward_model(dir)` gives back a callable `rm(prompt_messages, completion, reference=None) -> float`
(the reward-function signature GRPO uses) with a batched `rm.score_conversations(conversations)`.
"""

from __future__ import annotations

import torch

from tuneforge import distributed
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, plan_epoch, split_micro_batches
from tuneforge.data.formats import load_preference_pairs
from tuneforge.data.preference import TokenizedPair, tokenize_pairs
from tuneforge.losses import bradley_terry_loss
from tuneforge.recipes import run
from tuneforge.reward_model import ScoredModel, mean_answer_tokens, save_reward_model
from tuneforge.trainable import autocast_for, build_model


def pair_scores(
    scored: ScoredModel, pairs: list[TokenizedPair], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    scores = scored(batch)
    return scores[: len(pairs)], scores[len(pairs) :]


class RewardStats:
    def __init__(self):
        self.n = 0
        self.sums = {"loss": 0.0, "scores/chosen": 0.0, "scores/rejected": 0.0, "accuracy": 0.0}

    def add(self, losses, chosen, rejected) -> None:
        self.n += losses.numel()
        self.sums["loss"] += float(losses.detach().sum())
        self.sums["scores/chosen"] += float(chosen.detach().sum())
        self.sums["scores/rejected"] += float(rejected.detach().sum())
        self.sums["accuracy"] += float((chosen.detach() > rejected.detach()).sum())

    def merged(self, world: distributed.World) -> RewardStats:
        """The sums of every rank (under torchrun each rank saw its share of the pairs)."""
        n, *sums = distributed.sum_over_ranks([self.n, *self.sums.values()], world)
        self.n, self.sums = n, dict(zip(self.sums, sums, strict=True))
        return self

    def means(self) -> dict:
        values = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        values["scores/margins"] = values["scores/chosen"] - values["scores/rejected"]
        return {k: round(v, 6) for k, v in values.items()}


@torch.no_grad()
def evaluate_pairs(scored: ScoredModel, pairs, config: TrainConfig, pad_id: int, device: str, dtype,
                   world: distributed.World | None = None) -> dict:
    """Mean loss, scores and pairwise accuracy; under torchrun each rank scores every N-th micro-batch."""
    world = world or distributed.World()
    was_training = scored.training
    scored.eval()
    stats = RewardStats()
    lengths = [p.length for p in pairs]
    batches = split_micro_batches(list(range(len(pairs))), lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=32)
    for micro in batches[world.rank :: world.world_size]:
        with autocast_for(device, dtype):
            chosen, rejected = pair_scores(scored, [pairs[i] for i in micro], pad_id, device)
        stats.add(bradley_terry_loss(chosen, rejected), chosen, rejected)
    scored.train(was_training)
    return stats.merged(world).means()


def train(config: TrainConfig) -> dict:
    raw_pairs, raw_valid = run.train_and_validation(config, load_preference_pairs)
    world = distributed.setup()
    run.seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config, distributed.device_for(world))
    train_pairs = tokenize_pairs(tokenizer, raw_pairs, config.max_length, config.data)
    scored = ScoredModel(model, model.config.hidden_size, config.reward_pooling, mean_answer_tokens(train_pairs)).to(device)
    valid_pairs = tokenize_pairs(tokenizer, raw_valid, config.max_length, config.validation_data or config.data)
    pad_id = tokenizer.pad_token_id
    lengths = [p.length for p in train_pairs]
    pairs_per_step = config.batch_size * config.gradient_accumulation

    describe = f"reward model {'full' if config.full else f'LoRA r={config.lora_r}'} + value head ({config.reward_pooling})"
    # What trains and is checkpointed is `scored`: the LoRA (or all) weights and the value head.
    with run.start(config, scored, tokenizer, device, dtype, n_items=len(train_pairs), items_per_step=pairs_per_step,
                   describe=describe,
                   items=f"{len(train_pairs)} pairs", world=world) as shell:
        if valid_pairs and shell.progress.step == 0:
            run.log_valid(shell, evaluate_pairs(scored, valid_pairs, config, pad_id, device, dtype, world))
        for step in run.steps(shell, lambda epoch: plan_epoch(lengths, pairs_per_step, config.seed, epoch)):
            stats = RewardStats()
            for micro, weight in distributed.forward_passes(step.indices, lengths, world, lambda share: split_micro_batches(
                share, lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=config.batch_size
            ), lockstep=False):
                with autocast_for(device, dtype):
                    chosen, rejected = pair_scores(scored, [train_pairs[i] for i in micro], pad_id, device)
                    losses = bradley_terry_loss(chosen, rejected)
                # Per-pair losses over the pairs of the whole step (x world size: the shell averages over ranks).
                (losses.sum() * (weight / len(step.indices))).backward()
                stats.add(losses, chosen, rejected)
            run.optimizer_step(shell, step)
            tokens = sum(len(train_pairs[i].chosen.input_ids) + len(train_pairs[i].rejected.input_ids) for i in step.indices)
            run.log(shell, step, stats.merged(world).means(), tokens=tokens, show=("loss", "accuracy"))
            if valid_pairs and run.validation_due(shell):
                run.log_valid(shell, evaluate_pairs(scored, valid_pairs, config, pad_id, device, dtype, world))
            run.checkpoint_if_due(shell, step)

        if world.is_main:
            save_reward_model(scored, tokenizer, shell.output, config)
        distributed.teardown(world)
        initial = shell.valid_history[0] if shell.valid_history and shell.valid_history[0]["step"] == 0 else {}
        final = shell.valid_history[-1] if shell.valid_history else {}
        train_accuracy = run.tail_mean(shell, "accuracy")
        return run.finish(shell, {
            "n_pairs": len(train_pairs),
            "n_validation_pairs": len(valid_pairs),
            "train_accuracy": train_accuracy,
            "initial_pairwise_accuracy": initial.get("accuracy"),
            # Held-out when there are validation pairs, else the last train steps'.
            "pairwise_accuracy": final.get("accuracy", train_accuracy),
            "valid_score_margin": final.get("scores/margins"),
        })
