"""Write a compare report to a folder: report.json, PNG plots and a self-contained report.html.

    tuneforge compare --data test.jsonl --adapter runs/demo --output runs/demo/report

The HTML inlines every plot as a base64 data URI, so the single file opens offline anywhere; the PNGs are
written next to it as well for slides and issues.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tuneforge.errors import UserError

LABELS = {"zero_shot": "base zero-shot", "few_shot": "base few-shot", "fine_tuned": "fine-tuned"}
WORSE = ' class="worse"'  # a category the fine-tune answers worse than the base
COLORS = {"zero_shot": "#9aa5b1", "few_shot": "#5b8def", "fine_tuned": "#2bb673"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'tuneforge[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(training: dict, path: Path) -> Path | None:
    if not training.get("train") and not training.get("valid"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if training.get("train"):
        steps, losses = zip(*training["train"], strict=True)
        ax.plot(steps, losses, label="train loss", color="#5b8def")
    if training.get("valid"):
        steps, losses = zip(*training["valid"], strict=True)
        ax.plot(steps, losses, "o-", label="validation loss", color="#e8743b")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_variants(variants: dict, path: Path) -> Path:
    plt = _pyplot()
    names = list(variants)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=100)
    panels = [
        ("accuracy", lambda v: 100 * v["exact_match"], "exact match (%)"),
        ("prompt", lambda v: v["mean_prompt_tokens"], "mean prompt tokens"),
        (
            "latency",
            lambda v: v["latency_p50_s"] if v.get("latency_p50_s") is not None else v["batch_seconds_per_answer"],
            "seconds per answer (p50)",
        ),
    ]
    for ax, (_, value, title) in zip(axes, panels, strict=True):
        values = [value(variants[n]) for n in names]
        bars = ax.bar([LABELS.get(n, n) for n in names], values, color=[COLORS.get(n, "#888") for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.15)
    if all(variants[n].get("format_valid") is not None for n in names):
        axes[0].plot(
            range(len(names)),
            [100 * variants[n]["format_valid"] for n in names],
            "k_",
            markersize=24,
            label="format valid",
        )
        axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_forgetting(forgetting: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=100)
    # Red when the fine-tune fails the gate (or, ungated, when perplexity rose at all).
    gate = forgetting.get("max_forgetting_pct")
    worse = forgetting["perplexity_change_pct"] > (gate if gate is not None else 0.0)
    ppl = axes[0].bar(
        ["base", "fine-tuned"],
        [forgetting["base_perplexity"], forgetting["tuned_perplexity"]],
        color=[COLORS["zero_shot"], "#d33" if worse else COLORS["fine_tuned"]],
    )
    axes[0].bar_label(ppl, fmt="%.2f", fontsize=8)
    axes[0].set_title(f"general-text perplexity ({forgetting['perplexity_change_pct']:+.1f}%)", fontsize=10)
    if forgetting.get("max_forgetting_pct") is not None:
        axes[0].axhline(
            forgetting["base_perplexity"] * (1 + forgetting["max_forgetting_pct"] / 100),
            color="#d33",
            linestyle="--",
            label=f"gate +{forgetting['max_forgetting_pct']:g}%",
        )
        axes[0].legend(fontsize=7, loc="upper left")
    kl = axes[1].bar(["KL(base||tuned)"], [forgetting["mean_kl"]], color="#e8743b")
    axes[1].bar_label(kl, fmt="%.4f", fontsize=8)
    axes[1].set_title("mean next-token KL (nats)", fontsize=10)
    agreement = forgetting.get("answer_agreement")
    if agreement is not None:
        labels, values, colors = ["unchanged"], [100 * agreement], ["#888"]
        if forgetting.get("tuned_general_correct") is not None:
            labels += ["base\ncorrect", "tuned\ncorrect"]
            values += [100 * forgetting["base_general_correct"], 100 * forgetting["tuned_general_correct"]]
            colors += [
                "#4a7fd4",
                "#2bb673" if forgetting["tuned_general_correct"] >= forgetting["base_general_correct"] else "#d33",
            ]
        bars = axes[2].bar(labels, values, color=colors)
        axes[2].bar_label(bars, fmt="%.0f%%", fontsize=8)
        axes[2].set_ylim(0, 110)
    axes[2].set_title("general questions (%)", fontsize=10)
    for ax in axes:
        ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curve(advice: dict, path: Path) -> Path:
    """The learning curve (metric on the held-out part against training examples, log scale), the best
    prompt and the target as lines, and the extrapolation to twice the data with its interval."""
    plt = _pyplot()
    curve = advice["learning_curve"]
    ns = [p["examples"] for p in curve["points"]]
    values = [100 * p["metric"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(ns, values, "o-", color=COLORS["fine_tuned"], label="short fine-tune")
    best = advice["prompting"][advice["best_prompting"]]
    ax.axhline(100 * best["metric"], color=COLORS["few_shot"], linestyle=":",
               label=f"base {advice['best_prompting'].replace('_', '-')}")
    ax.axhline(100 * advice["target"], color="#d33", linestyle="--", label="target")
    ext = curve.get("extrapolation")
    if ext:
        to_n, last = ext["to_examples"], values[-1]
        ax.errorbar([to_n], [min(100, last + 100 * ext["gain"])],
                    yerr=[[100 * (ext["gain"] - ext["gain_low"])], [100 * (ext["gain_high"] - ext["gain"])]],
                    fmt="s", color="#888", capsize=4, label="extrapolated (90%)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"{advice['metric'].replace('_', ' ')} (%)")
    ax.set_ylim(-2, 105)
    ax.set_title("Learning curve on the held-out part")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _advice_html(report: dict) -> str:
    """The advice given before training (advice.json beside the adapter) and its learning curve."""
    advice = report.get("advice")
    if not advice:
        return ""
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(name.replace('_', '-'))}</td><td>{_fmt(v['metric'], 'pct')}</td>"
                   f"<td>{_fmt(v['mean_prompt_tokens'])}</td></tr>" for name, v in advice["prompting"].items())
    curve = advice.get("learning_curve") or {}
    points = "".join(f"<tr><td>{p['examples']}</td><td>{p['steps']}</td><td>{_fmt(p['metric'], 'pct')}</td></tr>"
                     for p in curve.get("points") or [])
    ext = curve.get("extrapolation")
    ext_line = (f"<p>{ext['to_examples'] - ext['from_examples']} more examples would likely add "
                f"{100 * ext['gain']:+.1f} points (90% interval {100 * ext['gain_low']:+.1f} to "
                f"{100 * ext['gain_high']:+.1f}; log-linear fit, bootstrap over held-out examples).</p>" if ext else "")
    curve_html = (f'<h3>Learning curve</h3><table id="learning-curve"><tr><th>examples</th><th>steps</th>'
                  f"<th>{esc(advice['metric'])}</th></tr>{points}</table>{ext_line}" if points else "")
    return (f'<h2>Before training: the advice</h2><p class="verdict" id="advice">{esc(advice["summary"])}</p>'
            f"<p>Held out {advice['n_held_out']} of {advice['n_examples']} training examples (seed {advice['seed']}), "
            f"target {_fmt(advice['target'], 'pct')} {esc(advice['metric'])}.</p><table><tr><th>base prompt</th>"
            f"<th>{esc(advice['metric'])}</th><th>prompt tokens</th></tr>{rows}</table>{curve_html}")


CONSISTENCY_ROWS = (
    ("agreement across samples", "sample_agreement", "pct"),
    ("distinct answers per input", "distinct_answers", ""),
    ("exact match over samples", "sample_exact_match", "pct"),
    ("format valid over samples", "format_valid_sampled", "pct"),
    ("style check over samples", "style_pass_sampled", "pct"),
    ("mean answer tokens", "answer_tokens_mean", ""),
    ("answer-length spread (tokens, per input)", "answer_tokens_spread", ""),
)


def _consistency_html(report: dict) -> str:
    consistency = report.get("consistency")
    if not consistency:
        return ""
    models = {k: v for k, v in consistency.items() if isinstance(v, dict) and "sample_agreement" in v}
    head = "".join(f"<th>{html.escape(LABELS.get(n, n))}</th>" for n in models)
    rows = [(label, [v.get(key) for v in models.values()], kind) for label, key, kind in CONSISTENCY_ROWS]
    rows += [(f"under paraphrase: {label}", [(v.get("paraphrase") or {}).get(key) for v in models.values()], "pct")
             for label, key in (("answer unchanged", "agreement"), ("exact match", "exact_match"),
                                ("format valid", "format_valid"), ("style check", "style_pass"))]
    body = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(x, kind)}</td>" for x in values) + "</tr>"
                   for label, values, kind in rows if any(x is not None for x in values))
    first = next(iter(models.values()))
    style = f", style: <code>{html.escape(first['style'])}</code>" if first.get("style") else ""
    return (f'<h2>Consistency</h2><p>First {consistency["inputs"]} test inputs, {first["n_samples"]} samples each at '
            f"temperature {first['temperature']:g}; paraphrases: {html.escape(str(consistency['paraphrase_source']))}"
            f"{style}.</p><table id='consistency'><tr><th></th>{head}</tr>{body}</table>")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(report: dict, images: dict[str, Path]) -> str:
    esc = html.escape
    rows = [
        ("exact match", "exact_match", "pct"),
        ("JSON match", "json_match", "pct"),
        ("format valid", "format_valid", "pct"),
        ("mean prompt tokens", "mean_prompt_tokens", ""),
        ("mean answer tokens", "mean_completion_tokens", ""),
        ("latency p50 (s, 1 request)", "latency_p50_s", ""),
        ("latency p95 (s, 1 request)", "latency_p95_s", ""),
        ("batch latency p50 (s)", "batch_latency_p50_s", ""),
        ("batch latency p95 (s)", "batch_latency_p95_s", ""),
        ("batch wall time per answer (s)", "batch_seconds_per_answer", ""),
        ("generated tokens/s (batched)", "generated_tokens_per_second", ""),
    ]
    variants = report["variants"]
    head = "".join(f"<th>{esc(LABELS.get(n, n))}</th>" for n in variants)
    body = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(v.get(key), kind)}</td>" for v in variants.values()) + "</tr>"
        for label, key, kind in rows
        if any(v.get(key) is not None for v in variants.values())
    )
    figures = "".join(
        f'<figure><img alt="{esc(name)}" src="{_data_uri(path)}"><figcaption>{esc(name)}</figcaption></figure>'
        for name, path in images.items()
    )
    forgetting = report.get("forgetting") or {}
    forgetting_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{_fmt(forgetting.get(k))}</td></tr>"
        for k in (
            "base_perplexity",
            "tuned_perplexity",
            "perplexity_change_pct",
            "mean_kl",
            "answer_agreement",
            "n_checked_questions",
            "base_general_correct",
            "tuned_general_correct",
            "general_drop_points",
            "n_tokens",
            "max_forgetting_pct",
            "max_general_drop_points",
            "passed",
        )
        if k in forgetting
    )
    forgetting_details = _categories_table(forgetting) + _instructions_html(forgetting) + _guard_html(report)
    corpus = forgetting.get("corpus", {})
    examples = variants["fine_tuned"]["examples"][:10] if variants else []
    example_rows = "".join(
        "<tr>"
        + "".join(f"<td><code>{esc(str(v)[:160])}</code></td>" for v in (e["prompt"], e["reference"], e["prediction"]))
        + "</tr>"
        for e in examples
    )

    def mark(entry, key):
        return "" if key not in entry else (" ✓" if entry[key] else " ✗")

    general_rows = "".join(
        f"<tr><td>{esc(a.get('category', ''))}</td><td>{esc(a['question'])}</td>"
        f"<td><code>{esc(a['base'][:120])}</code>{mark(a, 'base_correct')}</td>"
        f"<td><code>{esc(a['fine_tuned'][:120])}</code>{mark(a, 'fine_tuned_correct')}</td></tr>"
        for a in forgetting.get("answers") or []
    )
    general = (
        '<h2>General questions: base vs fine-tuned</h2><table class="examples"><tr><th>category</th><th>question</th>'
        f"<th>base</th><th>fine-tuned</th></tr>{general_rows}</table><p>✓/✗: an accepted answer appears (questions "
        "with a checkable answer only).</p>"
        if general_rows
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneforge compare report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child {{ text-align: left; }} .verdict {{ font-size: 1.15em; background: #f3f7ff; padding: 0.8em; border-left: 4px solid #5b8def; }}
td.worse {{ color: #d33; }} img {{ max-width: 100%; }} table.examples td {{ text-align: left; }} figure {{ margin: 1em 0; }} code {{ font-size: 0.85em; }}
</style></head><body>
<h1>Zero-shot vs few-shot vs fine-tuned</h1>
<p class="verdict" id="verdict">{esc(report["verdict"])}</p>
{_advice_html(report)}
{_task_html(report, head, body)}
{_consistency_html(report)}
<h2>Forgetting</h2><p>General text: <code>{esc(corpus.get("name", "–"))}</code> (Python {esc(corpus.get("python", "–"))},
sha256 {esc(corpus.get("sha256", "–")[:16])}…).</p><table>{forgetting_rows}</table>
{forgetting_details}
<h2>Plots</h2>{figures}
<h2>Fine-tuned answers (first 10)</h2><table class="examples"><tr><th>prompt</th><th>reference</th><th>prediction</th></tr>{example_rows}</table>
{general}
</body></html>
"""


