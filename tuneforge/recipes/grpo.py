"""Reward-driven RL (GRPO):  tuneforge train --method grpo --data prompts.jsonl --reward exact_match [--reward-model DIR]

Each step, top to bottom:
  1. sample `group_size` completions for each of `batch_size` prompts (batched, KV cache, temperature,
     at most `max_new_tokens` tokens);
  2. score them: a reward function fn(prompt_messages, completion, reference) -> float (tuneforge.rewards
     or module:function), or a reward model trained with --method reward;
  3. group-normalised advantages (r - group mean) / group std: no value network;
  4. per-token log-probs of the completions under the policy (with grad), the sampling policy (`old`,
     fixed for the `policy_updates` optimizer steps on this batch) and the reference policy;
  5. clipped policy objective + kl_beta * KL(policy || reference), summed over completion tokens and
     divided by the completion tokens of the step; AdamW.

Reference policy: LoRA from scratch -> the base model with the adapter disabled (no copy in memory);
LoRA from --init-adapter -> that adapter loaded a second time, frozen, under the name 'reference'
(completions are new every step, so reference log-probs cannot be precomputed as in DPO).
Full fine-tuning would need a second model copy: it runs only with kl_beta=0.

Held-out prompts (validation data or split) are answered greedily every `eval_every` steps and their
mean reward logged; train reward, KL and completion length are logged per step and plotted to grpo.png
when matplotlib is installed (`pip install tuneforge[report]`).
"""

from __future__ import annotations

import random
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge.checkpoint import load_checkpoint, resume_point, save_checkpoint, save_weights, write_json_atomic
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, split_micro_batches
from tuneforge.data.preference import RLPrompt, load_rl_prompts
from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample, end_of_turn_ids, tokenize_prompt
from tuneforge.errors import UserError
from tuneforge.evaluate.generation import generate_ids
from tuneforge.losses import group_advantages, grpo_token_loss, shifted_trained_positions, token_logprobs
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
from tuneforge.runfiles import trim_metrics
from tuneforge.schedule import learning_rate_at, step_plan

REFERENCE_ADAPTER = "reference"


def make_scorer(config: TrainConfig, reward_fn=None):
    """A batched scorer (prompts, completions, references) -> list[float] from whichever reward is configured."""
    if reward_fn is None and config.reward_model:
        from tuneforge.recipes.reward import load_reward_model

        return load_reward_model(config.reward_model).batch
    if reward_fn is None:
        from tuneforge.rewards import resolve_reward

        reward_fn = resolve_reward(config.reward)

    def score(prompts, completions, references):
        return [float(reward_fn(p, c, r)) for p, c, r in zip(prompts, completions, references, strict=True)]

    return score


@contextmanager
def reference_policy(model, config: TrainConfig):
    """Run the model as the reference policy inside the block (see the module docstring)."""
    if config.init_adapter:
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter("default")
            for name, parameter in model.named_parameters():  # set_adapter also flips requires_grad
                parameter.requires_grad_(flags[name])
    else:
        with model.disable_adapter():
            yield


def completion_logprobs(model, examples: list[TokenizedExample], pad_id: int, device: str) -> torch.Tensor:
    """log p of every completion token, flattened row by row (the order `shifted_trained_positions` gives)."""
    batch = collate(examples, pad_id, device)
    hidden = final_hidden_states(model, batch)
    trained_hidden, targets = shifted_trained_positions(hidden, batch["labels"])
    _, head = decoder_and_head(model)
    return token_logprobs(trained_hidden, head.weight, targets)


@torch.no_grad()
def all_logprobs(model, examples, micro_batches, pad_id, device, dtype) -> list[torch.Tensor]:
    pieces = []
    for micro in micro_batches:
        with autocast_for(device, dtype):
            pieces.append(completion_logprobs(model, [examples[i] for i in micro], pad_id, device).float())
    return pieces


@torch.no_grad()
def held_out_reward(model, tokenizer, prompts: list[RLPrompt], prompt_ids, score, config, eos_ids, pad_id) -> float:
    """Mean reward of greedy answers to held-out prompts."""
    was_training = model.training
    model.eval()
    texts = []
    for start in range(0, len(prompts), 32):
        outputs, _ = generate_ids(
            model, prompt_ids[start : start + 32], eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=config.max_new_tokens
        )
        texts.extend(tokenizer.decode(o, skip_special_tokens=True) for o in outputs)
    model.train(was_training)
    rewards = score([p.messages for p in prompts], texts, [p.reference for p in prompts])
    return sum(rewards) / len(rewards)


