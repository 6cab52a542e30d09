"""What fine-tuning did to general ability:  tuneforge compare --data test.jsonl --adapter runs/demo

Three measurements of drift between the base model and the fine-tuned one, all offline and deterministic:

- perplexity change (%) on general English prose: the text of Python's own reference manual topics
  (`pydoc_data/topics.py`, shipped with every CPython; the corpus name, Python version and a SHA-256 of
  the text are recorded with every result). Distinct topic texts in name order; even-numbered ones are the
  *measurement* split, odd-numbered topics the *replay* split (`--replay builtin:pydoc`), so replay never
  trains on the text that forgetting is measured on. A fixed budget of windows (default 32 x 128 tokens)
  is taken at evenly spaced offsets.
- mean KL(base || fine-tuned) of next-token distributions over those same windows (nats per token; 0 when
  the models are identical, never negative).
- agreement of greedy answers to ~20 general questions (`general_questions.jsonl`): the share of
  questions where both models give the same answer (after stripping whitespace); and, on the questions
  with a checkable answer (an `accept` list: "Paris", "84", ...), how many each model answers correctly
  (an accepted word or phrase appears as a whole word, case-insensitive). Agreement says the model
  changed; correctness says whether it still knows.
"""

from __future__ import annotations

import functools
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.data.replay import general_corpus  # the corpus is data; forgetting is measured on its eval split

GENERAL_QUESTIONS = Path(__file__).with_name("general_questions.jsonl")


def token_windows(tokenizer, texts: list[str], n_windows: int = 32, window: int = 128) -> list[list[int]]:
    """`n_windows` windows of `window` tokens at evenly spaced offsets through the concatenated texts."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < window + 1:
        return [ids] if len(ids) > 1 else []
    last_start = len(ids) - window
    starts = [round(i * last_start / max(n_windows - 1, 1)) for i in range(n_windows)] if n_windows > 1 else [0]
    return [ids[s : s + window] for s in starts]


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood of `targets` [N] under `logits` [N, V] (natural log)."""
    return float(F.cross_entropy(logits.float(), targets, reduction="sum"))


def kl_sum(base_logits: torch.Tensor, tuned_logits: torch.Tensor) -> float:
    """Summed KL(base || tuned) over positions: sum_v p_base (log p_base - log p_tuned), each term >= 0."""
    base_log = F.log_softmax(base_logits.float(), dim=-1)
    tuned_log = F.log_softmax(tuned_logits.float(), dim=-1)
    return float((base_log.exp() * (base_log - tuned_log)).sum(-1).clamp(min=0).sum())


def perplexity(total_nll: float, n_tokens: int) -> float:
    return math.exp(total_nll / max(n_tokens, 1))


@torch.inference_mode()
def window_logits(model, windows: list[list[int]]) -> torch.Tensor:
    """Logits [B, T, V] for equal-length windows (no padding needed)."""
    device = next(model.parameters()).device
    ids = torch.tensor(windows, dtype=torch.long, device=device)
    return model(input_ids=ids, use_cache=False).logits