def _task_html(report: dict, head: str, body: str) -> str:
    """The test set and the task table; without a test set (a job with no validation file), a line saying so."""
    esc = html.escape
    status = {True: "passed", False: "FAILED", None: "not gated"}[report.get("passed")]
    if not report["variants"]:
        return (f"<p>No test set: the task was not measured, only forgetting. Adapter <code>{esc(report['adapter'])}"
                f"</code>, base <code>{esc(report['base_model'])}</code>. Forgetting gate: <b>{status}</b>.</p>")
    return f"""<p>Test set <code>{esc(report["data"])}</code> ({report["n"]} examples), adapter <code>{esc(report["adapter"])}</code>,
base <code>{esc(report["base_model"])}</code>, {report["shots"]} shots. Forgetting gate: <b>{status}</b>.</p>
<h2>Task results</h2><table><tr><th></th>{head}</tr>{body}</table>
<p>Latency: "1 request" is the wall time of answering one prompt alone (batch size 1) over the first
few test prompts; "batch latency" is the wall time of the batch an answer was generated in (when it
becomes available); "batch wall time per answer" is total batched time divided by the number of answers.</p>"""


def _points(base: float, tuned: float) -> str:
    return f"{100 * (tuned - base):+.1f}"


def _categories_table(forgetting: dict) -> str:
    """Per category: questions, base and fine-tuned correct, and the change in points (red when it fell)."""
    categories = forgetting.get("categories") or {}
    if not categories:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{c['n']}</td><td>{_fmt(c['base_correct'], 'pct')}</td>"
        f"<td>{_fmt(c['tuned_correct'], 'pct')}</td>"
        f"<td{WORSE if c['tuned_correct'] < c['base_correct'] else ''}>{_points(c['base_correct'], c['tuned_correct'])}"
        "</td></tr>"
        for name, c in categories.items()
    )
    total = (
        f"<tr><th>all</th><th>{forgetting['n_checked_questions']}</th>"
        f"<th>{_fmt(forgetting['base_general_correct'], 'pct')}</th>"
        f"<th>{_fmt(forgetting['tuned_general_correct'], 'pct')}</th>"
        f"<th>{0.0 - forgetting['general_drop_points']:+.1f}</th></tr>"
        if "general_drop_points" in forgetting
        else ""
    )
    return (
        '<h3>General questions by category</h3><table id="categories"><tr><th>category</th><th>questions</th>'
        f"<th>base correct</th><th>fine-tuned correct</th><th>change (points)</th></tr>{rows}{total}</table>"
    )