def train(config: TrainConfig, reward_fn=None) -> dict:
    """`reward_fn` (a Python callable) overrides config.reward; tests and notebooks pass one directly."""
    if config.full and config.kl_beta > 0:
        raise UserError(
            "grpo with --full has no reference without a second model copy: use LoRA, or kl_beta=0", code="bad_config"
        )
    output = Path(config.output)
    prompts = load_rl_prompts(config.data)
    valid_prompts = load_rl_prompts(config.validation_data) if config.validation_data else []
    if not valid_prompts and config.validation_split > 0:
        prompts, valid_prompts = split_validation(prompts, config.validation_split, config.seed)
    score = make_scorer(config, reward_fn)

    seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config)
    if config.init_adapter and not config.full:
        model.load_adapter(config.init_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    prompt_ids = [tokenize_prompt(tokenizer, p.messages, p.tools) for p in prompts]
    valid_ids = [tokenize_prompt(tokenizer, p.messages, p.tools) for p in valid_prompts]
    eos_ids = end_of_turn_ids(tokenizer, model.config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    # The token appended to a completion that stopped, so the policy learns (and is credited for) stopping.
    stop_id = tokenizer.eos_token_id if tokenizer.eos_token_id in eos_ids else min(eos_ids)

    steps_per_epoch, total_steps, warmup = step_plan(
        len(prompts), config.batch_size, config.epochs, config.max_steps, config.warmup_ratio
    )
    peak_lr = config.resolved_learning_rate()
    eval_every = config.eval_every or max(1, total_steps // 5)
    optimizer = make_optimizer(model, config)
    n_params, n_trainable = count_parameters(model)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "train_config.json", config.to_dict())
    # A checkpoint holds, besides weights, AdamW and the global RNGs: the step, the prompts still to come
    # in this pass, and the sampling generator's state, so a resumed run draws the same completions.
    progress = {"step": 0, "trained_tokens": 0, "order": [], "sampler": []}
    logged: list[dict] = []  # what an earlier attempt logged up to the checkpoint
    resumed_from = resume_point(output, config.resume)
    if resumed_from is not None:
        progress = load_checkpoint(resumed_from, model, optimizer)
        generator.set_state(torch.tensor(progress["sampler"], dtype=torch.uint8))
        logged = trim_metrics(output / "metrics.jsonl", progress["step"])
    metrics = MetricsLog(output / "metrics.jsonl", append=resumed_from is not None)
    print(
        f"tuneforge: grpo {'full' if config.full else f'LoRA r={config.lora_r}'} on {config.model} | {len(prompts)} prompts x "
        f"{config.group_size} samples, {total_steps} steps, reward {config.reward or config.reward_model or 'callable'} | "
        f"trainable {n_trainable:,} of {n_params:,}",
        file=sys.stderr,
    )
    history: list[dict] = []
    valid_history: list[dict] = []
    if resumed_from is not None:  # the curves so far, for the plot and the summary
        history = [r for r in logged if r.get("type") == "train"]
        valid_history = [r for r in logged if r.get("type") == "valid"]
    elif valid_prompts:
        valid_reward = held_out_reward(model, tokenizer, valid_prompts, valid_ids, score, config, eos_ids, pad_id)
        valid_history.append({"type": "valid", "step": 0, "reward": round(valid_reward, 6)})
        metrics.write(valid_history[-1])
    throughput = Throughput()
    trained_tokens = progress["trained_tokens"]
    order: list[int] = list(progress["order"])
    step = progress["step"]
    status = "completed"
    bar = tqdm(total=total_steps, initial=step, desc="grpo", unit="step", file=sys.stderr, dynamic_ncols=True)
    with StopRequest() as stop:
        while step < total_steps:
            if len(order) < config.batch_size:  # a fresh shuffled pass over the prompts
                epoch_order = list(range(len(prompts)))
                random.Random(config.seed * 1_000_003 + step).shuffle(epoch_order)
                order += epoch_order
            indices, order = order[: config.batch_size], order[config.batch_size :]

            # 1-2. Sample a group per prompt and score it.
            model.eval()
            group = [i for i in indices for _ in range(config.group_size)]
            outputs, reasons = generate_ids(
                model,
                [prompt_ids[i] for i in group],
                eos_ids=eos_ids,
                pad_id=pad_id,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                generator=generator,
            )
            model.train()
            texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
            rewards = torch.tensor(
                score([prompts[i].messages for i in group], texts, [prompts[i].reference for i in group]),
                dtype=torch.float32,
            )
            # 3. Advantages within each prompt's group.
            advantages = group_advantages(rewards.view(len(indices), config.group_size)).view(-1)

            # 4. Completion tokens, and the sampling and reference policies' log-probs of them.
            examples = []
            for i, completion, reason in zip(group, outputs, reasons, strict=True):
                answer = completion + ([stop_id] if reason == "stop" else [])
                examples.append(TokenizedExample(prompt_ids[i] + answer, [IGNORE_INDEX] * len(prompt_ids[i]) + answer))
            lengths = [len(e.input_ids) for e in examples]
            micro_batches = split_micro_batches(
                list(range(len(examples))), lengths, config.resolved_micro_batch_tokens(device), max_rows=len(examples)
            )
            step_tokens = sum(len(e.input_ids) - len(prompt_ids[i]) for e, i in zip(examples, group, strict=True))
            model.eval()
            old = (
                all_logprobs(model, examples, micro_batches, pad_id, device, dtype)
                if config.policy_updates > 1
                else None
            )
            if config.kl_beta > 0:
                with reference_policy(model, config):
                    reference = all_logprobs(model, examples, micro_batches, pad_id, device, dtype)
            model.train()

            # 5. Clipped objective + KL, normalised by the step's completion tokens.
            lr = learning_rate_at(step, total_steps, peak_lr, warmup, config.lr_schedule)
            for group_params in optimizer.param_groups:
                group_params["lr"] = lr
            for _ in range(config.policy_updates):
                loss_total, kl_total, clipped = 0.0, 0.0, 0
                for m, micro in enumerate(micro_batches):
                    with autocast_for(device, dtype):
                        logprobs = completion_logprobs(model, [examples[i] for i in micro], pad_id, device)
                    token_advantages = torch.cat(
                        [advantages[i].expand(len(examples[i].input_ids) - len(prompt_ids[group[i]])) for i in micro]
                    ).to(logprobs.device)
                    old_logprobs = old[m].to(logprobs.device) if old is not None else logprobs.detach()
                    ref_logprobs = reference[m].to(logprobs.device) if config.kl_beta > 0 else logprobs.detach()
                    token_loss, kl = grpo_token_loss(
                        logprobs, old_logprobs, ref_logprobs, token_advantages, config.clip_epsilon, config.kl_beta
                    )
                    (token_loss.sum() / step_tokens).backward()
                    loss_total += float(token_loss.detach().sum()) / step_tokens
                    kl_total += float(kl.sum())
                    ratio = torch.exp(logprobs.detach() - old_logprobs)
                    clipped += int(((ratio - 1).abs() > config.clip_epsilon).sum())
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step += 1
            tokens = sum(lengths)
            throughput.add(tokens)
            trained_tokens += tokens
            record = {
                "type": "train",
                "step": step,
                "loss": round(loss_total, 6),
                "reward": round(float(rewards.mean()), 6),
                "reward_std": round(float(rewards.std(unbiased=False)), 6),
                "kl": round(kl_total / step_tokens, 6),
                "completion_length": round(step_tokens / len(examples), 3),
                "clip_fraction": round(clipped / step_tokens, 4),
                "lr": lr,
                "tokens_per_second": round(throughput.tokens_per_second, 2),
            }
            history.append(record)
            if step % config.log_every == 0 or step == total_steps:
                metrics.write(record)
            bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}")
            bar.update(1)
            if valid_prompts and (step % eval_every == 0 or step == total_steps):
                valid_reward = held_out_reward(
                    model, tokenizer, valid_prompts, valid_ids, score, config, eos_ids, pad_id
                )
                valid_history.append({"type": "valid", "step": step, "reward": round(valid_reward, 6)})
                metrics.write(valid_history[-1])
            if config.save_every and (step % config.save_every == 0 or stop.requested) and step < total_steps:
                progress.update(
                    step=step, trained_tokens=trained_tokens, order=order, sampler=generator.get_state().tolist()
                )
                path = save_checkpoint(
                    output, step, model, optimizer, progress, config.keep_checkpoints, config.to_dict()
                )
                metrics.write({"type": "checkpoint", "step": step, "path": str(path)})
            if stop.requested:
                status = "stopped"
                break
    bar.close()
    if config.init_adapter and not config.full:
        model.delete_adapter(REFERENCE_ADAPTER)  # save only the trained adapter
    save_weights(model, tokenizer, output)
    plot = write_plot(output / "grpo.png", history, valid_history)
    tail = history[-max(1, len(history) // 10) :]
    summary = {
        "status": status,
        "model": config.model,
        "method": config.method,
        "full": config.full,
        "output": str(output),
        "reward": config.reward or config.reward_model or "callable",
        "n_prompts": len(prompts),
        "n_validation_prompts": len(valid_prompts),
        "group_size": config.group_size,
        "steps": step,
        "total_steps": total_steps,
        "trained_tokens": trained_tokens,
        "train_seconds": round(throughput.seconds, 3),
        "tokens_per_second": round(throughput.tokens / max(throughput.seconds, 1e-9), 2),
        "final_train_loss": round(sum(r["loss"] for r in tail) / len(tail), 6) if tail else None,
        "final_valid_loss": None,
        "initial_train_reward": history[0]["reward"] if history else None,
        "final_train_reward": round(sum(r["reward"] for r in tail) / len(tail), 6) if tail else None,
        "initial_valid_reward": valid_history[0]["reward"] if valid_history else None,
        "final_valid_reward": valid_history[-1]["reward"] if valid_history else None,
        "final_kl": tail[-1]["kl"] if tail else None,
        "plot": str(plot) if plot else None,
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


def write_plot(path: Path, history: list[dict], valid_history: list[dict]) -> Path | None:
    """Reward (train and held-out), KL and completion length by step; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["reward"] for r in history], label="train (sampled)")
    if valid_history:
        axes[0].plot(
            [r["step"] for r in valid_history], [r["reward"] for r in valid_history], "o-", label="held-out (greedy)"
        )
    axes[0].set_title("mean reward")
    axes[0].legend()
    axes[1].plot(steps, [r["kl"] for r in history])
    axes[1].set_title("KL to reference (per token)")
    axes[2].plot(steps, [r["completion_length"] for r in history])
    axes[2].set_title("completion length (tokens)")
    for axis in axes:
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
