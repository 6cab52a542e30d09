"""Every loss once. Token cross-entropy never materialises the full [tokens x vocab] logits.

`linear_cross_entropy_sum` is a fused linear + cross-entropy: it takes the final hidden states at the
trained positions only, computes logits chunk by chunk, and produces the gradients for the hidden states
(and the output weight when it is trainable) in the same pass, so backward needs no stored logits.
With SmolLM2's 49k vocabulary, 2k trained tokens would otherwise hold 400 MB of fp32 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE_INDEX

DEFAULT_CHUNK_ROWS = 1024


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):
        compute_weight = weight.to(hidden.dtype)
        want_weight_grad = weight.requires_grad
        grad_hidden = torch.empty_like(hidden)
        accumulate = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if want_weight_grad else None
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = hidden[start : start + chunk_rows]
            target = targets[start : start + chunk_rows]
            logits = (rows @ compute_weight.T).to(accumulate)
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            # d(sum CE)/d(logits) = softmax - one_hot(target); reuse the logits buffer for it.
            probs = logits.sub_(log_norm[:, None]).exp_()
            probs[torch.arange(rows.shape[0], device=rows.device), target] -= 1.0
            probs = probs.to(hidden.dtype)
            grad_hidden[start : start + chunk_rows] = probs @ compute_weight
            if want_weight_grad:
                grad_weight += (probs.T @ rows).to(accumulate)
        ctx.save_for_backward(grad_hidden, grad_weight if want_weight_grad else torch.empty(0))
        ctx.want_weight_grad = want_weight_grad
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.want_weight_grad else None
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight.T, targets_i) for hidden [N, H], weight [V, H], targets [N]."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if not torch.is_grad_enabled():
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        compute_weight = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = (hidden[start : start + chunk_rows] @ compute_weight.T).float()
            total += F.cross_entropy(logits, targets[start : start + chunk_rows], reduction="sum")
        return total
    return _LinearCrossEntropySum.apply(hidden, weight, targets, chunk_rows)


def shifted_trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a trained label, and those labels (position t predicts token t+1)."""
    next_labels = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return hidden[:, :-1][mask], next_labels[mask]


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """log p(target_i) for each row, chunked and recomputed in backward (for DPO-style sequence scores)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_logprobs(rows, target):
        logits = (rows @ weight.to(rows.dtype).T).float()
        return logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)

    pieces = [
        checkpoint(chunk_logprobs, hidden[s : s + chunk_rows], targets[s : s + chunk_rows], use_reentrant=False)
        for s in range(0, hidden.shape[0], chunk_rows)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def reference_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain, memory-hungry formula; used by tests as the independent reference."""
    return F.cross_entropy((hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32)), targets, reduction="sum")
