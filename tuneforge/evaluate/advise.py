"""Should you fine-tune? Answered before any money is spent:

    tuneforge advise train.jsonl --learning-curve --output runs/tickets

Part of DATA is held out (by seed, with the split `train --validation-split` uses). The base model answers it
zero-shot and with k examples in the prompt, for a few k (nested: the k-shot examples are the first k of one
seeded draw from the rest of the data); the best k is the one measured best, ties going to the shorter
prompt. The advice compares that with --target and, when asked, with a learning curve: short trainings on
nested subsets of the rest (12.5/25/50/100%), each answered on the same held-out part. The cost side is
measured on this machine (tuneforge.estimate: two real training steps) and the savings per request are the
measured difference between the best prompt and the zero-shot prompt a fine-tune would get.

Everything that needs training or the estimate is handed in by the verb (tuneforge/commands/advise.py), so
this module measures and reasons but never imports a recipe. The arithmetic (`break_even`, `fit_log_linear`,
`extrapolate_gain`, `nested_subsets`, `decide`) is pure and tested against hand calculations.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from tuneforge.data.curation import split_validation
from tuneforge.errors import UserError
from tuneforge.evaluate.compare import run_variant
from tuneforge.evaluate.metrics import exact_match, json_equal
from tuneforge.evaluate.prompting import format_checker, shot_pairs, with_shots
from tuneforge.evaluate.run import split_prompt_and_reference

METRICS = ("exact_match", "json_match", "format_valid")
CURVE_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
# A fine-tune must beat the best prompt by this much on the held-out part to be called a gain: with ~50
# held-out examples one answer is 2 points, and a 5-point lead is more than two or three flipped answers.
MIN_GAIN = 0.05


# ---------------------------------------------------------------------------------------------- pure parts
def holdout_split(items: list, fraction: float, seed: int, max_held_out: int | None = None) -> tuple[list, list]:
    """(rest, held_out): `curation.split_validation`'s rows, the held-out part capped at `max_held_out` (the
    surplus goes back to the rest, so the cap never changes which rows are candidates)."""
    if not 0 < fraction < 1:
        raise UserError(f"--holdout must be between 0 and 1, got {fraction}")
    rest, held = split_validation(items, fraction, seed)
    if max_held_out is not None and len(held) > max_held_out:
        rest, held = rest + held[max_held_out:], held[:max_held_out]
    return rest, held


def nested_subsets(n: int, fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Indices of `n` items for each fraction: one seeded shuffle, each subset its prefix, so every smaller
    subset lies inside every larger one and the same seed always gives the same subsets."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[: max(1, min(n, round(f * n)))]) for f in fractions]


def curve_steps(n_examples: int, batch_size: int, epochs: float, min_steps: int, max_steps: int) -> int:
    """Optimizer steps of one learning-curve training: `epochs` over its subset, within [min_steps, max_steps]."""
    return min(max_steps, max(min_steps, math.ceil(epochs * n_examples / batch_size)))


def fit_log_linear(ns: list[float], values: list[float]) -> tuple[float, float]:
    """Least-squares (alpha, beta) of value = alpha + beta * log2(n).

    Closed form: beta = cov(x, y) / var(x) with x = log2 n; alpha = mean(y) - beta * mean(x). One doubling
    of the data moves the fitted value by beta."""
    xs = [math.log2(n) for n in ns]
    mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    beta = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / var_x if var_x else 0.0
    return mean_y - beta * mean_x, beta


def predicted_gain(ns: list[float], values: list[float], to_n: float) -> float:
    """Points (0-1 scale) the log-linear fit adds from the last measured n to `to_n`, the curve capped at 1."""
    alpha, beta = fit_log_linear(ns, values)

    def at(n: float) -> float:
        return min(1.0, max(0.0, alpha + beta * math.log2(n)))

    return at(to_n) - at(ns[-1])


def extrapolate_gain(ns: list[int], correct: list[list[bool]], to_n: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """The fitted gain from ns[-1] to `to_n` examples and a 90% bootstrap interval.

    `correct[i][j]`: held-out example j answered right after training on ns[i] examples. The bootstrap
    resamples held-out examples (the same resample for every point, so the points stay paired) and refits;
    the interval covers the evaluation's noise, not that of training (one training per point)."""
    values = [sum(row) / len(row) for row in correct]
    gain = predicted_gain(ns, values, to_n)
    rng = random.Random(seed)
    m = len(correct[0])
    gains = []
    for _ in range(n_boot):
        pick = [rng.randrange(m) for _ in range(m)]
        gains.append(predicted_gain(ns, [sum(row[j] for j in pick) / m for row in correct], to_n))
    gains.sort()
    alpha, beta = fit_log_linear(ns, values)
    return {
        "model": "metric = alpha + beta * log2(examples), capped at 1",
        "alpha": round(alpha, 4),
        "beta_per_doubling": round(beta, 4),
        "from_examples": ns[-1],
        "to_examples": to_n,
        "gain": round(gain, 4),
        "gain_low": round(gains[int(0.05 * (n_boot - 1))], 4),
        "gain_high": round(gains[int(0.95 * (n_boot - 1))], 4),
        "bootstrap": n_boot,
    }


