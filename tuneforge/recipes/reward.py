"""Reward model:  tuneforge train --method reward --data prefs.jsonl --output runs/rm

A scalar score for a conversation: the base model's body with LoRA, plus a trainable linear value head
reading the final hidden state at the last answer token (the template's end-of-turn token, the last
token whose label is trained, so the score has read the whole answer and its ending). Trained on
preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), summed per pair and
divided by the pairs in the optimizer step; evaluated by pairwise accuracy on validation pairs.

Output: the PEFT adapter and tokenizer (as SFT), `value_head.safetensors`, `reward_config.json`.
`load_reward_model(dir)` gives back a callable `rm(prompt_messages, completion, reference=None) -> float`
(the reward-function signature GRPO uses) with a batched `rm.score_conversations(conversations)`.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tuneforge.checkpoint import load_checkpoint, resume_point, save_checkpoint, save_weights, write_json_atomic
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, plan_epoch, split_micro_batches
from tuneforge.data.formats import load_preference_pairs
from tuneforge.data.preference import TokenizedPair, tokenize_pairs, with_answer
from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.losses import bradley_terry_loss
from tuneforge.recipes.common import (
    MetricsLog,
    StopRequest,
    Throughput,
    autocast_for,
    build_model,
    count_parameters,
    final_hidden_states,
    make_optimizer,
    seed_everything,
    write_summary,
)
from tuneforge.recipes.sft import split_validation
from tuneforge.runfiles import trim_metrics
from tuneforge.schedule import learning_rate_at, step_plan

VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_CONFIG_FILE = "reward_config.json"


class ScoredModel(torch.nn.Module):
    """The causal LM's body (LoRA-wrapped) and a linear value head; its parameters are what trains.

    pooling "last": the head reads the last answer position (the end-of-turn token), which has attended to
    the whole answer. "mean": the head scores every answer position and the score is their mean times
    `answer_tokens` (the training answers' mean token count, a constant): the state at a wrong field value
    reports it directly instead of through the end-of-turn token, a one-token difference in a typical
    answer moves the score as much as in a sum, and length alone moves nothing (a reward model for RL must
    not pay for shorter or longer answers). "sum": the values summed, the shape of DPO's implicit reward,
    whose score also grows or shrinks with the answer's length.
    """

    def __init__(self, model, hidden_size: int, pooling: str = "mean", answer_tokens: float = 1.0):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.answer_tokens = float(answer_tokens)
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden_size))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict) -> torch.Tensor:
        """One score per row, from its answer (trained-label) positions."""
        hidden = final_hidden_states(self.model, batch)
        answer = batch["labels"] != IGNORE_INDEX
        if self.pooling in ("mean", "sum"):
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
            total = (values * answer).sum(dim=1)
            if self.pooling == "sum":
                return total
            return total / answer.sum(dim=1).clamp(min=1) * self.answer_tokens
        positions = torch.arange(batch["labels"].shape[1], device=hidden.device)
        last = torch.where(answer, positions, -1).amax(dim=1)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.value_head(picked.to(self.value_head.weight.dtype)).squeeze(-1)


def mean_answer_tokens(pairs: list[TokenizedPair]) -> float:
    """Mean count of trained (answer) tokens over both sides of the pairs: the scale of mean pooling."""
    counts = [sum(1 for label in side.labels if label != IGNORE_INDEX) for p in pairs for side in (p.chosen, p.rejected)]
    return round(sum(counts) / len(counts), 3) if counts else 1.0


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

    def means(self) -> dict:
        values = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        values["scores/margins"] = values["scores/chosen"] - values["scores/rejected"]
        return {k: round(v, 6) for k, v in values.items()}


@torch.no_grad()
def evaluate_pairs(scored: ScoredModel, pairs, config: TrainConfig, pad_id: int, device: str, dtype) -> dict:
    was_training = scored.training
    scored.eval()
    stats = RewardStats()
    lengths = [p.length for p in pairs]
    for micro in split_micro_batches(list(range(len(pairs))), lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=32):
        with autocast_for(device, dtype):
            chosen, rejected = pair_scores(scored, [pairs[i] for i in micro], pad_id, device)
        stats.add(bradley_terry_loss(chosen, rejected), chosen, rejected)
    scored.train(was_training)
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
    scored = ScoredModel(model, model.config.hidden_size, config.reward_pooling, mean_answer_tokens(train_pairs)).to(device)
    valid_pairs = tokenize_pairs(tokenizer, raw_valid, config.max_length, config.validation_data or config.data)
    pad_id = tokenizer.pad_token_id
    lengths = [p.length for p in train_pairs]

    pairs_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch, total_steps, warmup = step_plan(
        len(train_pairs), pairs_per_step, config.epochs, config.max_steps, config.warmup_ratio
    )
    peak_lr = config.resolved_learning_rate()
    eval_every = config.eval_every or max(1, total_steps // 5)
    optimizer = make_optimizer(scored, config)
    n_params, n_trainable = count_parameters(scored)

    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "train_config.json", config.to_dict())
    progress = {"step": 0, "epoch": 0, "step_in_epoch": 0, "trained_tokens": 0}
    logged: list[dict] = []  # what an earlier attempt logged up to the checkpoint
    resumed_from = resume_point(output, config.resume)
    if resumed_from is not None:
        progress = load_checkpoint(resumed_from, scored, optimizer)  # LoRA (or all) weights + value head
        logged = trim_metrics(output / "metrics.jsonl", progress["step"])
    metrics = MetricsLog(output / "metrics.jsonl", append=resumed_from is not None)
    print(
        f"tuneforge: reward model {'full' if config.full else f'LoRA r={config.lora_r}'} + value head ({config.reward_pooling}) on {config.model} | "
        f"{len(train_pairs)} pairs, {total_steps} steps, {device} | trainable {n_trainable:,} of {n_params:,}",
        file=sys.stderr,
    )
    valid_metrics: dict = {}
    initial_valid: dict = {}
    if valid_pairs and resumed_from is None:
        initial_valid = evaluate_pairs(scored, valid_pairs, config, pad_id, device, dtype)
        metrics.write({"type": "valid", "step": 0, **initial_valid})
    elif resumed_from is not None:  # the starting point was logged by the first attempt
        initial_valid = next((r for r in logged if r.get("type") == "valid" and r.get("step") == 0), {})
    throughput = Throughput()
    recent: list[dict] = []
    trained_tokens = progress["trained_tokens"]
    step, epoch, skip = progress["step"], progress["epoch"], progress["step_in_epoch"]
    status = "completed"
    bar = tqdm(total=total_steps, initial=step, desc="reward", unit="step", file=sys.stderr, dynamic_ncols=True)
    with StopRequest() as stop:
        while step < total_steps and status == "completed":
            plan = plan_epoch(lengths, pairs_per_step, config.seed, epoch)
            for step_in_epoch, indices in enumerate(plan):
                if step_in_epoch < skip:  # resumed: these steps were done before the checkpoint
                    continue
                if step >= total_steps:
                    break
                stats = RewardStats()
                for micro in split_micro_batches(
                    indices, lengths, config.resolved_micro_batch_tokens(device) // 2, max_rows=config.batch_size
                ):
                    with autocast_for(device, dtype):
                        chosen, rejected = pair_scores(scored, [train_pairs[i] for i in micro], pad_id, device)
                        losses = bradley_terry_loss(chosen, rejected)
                    (losses.sum() / len(indices)).backward()
                    stats.add(losses, chosen, rejected)
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in scored.parameters() if p.requires_grad], config.max_grad_norm
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
                trained_tokens += tokens
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
                            "trained_tokens": trained_tokens,
                        }
                    )
                bar.set_postfix(loss=f"{step_metrics['loss']:.4f}", acc=f"{step_metrics['accuracy']:.2f}")
                bar.update(1)
                if valid_pairs and (step % eval_every == 0 or step == total_steps):
                    valid_metrics = evaluate_pairs(scored, valid_pairs, config, pad_id, device, dtype)
                    metrics.write({"type": "valid", "step": step, **valid_metrics})
                epoch_end = step_in_epoch + 1 == len(plan)
                if (
                    config.save_every
                    and (step % config.save_every == 0 or stop.requested or epoch_end)
                    and step < total_steps
                ):
                    progress.update(
                        step=step, epoch=epoch, step_in_epoch=step_in_epoch + 1, trained_tokens=trained_tokens
                    )
                    path = save_checkpoint(
                        output, step, scored, optimizer, progress, config.keep_checkpoints, config.to_dict()
                    )
                    metrics.write({"type": "checkpoint", "step": step, "path": str(path)})
                if stop.requested:
                    status = "stopped"
                    break
            epoch += 1
            skip = 0
    bar.close()
    save_reward_model(scored, tokenizer, output, config)
    tail = recent[-max(1, len(recent) // 10) :]

    def tail_mean(key):
        return round(sum(r[key] for r in tail) / len(tail), 6) if tail else None

    summary = {
        "status": status,
        "model": config.model,
        "method": config.method,
        "full": config.full,
        "output": str(output),
        "n_pairs": len(train_pairs),
        "n_validation_pairs": len(valid_pairs),
        "steps": step,
        "total_steps": total_steps,
        "trained_tokens": trained_tokens,
        "train_seconds": round(throughput.seconds, 3),
        "tokens_per_second": round(throughput.tokens / max(throughput.seconds, 1e-9), 2),
        "final_train_loss": tail_mean("loss"),
        "final_valid_loss": valid_metrics.get("loss"),
        "train_accuracy": tail_mean("accuracy"),
        "initial_pairwise_accuracy": initial_valid.get("accuracy"),
        # Held-out when there are validation pairs, else the last train steps'.
        "pairwise_accuracy": valid_metrics.get("accuracy", tail_mean("accuracy")),
        "valid_score_margin": valid_metrics.get("scores/margins"),
        "n_parameters": n_params,
        "n_trainable_parameters": n_trainable,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_summary(output, summary)
    metrics.close()
    return summary


def save_reward_model(scored: ScoredModel, tokenizer, output: Path, config: TrainConfig) -> None:
    save_weights(scored.model, tokenizer, output)
    head = {k: v.detach().float().contiguous().cpu() for k, v in scored.value_head.state_dict().items()}
    save_file(head, str(output / VALUE_HEAD_FILE))
    write_json_atomic(
        output / REWARD_CONFIG_FILE,
        {
            "model": config.model,
            "full": config.full,
            "max_length": config.max_length,
            "hidden_size": scored.value_head.in_features,
            "pooling": scored.pooling,
            "answer_tokens": scored.answer_tokens,
            "score_position": {"last": "last answer token (end of turn)", "mean": "mean over answer tokens x answer_tokens", "sum": "sum over answer tokens"}[scored.pooling],
        },
    )


class RewardModel:
    """A trained reward model as a reward function: rm(prompt_messages, completion, reference=None) -> float."""

    def __init__(self, scored: ScoredModel, tokenizer, max_length: int, batch_size: int = 16):
        self.scored = scored.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = str(next(scored.parameters()).device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score_conversations(self, conversations: list[list[dict]], tools_list: list | None = None) -> list[float]:
        """Scores for conversations that each end with the assistant answer to judge."""
        examples = []
        for i, messages in enumerate(conversations):
            *prompt, answer = messages
            tools = (tools_list or [None] * len(conversations))[i]
            examples.append(
                tokenize_conversation(self.tokenizer, with_answer(prompt, answer["content"]), tools, self.max_length)
            )
        scores: list[float] = []
        for start in range(0, len(examples), self.batch_size):
            batch = collate(examples[start : start + self.batch_size], self.pad_id, self.device)
            scores.extend(float(s) for s in self.scored(batch))
        return scores

    def __call__(self, prompt_messages: list[dict], completion: str, reference: str | None = None) -> float:
        return self.score_conversations([[*prompt_messages, {"role": "assistant", "content": completion}]])[0]

    def batch(self, prompts: list[list[dict]], completions: list[str], references: list) -> list[float]:
        return self.score_conversations(
            [[*p, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)]
        )


def load_reward_model(folder: str | Path, device: str | None = None) -> RewardModel:
    from tuneforge.models import load_model

    folder = Path(folder)
    if not (folder / VALUE_HEAD_FILE).is_file() or not (folder / REWARD_CONFIG_FILE).is_file():
        raise UserError(
            f"{folder}: not a reward model (no {VALUE_HEAD_FILE} / {REWARD_CONFIG_FILE}); train one with --method reward"
        )
    settings = json.loads((folder / REWARD_CONFIG_FILE).read_text())
    model, tokenizer = load_model(None, str(folder), dtype=torch.float32, device=device)
    # Reward models written before pooling was a choice read the last token.
    scored = ScoredModel(model, settings["hidden_size"], settings.get("pooling", "last"), settings.get("answer_tokens", 1.0))
    scored.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
    scored.to(next(model.parameters()).device)
    for parameter in scored.parameters():
        parameter.requires_grad_(False)
    return RewardModel(scored, tokenizer, settings["max_length"])
