"""Every loss once. Token cross-entropy never materialises the full [tokens x vocab] logits.

`linear_cross_entropy_sum` is a fused linear + cross-entropy: it takes the final hidden states at the
trained positions only, computes logits chunk by chunk, and produces the gradients for the hidden states
(and the output weight when it is trainable) in the same pass, so backward needs no stored logits.
With SmolLM2's 49k vocabulary, 2k trained tokens would otherwise hold 400 MB of fp32 logits.

The losses read the output head as an `OutputHead` (weight, bias, logit scale, final softcap), so that
their logits are the model's own for every architecture (`trainable.output_head` builds it from a model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE_INDEX

DEFAULT_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class OutputHead:
    """How a model turns a final hidden state h into logits:

        raw = h @ weight.T + bias;   logits = cap * tanh(scale * raw / cap)   (logits = scale * raw without a cap)

    Llama, Qwen, Mistral and Phi-3 heads are the bare matmul (`OutputHead(weight)`); Gemma 2 (and Gemma 3 when
    its config sets one) caps the logits (`final_logit_softcapping`); Cohere multiplies them by `logit_scale`,
    Granite divides them by `logits_scaling`; a few heads (Phi-2) carry a bias."""

    weight: torch.Tensor  # [V, H]
    bias: torch.Tensor | None = None  # [V]
    scale: float = 1.0
    softcap: float | None = None

    def raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden @ weight.T + bias in the hidden states' dtype (bf16 under autocast)."""
        raw = hidden @ self.weight.to(hidden.dtype).T
        return raw if self.bias is None else raw + self.bias.to(hidden.dtype)

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Scale and cap raw logits, in at least fp32 (tanh and logsumexp want the precision)."""
        logits = raw.to(torch.promote_types(raw.dtype, torch.float32))
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.finish(self.raw(hidden))

    def slope(self, logits: torch.Tensor) -> torch.Tensor | float | None:
        """d logits / d raw, from the finished logits: scale * (1 - tanh^2) = scale * (1 - (logits / cap)^2);
        None where `finish` is the identity (a plain head)."""
        if self.softcap is not None:
            return (1.0 - (logits / self.softcap) ** 2) * self.scale
        return self.scale if self.scale != 1.0 else None


def as_output_head(head: OutputHead | torch.Tensor) -> OutputHead:
    """A bare [V, H] weight is the plain matmul head."""
    return head if isinstance(head, OutputHead) else OutputHead(head)


def _fused_head_pass(ctx, hidden, weight, bias, chunk_rows, scale, softcap, chunk_loss_and_grad):
    """The forward of a fused head loss: for each chunk of rows, logits = head(rows), then
    `chunk_loss_and_grad(start, rows, logits)` -> (the chunk's summed loss, d loss / d logits, in place of the
    logits' buffer is fine); chained back through the head, the gradients for hidden, weight and bias are
    accumulated in the same pass and saved for `_fused_head_backward`, so no logits outlive their chunk."""
    head = OutputHead(weight.to(hidden.dtype), bias, scale, softcap)
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    want_weight_grad = weight.requires_grad
    want_bias_grad = bias is not None and bias.requires_grad
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if want_weight_grad else None
    grad_bias = torch.zeros(bias.shape, dtype=accumulate, device=bias.device) if want_bias_grad else None
    total = torch.zeros((), dtype=accumulate, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = hidden[start : start + chunk_rows]
        logits = head.logits(rows)
        # d logits / d raw, read off the logits before the loss reuses their buffer (for a capped head, one
        # more [chunk, V] buffer: lower chunk_rows if that is too much).
        slope = head.slope(logits)
        loss, grad_logits = chunk_loss_and_grad(start, rows, logits)
        total += loss
        grad_raw = (grad_logits if slope is None else grad_logits.mul_(slope)).to(hidden.dtype)
        grad_hidden[start : start + chunk_rows] = grad_raw @ head.weight
        if want_weight_grad:
            grad_weight += (grad_raw.T @ rows).to(accumulate)
        if want_bias_grad:
            grad_bias += grad_raw.sum(dim=0).to(accumulate)
    empty = torch.empty(0)
    ctx.save_for_backward(grad_hidden, grad_weight if want_weight_grad else empty, grad_bias if want_bias_grad else empty)
    ctx.want_weight_grad, ctx.want_bias_grad = want_weight_grad, want_bias_grad
    ctx.weight_dtype = weight.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None
    return total


def _fused_head_backward(ctx, grad_output):
    grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
    grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
    grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.want_weight_grad else None
    grad_bias = (grad_bias * grad_output).to(ctx.bias_dtype) if ctx.want_bias_grad else None
    return grad_hidden, grad_weight, grad_bias, None, None, None, None


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, scale, softcap):
        def chunk_loss_and_grad(start, rows, logits):
            target = targets[start : start + rows.shape[0]]
            log_norm = torch.logsumexp(logits, dim=-1)
            loss = (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            # d(sum CE)/d(logits) = softmax - one_hot(target)
            probs = logits.sub_(log_norm[:, None]).exp_()
            probs[torch.arange(rows.shape[0], device=rows.device), target] -= 1.0
            return loss, probs

        return _fused_head_pass(ctx, hidden, weight, bias, chunk_rows, scale, softcap, chunk_loss_and_grad)

    backward = staticmethod(_fused_head_backward)


def linear_cross_entropy_sum(hidden: torch.Tensor, head: OutputHead | torch.Tensor, targets: torch.Tensor,
                             chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """sum_i CE(head.logits(hidden_i), targets_i) for hidden [N, H], targets [N] (a bare weight [V, H] is a plain head)."""
    head = as_output_head(head)
    if hidden.shape[0] == 0:
        # Zero, but still connected to every trainable head tensor, so DDP / FSDP see a gradient for each.
        connected = hidden.sum() * 0.0 + head.weight.sum() * 0.0
        return connected if head.bias is None else connected + head.bias.sum() * 0.0
    if not torch.is_grad_enabled():
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = head.logits(hidden[start : start + chunk_rows]).float()
            total += F.cross_entropy(logits, targets[start : start + chunk_rows], reduction="sum")
        return total
    return _LinearCrossEntropySum.apply(hidden, head.weight, head.bias, targets, chunk_rows, head.scale, head.softcap)


class _LinearKLSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_logprobs_of, chunk_rows, scale, softcap):
        def chunk_loss_and_grad(start, rows, logits):
            teacher_log = teacher_logprobs_of(start, start + rows.shape[0])  # [chunk, V], no grad
            student_log = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))
            teacher_probs = teacher_log.exp()
            loss = (teacher_probs * (teacher_log - student_log)).sum()
            # d KL / d student logits = softmax(student) - p_teacher (the soft-target form of softmax - one_hot).
            return loss, student_log.exp_().sub_(teacher_probs)

        return _fused_head_pass(ctx, hidden, weight, bias, chunk_rows, scale, softcap, chunk_loss_and_grad)

    backward = staticmethod(_fused_head_backward)


def linear_kl_sum(hidden: torch.Tensor, head: OutputHead | torch.Tensor, teacher_hidden: torch.Tensor,
                  teacher_head: OutputHead | torch.Tensor | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """sum_i KL(p_teacher,i || p_student,i) over rows, on full next-token distributions (natural log):

        KL_i = sum_v p_t(v) (log p_t(v) - log p_s(v)),   p_s = softmax(head.logits(hidden_i)),
                                                           p_t = softmax(teacher_head.logits(teacher_hidden_i))

    hidden [N, H] (trained), teacher_hidden [N, H] (a frozen model's states at the same positions; no gradient
    flows to it). `teacher_head` defaults to `head` (LoRA: the output head is not adapted, so the base's head
    is the student's). Fused like `linear_cross_entropy_sum`: logits of both exist one chunk at a time, and the
    gradient (softmax_s - p_t, through the head) is computed in the same pass."""
    head = as_output_head(head)
    teacher = as_output_head(teacher_head) if teacher_head is not None else head
    teacher_hidden = teacher_hidden.detach()

    def teacher_logprobs_of(start: int, stop: int) -> torch.Tensor:
        with torch.no_grad():
            logits = teacher.logits(teacher_hidden[start:stop].to(hidden.dtype))
            return logits - torch.logsumexp(logits, dim=-1, keepdim=True)

    if hidden.shape[0] == 0:
        connected = hidden.sum() * 0.0 + head.weight.sum() * 0.0
        return connected if head.bias is None else connected + head.bias.sum() * 0.0
    if not torch.is_grad_enabled():
        return reference_kl_sum(hidden, head, teacher_hidden, teacher)
    return _LinearKLSum.apply(hidden, head.weight, head.bias, teacher_logprobs_of, chunk_rows, head.scale, head.softcap)


def reference_kl_sum(hidden: torch.Tensor, head: OutputHead | torch.Tensor, teacher_hidden: torch.Tensor,
                     teacher_head: OutputHead | torch.Tensor | None = None) -> torch.Tensor:
    """The plain formula for `linear_kl_sum` (all logits at once, autograd for the gradients); a test reference."""
    head = as_output_head(head)
    teacher = as_output_head(teacher_head) if teacher_head is not None else head
    student_log = F.log_softmax(head.logits(hidden), dim=-1)
    with torch.no_grad():  # the teacher is frozen: no gradient through its logits, even where it shares the head
        teacher_log = F.log_softmax(teacher.logits(teacher_hidden.detach().to(hidden.dtype)), dim=-1)
    return (teacher_log.exp() * (teacher_log - student_log)).sum()


def shifted_trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a trained label, and those labels (position t predicts token t+1)."""
    next_labels = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return hidden[:, :-1][mask], next_labels[mask]


def token_logprobs(hidden: torch.Tensor, head: OutputHead | torch.Tensor, targets: torch.Tensor,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """log p(target_i) for each row, chunked and recomputed in backward (for DPO-style sequence scores)."""
    from torch.utils.checkpoint import checkpoint

    head = as_output_head(head)

    def chunk_logprobs(rows, target):
        logits = head.logits(rows).float()
        return logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)

    pieces = [
        checkpoint(chunk_logprobs, hidden[s : s + chunk_rows], targets[s : s + chunk_rows], use_reentrant=False)
        for s in range(0, hidden.shape[0], chunk_rows)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def reference_cross_entropy_sum(hidden: torch.Tensor, head: OutputHead | torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain, memory-hungry formula (all logits at once, autograd for the gradients); a test reference."""
    return F.cross_entropy(as_output_head(head).logits(hidden), targets, reduction="sum")


# ---------------------------------------------------------------------------------------------------
# Preference and reward losses (dpo / reward / grpo recipes). Each returns per-example values; the
# recipe sums them and divides by the number of examples (pairs, or completion tokens for GRPO) in the
# whole optimizer step, so micro-batching never changes the update.


def sequence_logprobs(hidden: torch.Tensor, head: OutputHead | torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of log p over the trained answer tokens, number of those tokens).

    hidden [B, T, H] final hidden states, head the output head (or a bare [V, H] weight), labels [B, T] with
    IGNORE_INDEX where no answer token is; position t predicts token t+1 (as in `shifted_trained_positions`)."""
    next_labels = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    per_token = token_logprobs(hidden[:, :-1][mask], head, next_labels[mask])
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(next_labels)[mask]
    sums = torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
    return sums, mask.sum(dim=1)


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                     reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), per pair.

    Inputs are sequence log-probs (sums over answer tokens). Returns (losses, chosen rewards, rejected
    rewards); the implicit rewards are beta * (pi - ref), detached (they are metrics)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 with h = (pi_c - ref_c) - (pi_r - ref_r), per pair.

    The squared loss regresses the log-ratio margin to a finite target instead of pushing it to infinity."""
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    losses = (chosen_logratio - rejected_logratio - 1.0 / (2.0 * beta)) ** 2
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def simpo_loss(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor, beta: float,
               gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta * (mean_c - mean_r) - gamma), per pair.

    Inputs are length-normalised log-probs (mean over answer tokens); gamma is the target reward margin.
    Rewards are beta * mean log-prob."""
    chosen_rewards = beta * policy_chosen_mean
    rejected_rewards = beta * policy_rejected_mean
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def chosen_nll(policy_chosen: torch.Tensor, chosen_token_counts: torch.Tensor) -> torch.Tensor:
    """RPO's extra term (Pang et al. 2024), per pair: the chosen answer's mean negative log-likelihood per
    token, -(sum of log p over its tokens) / (its token count). Added as rpo_alpha x this to the DPO loss."""
    return -policy_chosen / chosen_token_counts.clamp(min=1).to(policy_chosen.dtype)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model loss, per pair: -log sigmoid(r_chosen - r_rejected) (Bradley-Terry likelihood)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages for rewards [prompts, group]: (r - group mean) / (group std + eps).

    A group whose completions all score the same gets advantage 0 (nothing to learn from it)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


KL_TOKEN_CAP = 10.0  # nats per token; k3 is e^x - x - 1 for x = ref - logp, 10 is reached at x ~ 2.6
KL_LOG_RATIO_CLAMP = 20.0


def grpo_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, reference_logprobs: torch.Tensor,
                    advantages: torch.Tensor, clip_epsilon: float, kl_beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (Shao et al. 2024) per completion token: clipped policy objective plus a KL penalty.

    ratio = exp(logp - old_logp); objective = min(ratio * A, clip(ratio, 1-eps, 1+eps) * A);
    KL to the reference by the non-negative k3 estimator exp(ref - logp) - (ref - logp) - 1, at most
    KL_TOKEN_CAP per token. Returns (loss per token = -objective + kl_beta * kl, kl per token detached)."""
    ratio = torch.exp(logprobs - old_logprobs)
    objective = torch.minimum(ratio * advantages, torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages)
    # k3 grows like exp(ref - logp): one sampled token the policy found unlikely but the reference did not
    # (a per-token estimate of 407 in a run on the embedded model) would own the whole clipped step. Each
    # token's estimate is capped at KL_TOKEN_CAP, past which it adds no gradient; the log-ratio is clamped
    # first so exp cannot overflow.
    log_ref_ratio = torch.clamp(reference_logprobs - logprobs, max=KL_LOG_RATIO_CLAMP)
    kl = torch.clamp(torch.exp(log_ref_ratio) - log_ref_ratio - 1.0, max=KL_TOKEN_CAP)
    return -objective + kl_beta * kl, kl.detach()
