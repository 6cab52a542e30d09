"""What fine-tuning did to general ability:  tuneforge compare --data test.jsonl --adapter runs/demo

Four measurements of drift between the base model and the fine-tuned one, all offline and deterministic:

- perplexity change (%) on general English prose: the text of Python's own reference manual topics
  (`pydoc_data/topics.py`, shipped with every CPython; the corpus name, Python version and a SHA-256 of
  the text are recorded with every result). Distinct topic texts in name order; even-numbered ones are the
  *measurement* split, odd-numbered topics the *replay* split (`--replay builtin:pydoc`), so replay never
  trains on the text that forgetting is measured on. A fixed budget of windows (default 32 x 128 tokens)
  is taken at evenly spaced offsets.
- mean KL(base || fine-tuned) of next-token distributions over those same windows (nats per token; 0 when
  the models are identical, never negative).
- greedy answers of both models to ~450 short general questions in categories (`general_questions.jsonl`:
  geography, arithmetic, science, nature, calendar, units, language, everyday things and colours, history,
  the body, computing; written by `scripts/make_general_questions.py`): agreement, the share of questions
  where both give the same answer (after stripping whitespace); and how many each answers correctly (an
  `accept`ed word or phrase appears as a whole word, case-insensitive), overall and per category.
  `general_drop_points` = 100 x (base correct - fine-tuned correct). Agreement says the model changed;
  correctness says whether it still knows.
- instruction following: greedy answers to ~80 prompts with verifiable constraints ("all lowercase", "fewer
  than 20 words", "exactly 3 bullet points", `instruction_checks.jsonl`), scored prompt by prompt with
  IFEval's strict checkers from the `if-verifiable` package: a prompt counts when every constraint holds.

The gate: `passed` when perplexity rose at most `max_forgetting` % and, with `max_general_drop`, correct
general answers fell at most that many points.
"""

from __future__ import annotations

import functools
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.data.replay import general_corpus  # the corpus is data; forgetting is measured on its eval split

GENERAL_QUESTIONS = Path(__file__).with_name("general_questions.jsonl")
INSTRUCTION_CHECKS = Path(__file__).with_name("instruction_checks.jsonl")
# Room for answers whose constraint takes space ("exactly 4 bullet points", "at least 50 words").
INSTRUCTION_MAX_NEW_TOKENS = 128


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


def load_general_categories(path: str | Path = GENERAL_QUESTIONS) -> list[str | None]:
    """Per question: its category ("geography", "arithmetic", ...; None where a row has none)."""
    return [row.get("category") for row in _general_rows(path)]


def load_instruction_checks(path: str | Path = INSTRUCTION_CHECKS) -> list[dict]:
    """Rows `{"messages", "instruction_id_list", "kwargs"}`: a prompt and the IFEval constraints its answer meets."""
    return _general_rows(path)


