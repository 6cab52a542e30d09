"""Zero-shot vs few-shot vs fine-tuned, and what the model forgot:

    tuneforge compare --data test.jsonl --adapter runs/demo --shots 4 --shots-from train.jsonl --output runs/demo/report

Every variant answers the same test prompts greedily. Few-shot prompts get K user/assistant pairs from
--shots-from (chosen once by seed, the same K for every test prompt) inserted after any leading system
messages. Timing, defined once here and in docs/evaluation.md:

- latency_p50_s / latency_p95_s: one request at a time (batch size 1), wall time from prompt to finished
  answer, over the first `latency_samples` test prompts. This is what one user waits.
- batch_latency_p50_s / p95_s: in the batched run, an answer is ready when its batch finishes, so each
  answer's latency is its batch's wall time.
- batch_seconds_per_answer: batched run's total wall time / number of answers (throughput view).
- generated_tokens_per_second: generated tokens / batched wall time.

Forgetting (`forgetting.measure_forgetting`: general-text perplexity and KL, general questions by category,
instruction following) is gated by --max-forgetting PCT (perplexity rise) and --max-general-drop POINTS (fall in
correct general answers); the training run's forgetting guard, when its summary.json names one, is shown beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.evaluate.metrics import score
from tuneforge.evaluate.prompting import format_checker, select_shots, shot_pairs, with_shots  # noqa: F401
from tuneforge.evaluate.run import answer_budget, load_eval_set

VARIANTS = ("zero_shot", "few_shot", "fine_tuned")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_variant(
    model, tokenizer, prompts, references, tools, *, batch_size=32, max_new_tokens=256, latency_samples=8, checker=None
) -> dict:
    """Answer every prompt batched (timing each batch), then a few one at a time for single-request latency."""
    from tuneforge.data.tokenize import tokenize_prompt
    from tuneforge.generation import generate_chat

    budget = answer_budget(tokenizer, references, max_new_tokens)
    lengths = [len(tokenize_prompt(tokenizer, p, t)) for p, t in zip(prompts, tools, strict=True)]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    outputs: list[dict | None] = [None] * len(prompts)
    batch_latency = [0.0] * len(prompts)
    total_seconds = 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        began = time.perf_counter()
        answers = generate_chat(
            model,
            tokenizer,
            [prompts[i] for i in chunk],
            max_new_tokens=budget,
            batch_size=len(chunk),
            tools_list=[tools[i] for i in chunk],
        )
        seconds = time.perf_counter() - began
        total_seconds += seconds
        for i, answer in zip(chunk, answers, strict=True):
            outputs[i] = answer
            batch_latency[i] = seconds
    single = []
    for i in range(min(latency_samples, len(prompts))):
        began = time.perf_counter()
        generate_chat(model, tokenizer, [prompts[i]], max_new_tokens=budget, batch_size=1, tools_list=[tools[i]])
        single.append(time.perf_counter() - began)
    predictions = [o["text"] for o in outputs]
    result = score(predictions, references)
    if checker is not None:
        result["format"] = checker[0]
        result["format_valid"] = round(sum(checker[1](p) for p in predictions) / len(predictions), 4)
    completion_tokens = sum(o["completion_tokens"] for o in outputs)
    result.update(
        mean_prompt_tokens=round(sum(lengths) / len(lengths), 2),
        mean_completion_tokens=round(completion_tokens / len(outputs), 2),
        batch_size=batch_size,
        seconds=round(total_seconds, 3),
        batch_seconds_per_answer=round(total_seconds / len(outputs), 4),
        batch_latency_p50_s=round(percentile(batch_latency, 50), 4),
        batch_latency_p95_s=round(percentile(batch_latency, 95), 4),
        latency_samples=len(single),
        latency_p50_s=round(percentile(single, 50), 4) if single else None,
        latency_p95_s=round(percentile(single, 95), 4) if single else None,
        generated_tokens_per_second=round(completion_tokens / max(total_seconds, 1e-9), 2),
    )
    result["examples"] = [
        {"prompt": p[-1]["content"], "reference": r, "prediction": o["text"]}
        for p, r, o in zip(prompts, references, outputs, strict=True)
    ]
    return result


def read_training_curves(adapter: str | Path) -> dict:
    """Train and validation loss points from ADAPTER_DIR/metrics.jsonl (empty lists when absent)."""
    curves = {"train": [], "valid": []}
    path = Path(adapter) / "metrics.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") == "train" and "loss" in record:
            curves["train"].append([record["step"], record["loss"]])
        elif record.get("type") == "valid" and record.get("valid_loss") is not None:
            curves["valid"].append([record["step"], record["valid_loss"]])
    return curves


def read_advice(adapter: str | Path) -> dict | None:
    """ADAPTER_DIR/advice.json (`tuneforge advise --output ADAPTER_DIR` before training), without its examples."""
    try:
        advice = json.loads((Path(adapter) / "advice.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(advice, dict):
        return None
    advice.pop("shots_examples", None)
    return advice


def read_forgetting_guard(adapter: str | Path) -> dict | None:
    """The training run's forgetting guard, `{"method": "kl", "seconds": 57.9, ...}` or `{"method": "off"}`, from
    ADAPTER_DIR/summary.json; None when the run wrote none (older runs, full model dirs, other tools' adapters)."""
    path = Path(adapter) / "summary.json"
    try:
        guard = json.loads(path.read_text()).get("forgetting_guard")
    except (OSError, ValueError, AttributeError):
        return None
    return guard if isinstance(guard, dict) and guard.get("method") else None


def guard_label(guard: dict | None) -> str | None:
    """"guard kl, 58 s" / "guard off" for the verdict and the report; None without a guard record."""
    if not guard:
        return None
    label = f"guard {guard['method']}"
    if guard["method"] != "off" and isinstance(guard.get("seconds"), (int, float)):
        label += f", {guard['seconds']:.0f} s"
    return label


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def verdict(report: dict) -> str:
    """One line a builder can act on: fine-tuned against the best prompt-only variant, and the forgetting gate."""
    from tuneforge.evaluate.consistency import consistency_line

    variants = report["variants"]
    line = task_verdict(variants) if variants else "no test set: task not measured"
    if report.get("consistency"):
        line += "; " + consistency_line(report["consistency"])
    forgetting = report.get("forgetting")
    if forgetting:
        line += "; " + forgetting_verdict(forgetting)
    guard = guard_label(report.get("forgetting_guard"))
    if guard:
        line += f"; {guard}"
    return line


def task_verdict(variants: dict) -> str:
    """Fine-tuned against the best prompt-only variant: exact match, format, prompt length, speed."""
    tuned = variants["fine_tuned"]
    baseline_name = "few_shot" if "few_shot" in variants else "zero_shot"
    baseline = variants[baseline_name]
    label = baseline_name.replace("_", "-")
    parts = [f"fine-tuned: {tuned['exact_match']:.0%} exact vs {baseline['exact_match']:.0%} {label}"]
    if "zero_shot" in variants and baseline_name != "zero_shot":
        parts[0] += f" ({variants['zero_shot']['exact_match']:.0%} zero-shot)"
    if tuned.get("format_valid") is not None and baseline.get("format_valid") is not None:
        parts.append(f"format valid {tuned['format_valid']:.0%} vs {baseline['format_valid']:.0%}")
    shorter = _ratio(baseline["mean_prompt_tokens"], tuned["mean_prompt_tokens"])
    if shorter:
        parts.append(f"prompts {shorter:.1f}x shorter")
    key = (
        "latency_p50_s" if tuned.get("latency_p50_s") and baseline.get("latency_p50_s") else "batch_seconds_per_answer"
    )
    faster = _ratio(baseline.get(key), tuned.get(key))
    if faster:
        parts.append(
            f"{faster:.1f}x {'faster' if faster >= 1 else 'slower'} per answer"
            + ("" if key == "latency_p50_s" else " (batched)")
        )
    return ", ".join(parts)


def forgetting_verdict(forgetting: dict) -> str:
    """Perplexity, general answers and instruction following, base vs fine-tuned, and the gates."""
    line = f"forgetting {forgetting['perplexity_change_pct']:+.1f}% perplexity"
    if forgetting.get("answer_agreement") is not None:
        line += f", {forgetting['answer_agreement']:.0%} general answers unchanged"
    if forgetting.get("tuned_general_correct") is not None:
        line += (
            f", general questions {forgetting['base_general_correct']:.0%} -> "
            f"{forgetting['tuned_general_correct']:.0%} correct"
        )
        if forgetting.get("general_drop_points") is not None:
            line += f" ({0.0 - forgetting['general_drop_points']:+.1f} points)"
    following = forgetting.get("instruction_following")
    if following:
        line += f", instructions followed {following['base_strict']:.0%} -> {following['tuned_strict']:.0%}"
    gates = []
    if forgetting.get("max_forgetting_pct") is not None:
        gate = forgetting["max_forgetting_pct"]
        within = forgetting["perplexity_change_pct"] <= gate
        gates.append(f"{'within' if within else 'FAILS'} {gate:g}% gate")
    if forgetting.get("max_general_drop_points") is not None and forgetting.get("general_drop_points") is not None:
        gate = forgetting["max_general_drop_points"]
        within = forgetting["general_drop_points"] <= gate
        gates.append(f"{'within' if within else 'FAILS'} {gate:g}-point drop gate")
    if gates:
        line += f" ({', '.join(gates)})"
    return line


def compare(
    data: str | None,
    adapter: str,
    *,
    model: str | None = None,
    shots: int = 0,
    shots_from: str | None = None,
    format_regex: str | None = None,
    json_schema: str | None = None,
    max_forgetting: float | None = None,
    max_general_drop: float | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    latency_samples: int = 8,
    seed: int = 0,
    forgetting_windows: int = 32,
    window_tokens: int = 128,
    forgetting: bool = True,
    consistency: int = 0,
    temperature: float = 0.7,
    paraphrases: int = 2,
    paraphrase_file: str | None = None,
    style=None,
    consistency_inputs: int = 32,
    progress=None,
) -> dict:
    """Evaluate base zero-shot, base few-shot and the fine-tuned model on `data`; measure forgetting.

    Without `data` (a service job with no validation file) only forgetting is measured. `consistency` N > 0:
    the prompted base (few-shot when there are shots) and the fine-tune also answer the first
    `consistency_inputs` prompts N times at `temperature` and greedily under paraphrase
    (`consistency.measure_consistency`); `style` is a `consistency.StyleCheck`."""
    from tuneforge.evaluate.forgetting import measure_forgetting
    from tuneforge.models import adapter_base_spec, load_model

    say = progress or (lambda message: None)
    prompts, references, tools = load_eval_set(data) if data else ([], [], [])
    if limit:
        prompts, references, tools = prompts[:limit], references[:limit], tools[:limit]
    if shots and not shots_from:
        raise UserError("--shots needs --shots-from TRAIN.jsonl")
    chosen_shots = select_shots(shots_from, shots, seed) if shots else []
    checker = format_checker(references, format_regex, json_schema)
    adapter_dir = Path(adapter)
    base_spec = model or (adapter_base_spec(adapter_dir) if (adapter_dir / "adapter_config.json").is_file() else None)
    say(f"loading base {base_spec or 'default'} and fine-tuned {adapter}")
    base, tokenizer = load_model(base_spec)
    tuned, tuned_tokenizer = load_model(model, adapter)
    options = dict(
        batch_size=batch_size, max_new_tokens=max_new_tokens, latency_samples=latency_samples, checker=checker
    )
    variants = {}
    if prompts:
        say(f"zero-shot on {len(prompts)} examples")
        variants["zero_shot"] = run_variant(base, tokenizer, prompts, references, tools, **options)
        if chosen_shots:
            say(f"{shots}-shot on {len(prompts)} examples")
            few = [with_shots(p, chosen_shots) for p in prompts]
            variants["few_shot"] = run_variant(base, tokenizer, few, references, tools, **options)
        say(f"fine-tuned on {len(prompts)} examples")
        variants["fine_tuned"] = run_variant(tuned, tuned_tokenizer, prompts, references, tools, **options)
    consistency_report = None
    if prompts and consistency > 0:
        from tuneforge.evaluate.consistency import measure_variants

        consistency_report = measure_variants(
            {"few_shot" if chosen_shots else "zero_shot": (base, tokenizer, chosen_shots),
             "fine_tuned": (tuned, tuned_tokenizer, [])},
            variants, prompts[:consistency_inputs], references[:consistency_inputs], tools[:consistency_inputs],
            n_samples=consistency, temperature=temperature, paraphrases=paraphrases, paraphrase_file=paraphrase_file,
            checker=checker, style=style, seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens, say=say)
    report = {
        "data": str(data) if data else None,
        "adapter": str(adapter),
        "base_model": base_spec or "default",
        "n": len(prompts),
        "shots": shots,
        "shots_from": shots_from,
        "seed": seed,
        "variants": variants,
        "training": read_training_curves(adapter),
        "advice": read_advice(adapter),
        "forgetting_guard": read_forgetting_guard(adapter),
        "forgetting": None,
        "consistency": consistency_report,
        "command": compare_command(data, adapter, model=model, shots=shots, shots_from=shots_from,
                                   format_regex=format_regex, json_schema=json_schema, max_forgetting=max_forgetting,
                                   max_general_drop=max_general_drop, limit=limit, seed=seed, forgetting=forgetting,
                                   consistency=consistency, temperature=temperature, paraphrases=paraphrases,
                                   paraphrase_file=paraphrase_file, style=style),
    }
    if forgetting:
        say("forgetting: perplexity and KL on general text, general questions by category, instruction following")
        report["forgetting"] = measure_forgetting(
            base,
            tuned,
            tokenizer,
            n_windows=forgetting_windows,
            window=window_tokens,
            max_forgetting=max_forgetting,
            max_general_drop=max_general_drop,
        )
    report["passed"] = report["forgetting"]["passed"] if report["forgetting"] else None
    report["verdict"] = verdict(report)
    return report


def compare_command(data, adapter, *, model, shots, shots_from, format_regex, json_schema, max_forgetting,
                    max_general_drop, limit, seed, forgetting, consistency, temperature, paraphrases, paraphrase_file,
                    style) -> list[str]:
    """The `tuneforge compare` line that measures this report again (the run card prints it)."""
    command = ["tuneforge", "compare", "--adapter", str(adapter)]
    for flag, value in (("--data", data), ("--model", model), ("--shots-from", shots_from),
                        ("--format-regex", format_regex), ("--json-schema", json_schema),
                        ("--max-forgetting", max_forgetting), ("--max-general-drop", max_general_drop),
                        ("--limit", limit), ("--paraphrase-file", paraphrase_file)):
        if value is not None:
            command += [flag, str(value)]
    if shots:
        command += ["--shots", str(shots)]
    command += ["--seed", str(seed)]
    if consistency:
        command += ["--consistency", str(consistency), "--temperature", f"{temperature:g}"]
        if not paraphrase_file:
            command += ["--paraphrases", str(paraphrases)]
        if style is not None:
            command += list(style.flag)
    if not forgetting:
        command.append("--no-forgetting")
    return command


FORGETTING_HINT = (
    "hint: the fine-tune forgot general ability. The forgetting guard is on by default (forgetting_guard=kl): "
    "if the run set forgetting_guard=off, drop that; else hold it tighter with forgetting_guard_weight=2 or "
    "forgetting_guard_ratio=0.5, add general data of your own with --replay FILE --replay-ratio 0.25, or train "
    "fewer epochs / a lower --lr. See docs/evaluation.md."
)


def training_eval(model, tokenizer, config) -> dict:
    """The end-of-training checks `tuneforge train` writes into summary.json: "eval" and "forgetting".

    The trained model is evaluated in place; the base for forgetting is the same model with its LoRA
    adapter switched off (a full fine-tune reloads the base).
    """
    from tuneforge.evaluate.forgetting import AdapterDisabled, eval_mode, measure_forgetting
    from tuneforge.evaluate.run import evaluate

    results = {}
    with eval_mode(model):
        if config.eval_data:
            result = evaluate(model, tokenizer, config.eval_data)
            result.pop("examples")
            results["eval"] = result
        if config.max_forgetting is not None or config.max_general_drop is not None:
            if hasattr(model, "disable_adapter"):
                base = AdapterDisabled(model)
            else:
                from tuneforge.models import load_model

                base, _ = load_model(config.model, device=str(next(model.parameters()).device))
            results["forgetting"] = measure_forgetting(base, model, tokenizer, max_forgetting=config.max_forgetting,
                                                       max_general_drop=config.max_general_drop)
            results["forgetting"].pop("answers", None)  # the summary keeps the numbers; compare's report the answers
            (results["forgetting"].get("instruction_following") or {}).pop("answers", None)
    return results