def break_even(*, train_seconds: float, prompt_tokens_saved: float, latency_saved_s: float, price_per_hour: float,
               price_per_1k_tokens: float) -> dict:
    """Requests after which a fine-tune has paid for its training.

    training cost = train_seconds / 3600 * price_per_hour  (the machine's price, also the serving machine's)
    saving per request = prompt_tokens_saved / 1000 * price_per_1k_tokens  (prompt tokens billed or budgeted)
                       + latency_saved_s / 3600 * price_per_hour            (machine time no longer spent)
    break-even requests = ceil(training cost / saving per request); None when nothing is saved.
    By time alone (no prices): ceil(train_seconds / latency_saved_s) requests give back the training's seconds.
    """
    training_cost = train_seconds / 3600 * price_per_hour
    token_saving = prompt_tokens_saved / 1000 * price_per_1k_tokens
    time_saving = latency_saved_s / 3600 * price_per_hour
    saving = token_saving + time_saving
    return {
        "training_cost": training_cost,
        "saving_per_request": saving,
        "saving_per_request_tokens": token_saving,
        "saving_per_request_time": time_saving,
        "requests": math.ceil(training_cost / saving) if saving > 0 else None,
        "requests_by_time": math.ceil(train_seconds / latency_saved_s) if latency_saved_s > 0 else None,
    }


def decide(best_prompting: float, target: float, tuned: float | None) -> str:
    """"prompting suffices", "fine-tune" or "more data": the best prompt against the target, and the learning
    curve's best point (None: not measured) against the best prompt."""
    if best_prompting >= target:
        return "prompting suffices"
    if tuned is None or tuned >= best_prompting + MIN_GAIN:
        return "fine-tune"
    return "more data"


