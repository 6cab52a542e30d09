"""Per-row next-token choice for a decode batch whose rows each carry their own sampling settings.

    tokens, logprobs = choose_tokens(logits, rows)    # rows: RowSampling, one per logits row

Each row's logits go through, in this order (OpenAI's definitions, vLLM's order):
  1. logit_bias: logit[t] += bias[t];
  2. penalties over the tokens this row has generated: logit[t] -= count[t] * frequency + (count[t] > 0) * presence;
  3. a constraint's mask: tokens it does not allow get -inf;
  4. temperature: logit / T (greedy rows, T = 0, are left as they are and take the argmax);
  5. top_p: the smallest set of most likely tokens whose probability reaches top_p is sampled from, with the
     row's own torch.Generator (so a seeded request samples the same tokens whatever else is in the batch).
Reported log-probabilities are the log-softmax after step 4, before top_p truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)
class RowSampling:
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    bias_ids: torch.Tensor | None = None  # logit_bias as two tensors on the logits' device
    bias_values: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # generated-token counts, kept only when a penalty is set
    constraint: object | None = None  # tuneforge.serving.Constraint
    top_logprobs: int = -1  # -1: no logprobs; 0: the chosen token's only; k: and the k most likely

    def record(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


class ConstraintDeadEnd(Exception):
    """A constraint allowed no token at all."""


def process_logits(logits: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
    """Steps 1-4 on a float32 [rows, vocab] tensor (in place for 1-3); returns the tempered logits."""
    for i, row in enumerate(rows):
        if row.bias_ids is not None:
            logits[i].index_add_(0, row.bias_ids, row.bias_values)
        if row.counts is not None:
            logits[i] -= row.counts * row.frequency_penalty + (row.counts > 0).float() * row.presence_penalty
        if row.constraint is not None:
            allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
            row.constraint.fill_allowed(allowed)
            if not allowed.any():
                raise ConstraintDeadEnd(i)
            logits[i].masked_fill_(~allowed.to(logits.device), float("-inf"))
    temperatures = torch.tensor([row.temperature if row.temperature > 0 else 1.0 for row in rows], device=logits.device)
    return logits / temperatures[:, None]


def _sample(tempered: torch.Tensor, rows: list[RowSampling], sampled: list[int]) -> list[int]:
    probs = torch.softmax(tempered[sampled], dim=-1)
    top_p = torch.tensor([rows[i].top_p for i in sampled], device=probs.device)
    if bool((top_p < 1.0).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p[:, None]
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs * keep)
    return [int(torch.multinomial(probs[j], 1, generator=rows[i].generator)) for j, i in enumerate(sampled)]


def choose_tokens(logits: torch.Tensor, rows: list[RowSampling]):
    """(token per row, per row None or (logprob of the token, [(token, logprob)] of its top alternatives))."""
    tempered = process_logits(logits.float(), rows)
    tokens = tempered.argmax(dim=-1).tolist()
    sampled = [i for i, row in enumerate(rows) if row.temperature > 0]
    if sampled:
        for i, token in zip(sampled, _sample(tempered, rows, sampled), strict=True):
            tokens[i] = token
    wanted = [i for i, row in enumerate(rows) if row.top_logprobs >= 0]
    reports: list = [None] * len(rows)
    if wanted:
        logprobs = torch.log_softmax(tempered[wanted], dim=-1)
        chosen = logprobs.gather(1, torch.tensor([[tokens[i]] for i in wanted], device=logprobs.device)).squeeze(1)
        k = max(rows[i].top_logprobs for i in wanted)
        top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
        chosen, top_values, top_ids = chosen.tolist(), top_values.tolist(), top_ids.tolist()
        for j, i in enumerate(wanted):
            k_row = rows[i].top_logprobs
            reports[i] = (chosen[j], list(zip(top_ids[j][:k_row], top_values[j][:k_row], strict=True)))
    return tokens, reports
