"""Reward-driven RL (GRPO):  tuneforge train --method grpo --data prompts.jsonl --reward exact_match | --reward-model DIR | --grader FILE

Each step, top to bottom:
  1. sample `group_size` completions for each of `batch_size` prompts (batched, KV cache, temperature,
     at most `max_new_tokens` tokens);
  2. score them: a reward function fn(prompt_messages, completion, reference) -> float (tuneforge.rewards
     or module:function), a reward model trained with --method reward, or an OpenAI grader object
     (--grader FILE; tuneforge.graders, reading the prompt's row as `item`);
  3. group-normalised advantages (r - group mean) / group std: no value network;
  4. per-token log-probs of the completions under the policy (with grad), the sampling policy (`old`,
     fixed for the `policy_updates` optimizer steps on this batch) and the reference policy;
  5. clipped policy objective + kl_beta * KL(policy || reference), summed over completion tokens and
     divided by the completion tokens of the step; AdamW.

Reference policy: LoRA from scratch -> the base model with the adapter disabled (no copy in memory);
LoRA from --init-adapter -> that adapter loaded a second time, frozen, under the name 'reference'
(completions are new every step, so reference log-probs cannot be precomputed as in DPO).
Full fine-tuning would need a second model copy: it runs only with kl_beta=0.

Sampling: completion j of prompt i in step s draws from its own generator, seeded by (seed, s, i, j), so a
resumed run draws what the uninterrupted one drew, and `tuneforge train --nproc N` draws what one process
draws: each rank samples, scores and trains the whole groups of its share of the step's prompts (advantages
need the full group), the step's completion tokens are counted over all ranks for the normaliser, and the run
shell averages the gradients (tuneforge.distributed).

Held-out prompts (validation data or split) are answered greedily every `eval_every` steps and their
mean reward logged; train reward, KL and completion length are logged per step and plotted to grpo.png
when matplotlib is installed (`pip install tuneforge[report]`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from tuneforge import distributed
from tuneforge.checkpoint import save_weights
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate, plan_epoch, split_micro_batches
from tuneforge.data.preference import RLPrompt, load_rl_prompts
from tuneforge.data.tokenize import IGNORE_INDEX, TokenizedExample, end_of_turn_ids, tokenize_prompt
from tuneforge.errors import UserError
from tuneforge.forgetting_guard import backward_guard_step, build_guard
from tuneforge.generation import generate_ids
from tuneforge.losses import group_advantages, grpo_token_loss, shifted_trained_positions, token_logprobs
from tuneforge.recipes import run
from tuneforge.schedule import step_plan
from tuneforge.trainable import autocast_for, build_model, final_hidden_states, output_head

REFERENCE_ADAPTER = "reference"


def make_scorer(config: TrainConfig, reward_fn=None):
    """A batched scorer (prompt rows, completions) -> list[float] from whichever reward is configured."""
    if reward_fn is None and config.reward_model:
        from tuneforge.reward_model import load_reward_model

        model = load_reward_model(config.reward_model)
        return lambda rows, completions: model.batch([r.messages for r in rows], completions,
                                                     [r.reference for r in rows])
    if reward_fn is None and config.grader:
        from tuneforge.rewards import grader_reward, load_grader

        graded = grader_reward(load_grader(config.grader))
        return lambda rows, completions: [
            float(graded(r.messages, c, r.reference, r.item)) for r, c in zip(rows, completions, strict=True)
        ]
    if reward_fn is None:
        from tuneforge.rewards import resolve_reward

        reward_fn = resolve_reward(config.reward)

    def score(rows: list[RLPrompt], completions: list[str]) -> list[float]:
        return [float(reward_fn(r.messages, c, r.reference)) for r, c in zip(rows, completions, strict=True)]

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
    return token_logprobs(trained_hidden, output_head(model), targets)


@torch.no_grad()
def all_logprobs(model, examples, micro_batches, pad_id, device, dtype) -> list[torch.Tensor]:
    pieces = []
    for micro in micro_batches:
        with autocast_for(device, dtype):
            pieces.append(completion_logprobs(model, [examples[i] for i in micro], pad_id, device).float())
    return pieces


def sample_generators(config: TrainConfig, step_number: int, group: list[int], device) -> list[torch.Generator]:
    """One generator per completion of `group` (prompt indices, each repeated group_size times), seeded by
    (seed, step, prompt, sample): independent of the batch, the rank and of any earlier draw."""
    generators = []
    for position, prompt in enumerate(group):
        sample = position % config.group_size
        seed = ((config.seed * 1_000_003 + step_number) * 1_000_033 + prompt) * 1_009 + sample
        generators.append(torch.Generator(device=device).manual_seed(seed % (2**63)))
    return generators


@torch.no_grad()
def held_out_reward(model, tokenizer, prompts: list[RLPrompt], prompt_ids, score, config, eos_ids, pad_id,
                    world: distributed.World | None = None) -> float:
    """Mean reward of greedy answers to held-out prompts (each rank answers every N-th prompt)."""
    world = world or distributed.World()
    was_training = model.training
    model.eval()
    mine = list(range(len(prompts)))[world.rank :: world.world_size]
    texts = []
    for start in range(0, len(mine), 32):
        outputs, _ = generate_ids(
            model, [prompt_ids[i] for i in mine[start : start + 32]], eos_ids=eos_ids, pad_id=pad_id,
            max_new_tokens=config.max_new_tokens,
        )
        texts.extend(tokenizer.decode(o, skip_special_tokens=True) for o in outputs)
    model.train(was_training)
    rewards = score([prompts[i] for i in mine], texts) if mine else []
    total, count = distributed.sum_over_ranks([float(sum(rewards)), float(len(rewards))], world)
    return total / count


def train(config: TrainConfig, reward_fn=None) -> dict:
    """`reward_fn` (a Python callable) overrides config.reward; tests and notebooks pass one directly."""
    if config.full and config.kl_beta > 0:
        raise UserError(
            "grpo with --full has no reference without a second model copy: use LoRA, or kl_beta=0", code="bad_config"
        )
    prompts, valid_prompts = run.train_and_validation(config, load_rl_prompts)
    score = make_scorer(config, reward_fn)
    world = distributed.setup()
    run.seed_everything(config.seed)
    model, tokenizer, device, dtype = build_model(config, distributed.device_for(world))
    if config.init_adapter and not config.full:
        model.load_adapter(config.init_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    prompt_ids = [tokenize_prompt(tokenizer, p.messages, p.tools) for p in prompts]
    valid_ids = [tokenize_prompt(tokenizer, p.messages, p.tools) for p in valid_prompts]
    eos_ids = end_of_turn_ids(tokenizer, model.config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    # The token appended to a completion that stopped, so the policy learns (and is credited for) stopping.
    stop_id = tokenizer.eos_token_id if tokenizer.eos_token_id in eos_ids else min(eos_ids)
    prompt_lengths = [len(ids) for ids in prompt_ids]

    def held_out():
        return {"reward": round(held_out_reward(model, tokenizer, valid_prompts, valid_ids, score, config, eos_ids,
                                                pad_id, world), 6)}

    _, total_steps, _ = step_plan(len(prompts), config.batch_size, config.epochs, config.max_steps, config.warmup_ratio)
    guard = build_guard(config, model, tokenizer, dtype, total_steps)  # the base answers general prompts
    reward_name = config.reward or config.reward_model or (f"grader {config.grader}" if config.grader else "callable")
    describe = f"grpo {'full' if config.full else f'LoRA r={config.lora_r}'}, reward {reward_name}"
    if guard:
        describe += f" + forgetting guard ({guard.method}, {guard.per_step:g}/step)"
    with run.start(config, model, tokenizer, device, dtype, n_items=len(prompts), items_per_step=config.batch_size,
                   describe=describe,
                   items=f"{len(prompts)} prompts x {config.group_size} samples", world=world) as shell:
        if valid_prompts and shell.progress.step == 0:
            run.log_valid(shell, held_out())
        for step in run.steps(shell, lambda epoch: plan_epoch(prompt_lengths, config.batch_size, config.seed, epoch)):
            # 1-2. Sample a group per prompt of this rank's share and score it.
            mine = distributed.rank_share(step.indices, prompt_lengths, world) if world.enabled else step.indices
            group = [i for i in mine for _ in range(config.group_size)]
            model.eval()
            outputs, reasons = generate_ids(
                model, [prompt_ids[i] for i in group], eos_ids=eos_ids, pad_id=pad_id,
                max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                generator=sample_generators(config, step.number, group, device),
            ) if group else ([], [])  # fmt: skip
            texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
            rewards = torch.tensor(score([prompts[i] for i in group], texts) if group else [], dtype=torch.float32)
            # 3. Advantages within each prompt's group (whole groups live on one rank).
            advantages = group_advantages(rewards.view(len(mine), config.group_size)).view(-1)

            # 4. Completion tokens, and the sampling and reference policies' log-probs of them.
            examples = []
            for i, completion, reason in zip(group, outputs, reasons, strict=True):
                answer = completion + ([stop_id] if reason == "stop" else [])
                examples.append(TokenizedExample(prompt_ids[i] + answer, [IGNORE_INDEX] * len(prompt_ids[i]) + answer))
            completion_lengths = [len(e.input_ids) - prompt_lengths[i] for e, i in zip(examples, group, strict=True)]
            (step_tokens,) = distributed.sum_over_ranks([float(sum(completion_lengths))], world)  # all ranks'
            lengths = [len(e.input_ids) for e in examples]
            micro_batches = split_micro_batches(
                list(range(len(examples))), lengths, config.resolved_micro_batch_tokens(device), max_rows=len(examples)
            )
            old = all_logprobs(model, examples, micro_batches, pad_id, device, dtype) if config.policy_updates > 1 else None
            if config.kl_beta > 0:
                with reference_policy(model, config):
                    reference = all_logprobs(model, examples, micro_batches, pad_id, device, dtype)
            model.train()

            # 5. Clipped objective + KL, normalised by the step's completion tokens.
            for _ in range(config.policy_updates):
                loss_total, kl_total, clipped = 0.0, 0.0, 0
                for m, micro in enumerate(micro_batches):
                    with autocast_for(device, dtype):
                        logprobs = completion_logprobs(model, [examples[i] for i in micro], pad_id, device)
                    token_advantages = torch.cat([advantages[i].expand(completion_lengths[i]) for i in micro])
                    token_advantages = token_advantages.to(logprobs.device)
                    old_logprobs = old[m].to(logprobs.device) if old is not None else logprobs.detach()
                    ref_logprobs = reference[m].to(logprobs.device) if config.kl_beta > 0 else logprobs.detach()
                    token_loss, kl = grpo_token_loss(
                        logprobs, old_logprobs, ref_logprobs, token_advantages, config.clip_epsilon, config.kl_beta
                    )
                    # x world size: the shell averages the gradients over ranks.
                    (token_loss.sum() * (world.world_size / step_tokens)).backward()
                    loss_total += float(token_loss.detach().sum()) / step_tokens
                    kl_total += float(kl.sum())
                    ratio = torch.exp(logprobs.detach() - old_logprobs)
                    clipped += int(((ratio - 1).abs() > config.clip_epsilon).sum())
                guard_loss = backward_guard_step(guard, model, step.number, pad_id, device, dtype,
                                                 config.resolved_micro_batch_tokens(device), config.batch_size,
                                                 world) if guard else None
                run.optimizer_step(shell, step)  # the same scheduled lr for every update on this batch

            # The whole step's figures, every rank's completions together.
            loss_total, kl_total, clipped, n_completions, reward_sum, reward_squares, tokens = distributed.sum_over_ranks(
                [loss_total, kl_total, float(clipped), float(len(examples)), float(rewards.sum()),
                 float((rewards.double() ** 2).sum()), float(sum(lengths))], world)
            reward_mean = reward_sum / n_completions
            run.log(shell, step, {
                **({f"guard_{guard.method}": round(guard_loss, 6)} if guard_loss is not None else {}),
                "loss": round(loss_total, 6),
                "reward": round(reward_mean, 6),
                "reward_std": round(max(reward_squares / n_completions - reward_mean**2, 0.0) ** 0.5, 6),
                "kl": round(kl_total / step_tokens, 6),
                "completion_length": round(step_tokens / n_completions, 3),
                "clip_fraction": round(clipped / step_tokens, 4),
            }, tokens=int(tokens), loss_tokens=int(step_tokens), show=("reward", "kl"))
            if valid_prompts and run.validation_due(shell):
                run.log_valid(shell, held_out())
            run.checkpoint_if_due(shell, step)

        if config.init_adapter and not config.full:
            model.delete_adapter(REFERENCE_ADAPTER)  # save only the trained adapter
        save_weights(model, tokenizer, shell.output, writer=world.is_main)
        distributed.teardown(world)
        plot = write_plot(shell.output / "grpo.png", shell.history, shell.valid_history) if world.is_main else None
        history, valid_history = shell.history, shell.valid_history
        return run.finish(shell, {
            "reward": reward_name,
            "n_prompts": len(prompts),
            "n_validation_prompts": len(valid_prompts),
            "group_size": config.group_size,
            "forgetting_guard": guard.summary() if guard else {"method": "off"},
            "initial_train_reward": history[0]["reward"] if history else None,
            "final_train_reward": run.tail_mean(shell, "reward"),
            "initial_valid_reward": valid_history[0]["reward"] if valid_history else None,
            "final_valid_reward": valid_history[-1]["reward"] if valid_history else None,
            "final_kl": history[-1]["kl"] if history else None,
            "plot": str(plot) if plot else None,
        })


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