def per_example(metric: str, predictions: list[str], references: list[str], checker) -> list[bool]:
    if metric == "exact_match":
        return [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    if metric == "json_match":
        return [json_equal(p, r) for p, r in zip(predictions, references, strict=True)]
    return [bool(checker[1](p)) for p in predictions]


# ---------------------------------------------------------------------------------------------- measurement
def _summary(result: dict, correct: list[bool]) -> dict:
    kept = {k: v for k, v in result.items() if k != "examples"}
    kept["metric"] = round(sum(correct) / len(correct), 4)
    return kept


def advise(
    conversations: list,
    *,
    data: str,
    model: str | None = None,
    target: float = 0.9,
    metric: str = "exact_match",
    holdout: float = 0.2,
    max_held_out: int | None = 50,
    shots: tuple[int, ...] = (1, 2, 4),
    seed: int = 0,
    format_regex: str | None = None,
    json_schema: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    latency_samples: int = 4,
    price_per_hour: float = 1.0,
    price_per_1k_tokens: float = 0.0002,
    estimate: Callable[[], dict] | None = None,
    learning_curve: bool = False,
    train_subset: Callable[[list, int, int], str] | None = None,
    curve_fractions: tuple[float, ...] = CURVE_FRACTIONS,
    curve_epochs: float = 1.0,
    curve_min_steps: int = 4,
    curve_max_steps: int = 32,
    train_batch_size: int = 8,
    progress=None,
) -> dict:
    """Measure prompting on a held-out part of `conversations`, the cost of a fine-tune and (learning_curve)
    what short fine-tunes reach; returns the advice as a dict (`format_advice` writes it as text).

    `estimate()` -> tuneforge.estimate's dict for the full training; `train_subset(rows, steps, index)` -> an
    adapter dir trained on `rows` for `steps` steps."""
    from tuneforge.models import load_model

    say = progress or (lambda message: None)
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}")
    rest, held = holdout_split(conversations, holdout, seed, max_held_out)
    if not rest:
        raise UserError(f"{len(conversations)} examples: too few to hold some out and keep some", path=data)
    split = [split_prompt_and_reference(c.messages) for c in held]
    prompts, references = [p for p, _ in split], [r for _, r in split]
    tools = [c.tools for c in held]
    checker = format_checker(references, format_regex, json_schema)
    if metric == "format_valid" and checker is None:
        raise UserError("--metric format_valid needs --format-regex or --json-schema (or JSON references)")
    if metric == "json_match" and not all(r.strip().startswith(("{", "[")) for r in references):
        raise UserError("--metric json_match needs JSON answers")
    pairs = shot_pairs(rest)
    ks = sorted({k for k in shots if 0 < k <= len(pairs)})
    drawn = random.Random(seed).sample(pairs, max(ks)) if ks else []
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, latency_samples=latency_samples,
                   checker=checker)

    say(f"base model on {len(held)} held-out examples: zero-shot and {', '.join(map(str, ks)) or 'no'}-shot")
    base, tokenizer = load_model(model)
    prompting = {}
    for k in [0, *ks]:
        variant_prompts = [with_shots(p, drawn[:k]) for p in prompts] if k else prompts
        result = run_variant(base, tokenizer, variant_prompts, references, tools, **options)
        correct = per_example(metric, [e["prediction"] for e in result["examples"]], references, checker)
        prompting["zero_shot" if k == 0 else f"{k}_shot"] = {"shots": k, **_summary(result, correct)}
        say(f"  {k}-shot: {metric} {prompting[list(prompting)[-1]]['metric']:.0%}")
    del base
    # The best prompt: the highest metric, then the shorter prompt.
    best_name = max(prompting, key=lambda name: (prompting[name]["metric"], -prompting[name]["shots"]))
    best, zero = prompting[best_name], prompting["zero_shot"]
    advice = {
        "data": str(data),
        "model": model or "default",
        "n_examples": len(conversations),
        "n_held_out": len(held),
        "n_rest": len(rest),
        "seed": seed,
        "holdout": holdout,
        "metric": metric,
        "target": target,
        "format": checker[0] if checker else None,
        "prompting": prompting,
        "best_prompting": best_name,
        "meets_target": best["metric"] >= target,
        "shots_examples": [{"user": u, "assistant": a} for u, a in drawn[: best["shots"]]],
    }

    cost = {}
    if estimate is not None:
        say("cost: two real training steps on this machine (tuneforge.estimate)")
        cost = estimate() or {}
    advice["cost"] = cost
    train_seconds = cost.get("train_seconds_if_idle") or cost.get("train_seconds")
    # The fine-tune answers the zero-shot prompt; its latency is taken to be the base's on that prompt.
    tokens_saved = best["mean_prompt_tokens"] - zero["mean_prompt_tokens"]
    latency_key = "latency_p50_s" if best.get("latency_p50_s") and zero.get("latency_p50_s") else \
        "batch_seconds_per_answer"
    latency_saved = (best.get(latency_key) or 0.0) - (zero.get(latency_key) or 0.0)
    advice["savings"] = {
        "prompt_tokens_saved": round(tokens_saved, 2),
        "latency_saved_s": round(latency_saved, 4),
        "latency_measure": latency_key,
    }
    advice["assumptions"] = [
        f"the fine-tuned model answers the zero-shot prompt ({zero['mean_prompt_tokens']:.0f} tokens) as fast as the "
        f"base does; the best prompt is {best_name.replace('_', '-')} ({best['mean_prompt_tokens']:.0f} tokens)",
        f"latency is {latency_key} measured here ({'one request at a time' if latency_key == 'latency_p50_s' else 'batched'})",
        f"machine price {price_per_hour:g} per hour, for training and for serving (--price-per-hour)",
        f"prompt tokens priced {price_per_1k_tokens:g} per 1k (--price-per-1k-tokens)",
        "training cost counts machine time only: not data curation, evaluation or your time",
    ]
    if train_seconds:
        advice["assumptions"].append(
            f"training time is tuneforge.estimate's {'idle-machine ' if cost.get('train_seconds_if_idle') else ''}"
            f"figure for {cost.get('epochs')} epochs of batch {cost.get('batch_size')} on {cost.get('device')}")
        advice["break_even"] = break_even(train_seconds=train_seconds, prompt_tokens_saved=max(0.0, tokens_saved),
                                          latency_saved_s=max(0.0, latency_saved), price_per_hour=price_per_hour,
                                          price_per_1k_tokens=price_per_1k_tokens)
    else:
        advice["break_even"] = None

    advice["learning_curve"] = None
    if learning_curve:
        if train_subset is None:
            raise UserError("the learning curve needs a trainer")
        advice["learning_curve"] = measure_learning_curve(
            rest, prompts, references, tools, metric=metric, checker=checker, model=model, seed=seed,
            fractions=curve_fractions, epochs=curve_epochs, min_steps=curve_min_steps, max_steps=curve_max_steps,
            train_batch_size=train_batch_size, train_subset=train_subset, cost=cost, options=options, say=say)
    curve = advice["learning_curve"]
    tuned = curve["points"][-1]["metric"] if curve else None
    advice["decision"] = decide(best["metric"], target, tuned)
    advice["expected_gain"] = round(tuned - best["metric"], 4) if tuned is not None else None
    advice["summary"] = summary_line(advice)
    return advice