@torch.inference_mode()
def text_drift(base, tuned, windows: list[list[int]], batch_size: int = 8) -> dict:
    """Perplexity of both models and mean KL(base || tuned) over the next-token predictions of `windows`."""
    base_nll = tuned_nll = kl = 0.0
    n = 0
    by_length: dict[int, list[list[int]]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(w)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            targets = torch.tensor([w[1:] for w in chunk]).reshape(-1)
            b = window_logits(base, chunk)[:, :-1]
            b = b.reshape(-1, b.shape[-1]).cpu()
            t = window_logits(tuned, chunk)[:, :-1].reshape(-1, b.shape[-1]).cpu()
            base_nll += nll_sum(b, targets)
            tuned_nll += nll_sum(t, targets)
            kl += kl_sum(b, t)
            n += targets.numel()
    base_ppl, tuned_ppl = perplexity(base_nll, n), perplexity(tuned_nll, n)
    return {
        "n_windows": len(windows),
        "n_tokens": n,
        "base_perplexity": round(base_ppl, 4),
        "tuned_perplexity": round(tuned_ppl, 4),
        "perplexity_change_pct": round(100.0 * (tuned_ppl / base_ppl - 1.0), 3),
        "mean_kl": round(kl / max(n, 1), 6),
    }


def load_general_questions(path: str | Path = GENERAL_QUESTIONS) -> list[list[dict]]:
    return [row["messages"] for row in _general_rows(path)]


def load_general_accepts(path: str | Path = GENERAL_QUESTIONS) -> list[list[str] | None]:
    """Per question: the accepted answers (None where the question is open-ended)."""
    return [row.get("accept") for row in _general_rows(path)]


def _general_rows(path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def answers_correctly(answer: str, accept: list[str]) -> bool:
    """An accepted answer appears in `answer` as a whole word or phrase (case-insensitive): "84" counts in
    "12 times 7 is 84." but not inside an order id like "B84313"."""
    import re

    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", answer, flags=re.IGNORECASE) for word in accept)


def answer_agreement(
    base,
    tuned,
    tokenizer,
    questions: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    accepts: list[list[str] | None] | None = None,
) -> dict:
    """Share of general questions where base and fine-tuned give the same greedy answer, and (with
    `accepts`) the share of checkable ones each answers correctly."""
    from tuneforge.generation import generate_chat

    base_answers = [
        o["text"]
        for o in generate_chat(base, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    ]
    tuned_answers = [
        o["text"]
        for o in generate_chat(tuned, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    ]
    same = [a.strip() == b.strip() for a, b in zip(base_answers, tuned_answers, strict=True)]
    accepts = accepts or [None] * len(questions)
    answers = []
    for q, a, b, s, accept in zip(questions, base_answers, tuned_answers, same, accepts, strict=True):
        entry = {"question": q[-1]["content"], "base": a, "fine_tuned": b, "same": s}
        if accept:
            entry.update(base_correct=answers_correctly(a, accept), fine_tuned_correct=answers_correctly(b, accept))
        answers.append(entry)
    result = {
        "n_questions": len(questions),
        "answer_agreement": round(sum(same) / max(len(same), 1), 4),
    }
    scored = [e for e in answers if "base_correct" in e]
    if scored:
        result.update(
            n_checked_questions=len(scored),
            base_general_correct=round(sum(e["base_correct"] for e in scored) / len(scored), 4),
            tuned_general_correct=round(sum(e["fine_tuned_correct"] for e in scored) / len(scored), 4),
        )
    result["answers"] = answers
    return result


def measure_forgetting(
    base,
    tuned,
    tokenizer,
    *,
    n_windows: int = 32,
    window: int = 128,
    questions: list[list[dict]] | None = None,
    max_new_tokens: int = 48,
    max_forgetting: float | None = None,
) -> dict:
    """Drift on general text + greedy-answer agreement; `passed` when the perplexity rise is within the gate."""
    corpus = general_corpus("eval")
    windows = token_windows(tokenizer, corpus["texts"], n_windows, window)
    result = {"corpus": {k: corpus[k] for k in ("name", "python", "sha256")}, "window_tokens": window}
    result.update(text_drift(base, tuned, windows))
    accepts = None
    if questions is None:
        questions, accepts = load_general_questions(), load_general_accepts()
    if questions:
        result.update(
            answer_agreement(base, tuned, tokenizer, questions, max_new_tokens=max_new_tokens, accepts=accepts)
        )
    result["max_forgetting_pct"] = max_forgetting
    result["passed"] = None if max_forgetting is None else bool(result["perplexity_change_pct"] <= max_forgetting)
    return result


class AdapterDisabled:
    """The base model inside a PEFT model: every call runs with the LoRA adapter switched off.

    Lets the end of training measure forgetting without loading a second copy of the base weights.
    """

    def __init__(self, peft_model):
        self._model = peft_model
        self.config = peft_model.config

        def forward(*args, **kwargs):
            with peft_model.disable_adapter():
                return peft_model(*args, **kwargs)

        # Callers that inspect the signature (e.g. which cache argument it takes) see the real model's.
        self.forward = functools.update_wrapper(forward, peft_model.get_base_model().forward)

    def parameters(self):
        return self._model.parameters()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