def _instructions_html(forgetting: dict) -> str:
    """The instruction-following line (IFEval strict, prompt level) and its per-instruction table."""
    following = forgetting.get("instruction_following")
    if not following:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{c['n']}</td><td>{_fmt(c['base_strict'], 'pct')}</td>"
        f"<td>{_fmt(c['tuned_strict'], 'pct')}</td><td>{_points(c['base_strict'], c['tuned_strict'])}</td></tr>"
        for name, c in (following.get("by_instruction") or {}).items()
    )
    return (
        f'<p id="instruction-following"><b>Instruction following</b> (IFEval strict checkers, {following["n"]} '
        f"prompts; a prompt counts when all its constraints hold): base {_fmt(following['base_strict'], 'pct')} → "
        f"fine-tuned {_fmt(following['tuned_strict'], 'pct')}.</p>"
        + (
            "<details><summary>by instruction</summary><table><tr><th>instruction</th><th>prompts</th><th>base</th>"
            f"<th>fine-tuned</th><th>change (points)</th></tr>{rows}</table></details>"
            if rows
            else ""
        )
    )


def _guard_html(report: dict) -> str:
    from tuneforge.evaluate.compare import guard_label

    guard = report.get("forgetting_guard")
    label = guard_label(guard)
    if not label:
        return ""
    details = ", ".join(
        f"{html.escape(str(k))} {html.escape(str(v))}"
        for k, v in guard.items()
        if k not in ("method", "seconds") and isinstance(v, (str, int, float)) and not isinstance(v, bool)
    )
    details = f" ({details})" if details else ""
    return f'<p id="forgetting-guard">During training: {html.escape(label)}{details}.</p>'


def write_report(report: dict, output: str | Path) -> dict[str, Path]:
    """Write report.json, the PNG plots and report.html into `output`; returns the paths written."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    loss = plot_loss_curves(report.get("training") or {}, output / "loss_curves.png")
    if loss:
        images["training and validation loss"] = loss
    if (report.get("advice") or {}).get("learning_curve"):
        images["learning curve"] = plot_learning_curve(report["advice"], output / "learning_curve.png")
    if report["variants"]:
        images["variants"] = plot_variants(report["variants"], output / "variants.png")
    if report.get("forgetting"):
        images["forgetting"] = plot_forgetting(report["forgetting"], output / "forgetting.png")
    report["plots"] = [p.name for p in images.values()]
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.html").write_text(render_html(report, images))
    return {"json": output / "report.json", "html": output / "report.html", **{p.stem: p for p in images.values()}}