def measure_learning_curve(rest, prompts, references, tools, *, metric, checker, model, seed, fractions, epochs,
                           min_steps, max_steps, train_batch_size, train_subset, cost, options, say) -> dict:
    """Short trainings on nested subsets of `rest`, each answered greedily on the held-out prompts."""
    from tuneforge.models import load_model

    subsets = nested_subsets(len(rest), tuple(fractions), seed)
    steps = [curve_steps(len(s), train_batch_size, epochs, min_steps, max_steps) for s in subsets]
    planned = None
    if cost.get("seconds_per_token") and cost.get("train_tokens") and cost.get("epochs"):
        tokens_per_example = cost["train_tokens"] / cost["epochs"] / max(1, len(rest) + len(prompts))
        planned = round(sum(steps) * train_batch_size * tokens_per_example * cost["seconds_per_token"], 1)
    say(f"learning curve: {len(subsets)} short trainings ({' + '.join(map(str, steps))} steps of "
        f"{train_batch_size} examples){f', about {planned:.0f} s of training' if planned else ''}, "
        f"each answered on {len(prompts)} held-out examples")
    options = {**options, "latency_samples": 0}
    points, correct_rows = [], []
    started = time.perf_counter()
    for index, (subset, n_steps) in enumerate(zip(subsets, steps, strict=True)):
        began = time.perf_counter()
        adapter = train_subset([rest[i] for i in subset], n_steps, index)
        trained = time.perf_counter() - began
        tuned, tokenizer = load_model(model, adapter)
        result = run_variant(tuned, tokenizer, prompts, references, tools, **options)
        del tuned
        correct = per_example(metric, [e["prediction"] for e in result["examples"]], references, checker)
        correct_rows.append(correct)
        points.append({"fraction": fractions[index], "examples": len(subset), "steps": n_steps,
                       "metric": round(sum(correct) / len(correct), 4),
                       "format_valid": result.get("format_valid"), "train_seconds": round(trained, 1),
                       "seconds": round(time.perf_counter() - began, 1)})
        say(f"  {len(subset)} examples, {n_steps} steps: {metric} {points[-1]['metric']:.0%} "
            f"({points[-1]['seconds']:.0f} s)")
    ns = [p["examples"] for p in points]
    extrapolation = extrapolate_gain(ns, correct_rows, 2 * ns[-1], seed=seed) if len(set(ns)) > 1 else None
    return {"points": points, "extrapolation": extrapolation, "planned_train_seconds": planned,
            "seconds": round(time.perf_counter() - started, 1), "epochs_per_point": epochs,
            "min_steps": min_steps, "max_steps": max_steps, "batch_size": train_batch_size}


# ---------------------------------------------------------------------------------------------- words
def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def summary_line(advice: dict) -> str:
    """The one line: the decision and the numbers it rests on."""
    best = advice["prompting"][advice["best_prompting"]]
    label = advice["best_prompting"].replace("_", "-")
    metric = advice["metric"].replace("_", " ")
    head = f"{advice['decision']}: base {label} {_pct(best['metric'])} {metric} vs target {_pct(advice['target'])}"
    curve = advice.get("learning_curve")
    if curve:
        last = curve["points"][-1]
        head += f"; a short fine-tune on {last['examples']} examples reached {_pct(last['metric'])}"
    return head