def _general_rows(path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def answers_correctly(answer: str, accept: list[str]) -> bool:
    """An accepted answer appears in `answer` as a whole word or phrase (case-insensitive): "84" counts in
    "12 times 7 is 84." but not inside an order id like "B84313"."""
    import re

    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", answer, flags=re.IGNORECASE) for word in accept)


def _drop_points(base_share: float, tuned_share: float) -> float:
    """How far the fine-tuned model fell behind the base, in percentage points (negative: it got better)."""
    return round(100.0 * (base_share - tuned_share), 1)


def general_scores(
    questions: list[list[dict]],
    base_answers: list[str],
    tuned_answers: list[str],
    accepts: list[list[str] | None] | None = None,
    categories: list[str | None] | None = None,
) -> dict:
    """Agreement of the two models' answers, and (with `accepts`) the share each answers correctly, overall and
    per category: `categories[c] = {"n", "base_correct", "tuned_correct"}` over the checkable questions of c."""
    same = [a.strip() == b.strip() for a, b in zip(base_answers, tuned_answers, strict=True)]
    accepts = accepts or [None] * len(questions)
    categories = categories or [None] * len(questions)
    answers = []
    for q, a, b, s, accept, category in zip(
        questions, base_answers, tuned_answers, same, accepts, categories, strict=True
    ):
        entry = {"question": q[-1]["content"], "base": a, "fine_tuned": b, "same": s}
        if category:
            entry["category"] = category
        if accept:
            entry.update(base_correct=answers_correctly(a, accept), fine_tuned_correct=answers_correctly(b, accept))
        answers.append(entry)
    result = {
        "n_questions": len(questions),
        "answer_agreement": round(sum(same) / max(len(same), 1), 4),
    }
    scored = [e for e in answers if "base_correct" in e]
    if scored:
        base_share = sum(e["base_correct"] for e in scored) / len(scored)
        tuned_share = sum(e["fine_tuned_correct"] for e in scored) / len(scored)
        result.update(
            n_checked_questions=len(scored),
            base_general_correct=round(base_share, 4),
            tuned_general_correct=round(tuned_share, 4),
            general_drop_points=_drop_points(base_share, tuned_share),
        )
        by_category: dict[str, list[dict]] = {}
        for entry in scored:
            if "category" in entry:
                by_category.setdefault(entry["category"], []).append(entry)
        if by_category:
            result["categories"] = {
                name: {
                    "n": len(entries),
                    "base_correct": round(sum(e["base_correct"] for e in entries) / len(entries), 4),
                    "tuned_correct": round(sum(e["fine_tuned_correct"] for e in entries) / len(entries), 4),
                }
                for name, entries in sorted(by_category.items())
            }
    result["answers"] = answers
    return result


def _greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    from tuneforge.generation import generate_chat

    outputs = generate_chat(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [o["text"] for o in outputs]


def answer_agreement(
    base,
    tuned,
    tokenizer,
    questions: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    accepts: list[list[str] | None] | None = None,
    categories: list[str | None] | None = None,
) -> dict:
    """Share of general questions where base and fine-tuned give the same greedy answer, and (with
    `accepts`) the share of checkable ones each answers correctly, per category too (with `categories`)."""
    base_answers = _greedy_answers(base, tokenizer, questions, max_new_tokens, batch_size)
    tuned_answers = _greedy_answers(tuned, tokenizer, questions, max_new_tokens, batch_size)
    return general_scores(questions, base_answers, tuned_answers, accepts, categories)


def _instruction_results(check: dict, response: str) -> dict[str, bool]:
    """Instruction id -> strict pass for one answer, by the IFEval checkers of the `if-verifiable` package."""
    from if_verifiable import IFEvalSample, evaluate_output_for_sample
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    ids = check["instruction_id_list"]
    unknown = [i for i in ids if i not in INSTRUCTION_DICT]
    if unknown:  # the library skips an id it does not know, which would count the prompt as followed
        raise ValueError(f"unknown IFEval instruction id {unknown[0]!r}; one of {', '.join(sorted(INSTRUCTION_DICT))}")
    sample = IFEvalSample(
        key=0,
        prompt=check["messages"][-1]["content"],
        instruction_id_list=ids,
        kwargs=check.get("kwargs") or [{} for _ in ids],
    )
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    passed = {r.instruction_id: r.strict_pass for r in results}
    return {i: passed.get(i, False) for i in ids}  # an empty answer comes back with no results: nothing followed


def instruction_scores(checks: list[dict], base_answers: list[str], tuned_answers: list[str]) -> dict:
    """Prompt-level strict instruction following (every constraint of a prompt met, IFEval's strict score) of
    both models, overall and per instruction id (`by_instruction[id] = {"n", "base_strict", "tuned_strict"}`)."""
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # the language checks run langdetect, which samples; a fixed seed keeps scores repeatable
    answers = []
    by_instruction: dict[str, list[tuple[bool, bool]]] = {}
    for check, a, b in zip(checks, base_answers, tuned_answers, strict=True):
        base_results, tuned_results = _instruction_results(check, a), _instruction_results(check, b)
        for instruction in check["instruction_id_list"]:
            by_instruction.setdefault(instruction, []).append((base_results[instruction], tuned_results[instruction]))
        answers.append(
            {
                "prompt": check["messages"][-1]["content"],
                "instructions": check["instruction_id_list"],
                "base": a,
                "fine_tuned": b,
                "base_strict": all(base_results.values()),
                "fine_tuned_strict": all(tuned_results.values()),
            }
        )
    n = max(len(answers), 1)
    base_share = sum(e["base_strict"] for e in answers) / n
    tuned_share = sum(e["fine_tuned_strict"] for e in answers) / n
    return {
        "n": len(answers),
        "base_strict": round(base_share, 4),
        "tuned_strict": round(tuned_share, 4),
        "drop_points": _drop_points(base_share, tuned_share),
        "by_instruction": {
            name: {
                "n": len(pairs),
                "base_strict": round(sum(p[0] for p in pairs) / len(pairs), 4),
                "tuned_strict": round(sum(p[1] for p in pairs) / len(pairs), 4),
            }
            for name, pairs in sorted(by_instruction.items())
        },
        "answers": answers,
    }


def instruction_following(
    base, tuned, tokenizer, checks: list[dict], max_new_tokens: int = INSTRUCTION_MAX_NEW_TOKENS, batch_size: int = 32
) -> dict:
    """Both models' greedy answers to the instruction prompts, scored by `instruction_scores`."""
    prompts = [check["messages"] for check in checks]
    base_answers = _greedy_answers(base, tokenizer, prompts, max_new_tokens, batch_size)
    tuned_answers = _greedy_answers(tuned, tokenizer, prompts, max_new_tokens, batch_size)
    return instruction_scores(checks, base_answers, tuned_answers)


def forgetting_gate(result: dict, max_forgetting: float | None, max_general_drop: float | None) -> bool | None:
    """Passed when perplexity rose at most `max_forgetting` % and general-question correctness fell at most
    `max_general_drop` points (each gate only when given); None when neither is."""
    gates = []
    if max_forgetting is not None:
        gates.append(result["perplexity_change_pct"] <= max_forgetting)
    if max_general_drop is not None:
        if "general_drop_points" not in result:
            raise ValueError("max_general_drop needs general questions with accept lists (none were checkable)")
        gates.append(result["general_drop_points"] <= max_general_drop)
    return bool(all(gates)) if gates else None


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
    max_general_drop: float | None = None,
    accepts: list[list[str] | None] | None = None,
    categories: list[str | None] | None = None,
    instruction_checks: list[dict] | None = None,
    instruction_max_new_tokens: int = INSTRUCTION_MAX_NEW_TOKENS,
    batch_size: int = 32,
) -> dict:
    """Drift on general text, general questions (agreement, correctness per category) and instruction
    following; `passed` when the perplexity rise and the drop in correct general answers are within their gates.

    `questions=None` takes the bundled questions with their accept lists and categories;
    `instruction_checks=None` the bundled instruction prompts, `[]` none.
    """
    seconds = {}
    began = time.perf_counter()
    corpus = general_corpus("eval")
    windows = token_windows(tokenizer, corpus["texts"], n_windows, window)
    result = {"corpus": {k: corpus[k] for k in ("name", "python", "sha256")}, "window_tokens": window}
    result.update(text_drift(base, tuned, windows))
    seconds["text"] = time.perf_counter() - began
    if questions is None:
        questions, accepts, categories = load_general_questions(), load_general_accepts(), load_general_categories()
    if questions:
        began = time.perf_counter()
        result.update(
            answer_agreement(
                base,
                tuned,
                tokenizer,
                questions,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                accepts=accepts,
                categories=categories,
            )
        )
        seconds["general_questions"] = time.perf_counter() - began
    if instruction_checks is None:
        instruction_checks = load_instruction_checks()
    if instruction_checks:
        began = time.perf_counter()
        result["instruction_following"] = instruction_following(
            base,
            tuned,
            tokenizer,
            instruction_checks,
            max_new_tokens=instruction_max_new_tokens,
            batch_size=batch_size,
        )
        seconds["instructions"] = time.perf_counter() - began
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result["max_forgetting_pct"] = max_forgetting
    result["max_general_drop_points"] = max_general_drop
    result["passed"] = forgetting_gate(result, max_forgetting, max_general_drop)
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