def format_advice(advice: dict) -> str:
    """The advice as text, every assumption included."""
    metric = advice["metric"].replace("_", " ")
    lines = [f"advice: {advice['summary']}",
             f"  held out {advice['n_held_out']} of {advice['n_examples']} examples (seed {advice['seed']}); "
             f"prompt examples drawn from the other {advice['n_rest']}"]
    for name, result in advice["prompting"].items():
        extra = f", format valid {_pct(result['format_valid'])}" if result.get("format_valid") is not None else ""
        latency = result.get("latency_p50_s")
        lines.append(f"  base {name.replace('_', '-'):>9}: {metric} {_pct(result['metric'])}{extra}, "
                     f"{result['mean_prompt_tokens']:.0f} prompt tokens"
                     + (f", {latency:.2f} s per request (p50)" if latency else ""))
    if advice["meets_target"]:
        lines.append(f"  prompting already meets the target: {advice['best_prompting'].replace('_', '-')} is enough; "
                     "fine-tune only for the savings below")
    else:
        lines.append(f"  prompting misses the target by {100 * (advice['target'] - advice['prompting'][advice['best_prompting']]['metric']):.0f} points")
    curve = advice.get("learning_curve")
    if curve:
        lines.append(f"  learning curve ({curve['seconds']:.0f} s; {metric} on the held-out part after short "
                     f"trainings, {curve['epochs_per_point']:g} epoch within {curve['min_steps']}-{curve['max_steps']} "
                     f"steps of {curve['batch_size']}):")
        for point in curve["points"]:
            lines.append(f"    {point['examples']:>6} examples, {point['steps']:>3} steps: {_pct(point['metric'])}")
        ext = curve.get("extrapolation")
        if ext:
            lines.append(f"  {ext['to_examples'] - ext['from_examples']} more examples would likely add "
                         f"{100 * ext['gain']:+.1f} points (90% interval {100 * ext['gain_low']:+.1f} to "
                         f"{100 * ext['gain_high']:+.1f}; log-linear fit, bootstrap over held-out examples)")
        if advice.get("expected_gain") is not None:
            lines.append(f"  a fine-tune is likely to gain {100 * advice['expected_gain']:+.0f} points over the best "
                         "prompt (the full training runs longer than these short ones: more, if anything)")
    else:
        lines.append("  what a fine-tune gains is not measured: add --learning-curve")
    cost = advice.get("cost") or {}
    if cost.get("train_seconds") is not None:
        idle = cost.get("train_seconds_if_idle")
        lines.append(f"  cost on this machine ({cost.get('device')}/{cost.get('dtype')}): training "
                     f"~{cost['train_seconds']:.0f} s at the current load"
                     + (f" (~{idle:.0f} s idle)" if idle else "")
                     + f" for {cost.get('epochs')} epochs, peak memory ~{cost.get('peak_memory_mb', 0):.0f} MB")
    elif cost.get("error"):
        lines.append(f"  cost not measured: {cost['error']}")
    else:
        lines.append("  cost not measured (--no-estimate): no break-even")
    savings = advice["savings"]
    lines.append(f"  per request a fine-tune saves {savings['prompt_tokens_saved']:.0f} prompt tokens and "
                 f"{savings['latency_saved_s']:.3f} s ({savings['latency_measure']})")
    even = advice.get("break_even")
    if even:
        requests = f"{even['requests']:,} requests" if even["requests"] else "never (nothing saved per request)"
        lines.append(f"  break-even: {requests} (training {even['training_cost']:.4f} vs "
                     f"{even['saving_per_request']:.6f} saved per request)"
                     + (f"; by machine time alone {even['requests_by_time']:,} requests" if even["requests_by_time"]
                        else ""))
    lines.append("  assumptions: " + "; ".join(advice["assumptions"]))
    return "\n".join(lines)


def write_advice(advice: dict, output: str | Path) -> dict[str, Path]:
    """advice.json (and learning_curve.png when there is a curve) into `output`."""
    import json

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "advice.json"}
    if advice.get("learning_curve"):
        from tuneforge.evaluate.report import plot_learning_curve

        paths["plot"] = plot_learning_curve(advice, output / "learning_curve.png")
    staging = output / ".advice.json.tmp"
    staging.write_text(json.dumps(advice, indent=2) + "\n")
    staging.replace(paths["json"])
    return paths
