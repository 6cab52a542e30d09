"""A run card beside each fine-tune:  RUN/run_card.md and RUN/run_card.json

    tuneforge compare --data test.jsonl --adapter RUN      # writes RUN/report/ and the run card

The card is built from what the run folder holds: train_config.json and summary.json (written by every
training), advice.json (`tuneforge advise --output RUN`), and the comparison's report (report/report.json,
or the one just made). It says what was trained on (data format, counts, sha256), from which base, with
which settings; what the advice said before training and the learning curve; what the comparison, the
consistency and the forgetting measurements found; and the exact commands that reproduce it. The service
stores both files with a job's results; a model registry would show the Markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections import Counter
from pathlib import Path

from tuneforge.config import TrainConfig

TRAINING_FIGURES = ("status", "steps", "epochs", "trained_tokens", "train_seconds", "tokens_per_second",
                    "final_train_loss", "final_valid_loss", "n_examples", "n_validation_examples", "device", "dtype",
                    "peak_rss_mb", "n_trainable_parameters", "finished_at")
VARIANT_FIGURES = ("n", "exact_match", "json_valid", "json_match", "format_valid", "mean_prompt_tokens",
                   "latency_p50_s", "batch_seconds_per_answer")
FORGETTING_FIGURES = ("perplexity_change_pct", "mean_kl", "answer_agreement", "base_general_correct",
                      "tuned_general_correct", "general_drop_points", "max_forgetting_pct", "max_general_drop_points",
                      "passed")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def file_sha256(path: str | Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def data_facts(path: str | None) -> dict | None:
    """Path, sha256, bytes, row format(s) and number of examples of a data file (None when there is none)."""
    if not path:
        return None
    from tuneforge.data.formats import detect_format
    from tuneforge.data.readers import open_rows

    facts = {"path": str(path), "sha256": file_sha256(path)}
    if facts["sha256"] is None:
        return facts | {"missing": True}
    facts["bytes"] = Path(path).stat().st_size
    formats, rows = Counter(), 0
    try:
        for line, row, problem, _ in open_rows(path).rows:
            if line and not problem:
                rows += 1
                formats[detect_format(row) or "unknown"] += 1
    except Exception:  # noqa: BLE001 - the card describes the file; an unreadable one is said, not raised
        facts["readable"] = False
    facts["examples"] = rows
    facts["format"] = next(iter(formats)) if len(formats) == 1 else dict(formats) or None
    return facts


def train_command(config: dict) -> list[str]:
    """`tuneforge train` with every setting that differs from its default, as key=value."""
    defaults = TrainConfig().to_dict()
    command = ["tuneforge", "train"]
    for key, value in config.items():
        if key in defaults and value != defaults[key] and value is not None:
            if isinstance(value, (list, dict)):
                value = ",".join(value) if isinstance(value, list) else ",".join(f"{k}:{v}" for k, v in value.items())
            command.append(f"{key}={value}")
    return command


def build_card(run_dir: str | Path, report: dict | None = None) -> dict:
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "train_config.json") or {}
    summary = _read_json(run_dir / "summary.json") or {}
    advice = _read_json(run_dir / "advice.json")
    report = report or _read_json(run_dir / "report" / "report.json")
    card = {
        "run": str(run_dir),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": config.get("model") or (report or {}).get("base_model"),
        "method": config.get("method"),
        "adapter_files": sorted(p.name for p in run_dir.glob("*.safetensors")) + sorted(
            p.name for p in run_dir.glob("adapter_config.json")),
        "data": {"train": data_facts(config.get("data")), "validation": data_facts(config.get("validation_data")),
                 "test": data_facts(report.get("data")) if report else None},
        "config": config,
        "training": {k: summary[k] for k in TRAINING_FIGURES if summary.get(k) is not None},
        "advice": None,
        "learning_curve": None,
        "compare": None,
        "consistency": None,
        "forgetting": None,
        "reproduce": [],
    }
    if config:
        card["reproduce"].append(shlex.join(train_command(config)))
    if advice:
        card["advice"] = {k: advice.get(k) for k in ("summary", "decision", "metric", "target", "best_prompting",
                                                      "expected_gain", "savings", "break_even", "assumptions")}
        card["advice"]["prompting"] = {name: {k: v.get(k) for k in ("metric", "mean_prompt_tokens", "latency_p50_s",
                                                                    "format_valid")}
                                       for name, v in (advice.get("prompting") or {}).items()}
        card["advice"]["cost"] = {k: (advice.get("cost") or {}).get(k) for k in (
            "device", "train_seconds", "train_seconds_if_idle", "peak_memory_mb", "epochs")}
        card["learning_curve"] = advice.get("learning_curve")
        if advice.get("command"):
            card["reproduce"].insert(0, shlex.join(advice["command"]))
    if report:
        card["compare"] = {"n": report.get("n"), "shots": report.get("shots"), "verdict": report.get("verdict"),
                           "variants": {name: {k: v.get(k) for k in VARIANT_FIGURES if v.get(k) is not None}
                                        for name, v in (report.get("variants") or {}).items()}}
        consistency = report.get("consistency")
        if consistency:
            card["consistency"] = {
                name: ({k: v for k, v in value.items() if k != "examples"} | (
                    {"paraphrase": {k: x for k, x in value["paraphrase"].items() if k != "examples"}}
                    if value.get("paraphrase") else {})) if isinstance(value, dict) else value
                for name, value in consistency.items()}
        forgetting = report.get("forgetting")
        if forgetting:
            card["forgetting"] = {k: forgetting[k] for k in FORGETTING_FIGURES if k in forgetting}
        if report.get("command"):
            card["reproduce"].append(shlex.join(report["command"]))
    return card


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def render_markdown(card: dict) -> str:
    lines = [f"# Run card: {card['run']}", "", f"Written {card['written_at']}. Base model `{card['base_model']}`, "
             f"method `{card['method']}`.", "", "## Data", ""]
    for role, facts in card["data"].items():
        if facts:
            lines.append(f"- {role}: `{facts['path']}` — {facts.get('examples', '?')} examples, format "
                         f"{facts.get('format')}, {facts.get('bytes', '?')} bytes, sha256 `{facts.get('sha256')}`")
    lines += ["", "## Training", ""]
    changed = train_command(card["config"])[2:] if card["config"] else []
    lines.append("Settings that differ from the defaults: " + (", ".join(f"`{c}`" for c in changed) or "none"))
    lines += [f"- {k}: {v}" for k, v in card["training"].items()]
    advice = card.get("advice")
    if advice:
        lines += ["", "## Before training: the advice", "", f"**{advice['summary']}**", ""]
        lines += [f"- base {name.replace('_', '-')}: {advice['metric']} {_pct(v['metric'])}, "
                  f"{v['mean_prompt_tokens']} prompt tokens" for name, v in advice["prompting"].items()]
        even = advice.get("break_even") or {}
        if even:
            lines.append(f"- break-even: {even.get('requests')} requests (by machine time alone: "
                         f"{even.get('requests_by_time')})")
        lines += [f"- assumption: {a}" for a in advice.get("assumptions") or []]
    curve = card.get("learning_curve")
    if curve:
        lines += ["", "## Learning curve", "", "| examples | steps | metric |", "|---|---|---|"]
        lines += [f"| {p['examples']} | {p['steps']} | {_pct(p['metric'])} |" for p in curve["points"]]
        ext = curve.get("extrapolation")
        if ext:
            lines += ["", f"{ext['to_examples'] - ext['from_examples']} more examples would likely add "
                      f"{100 * ext['gain']:+.1f} points (90% interval {100 * ext['gain_low']:+.1f} to "
                      f"{100 * ext['gain_high']:+.1f})."]
    compare = card.get("compare")
    if compare:
        lines += ["", "## Compare", "", f"**{compare['verdict']}**", "", "| | " + " | ".join(compare["variants"]) + " |",
                  "|---" * (len(compare["variants"]) + 1) + "|"]
        for key in VARIANT_FIGURES[1:]:
            values = [v.get(key) for v in compare["variants"].values()]
            if any(x is not None for x in values):
                lines.append(f"| {key} | " + " | ".join("–" if x is None else f"{x:g}" for x in values) + " |")
    consistency = card.get("consistency")
    if consistency:
        lines += ["", "## Consistency", ""]
        for name, value in consistency.items():
            if isinstance(value, dict):
                para = value.get("paraphrase") or {}
                lines.append(f"- {name}: sample agreement {_pct(value['sample_agreement'])}, exact over samples "
                             f"{_pct(value.get('sample_exact_match'))}, format valid sampled "
                             f"{_pct(value.get('format_valid_sampled'))}, style {_pct(value.get('style_pass_sampled'))}, "
                             f"answer-length spread {value['answer_tokens_spread']} tokens, unchanged under "
                             f"paraphrase {_pct(para.get('agreement'))}")
    if card.get("forgetting"):
        lines += ["", "## Forgetting", ""] + [f"- {k}: {v}" for k, v in card["forgetting"].items()]
    lines += ["", "## Reproduce", "", "```"] + card["reproduce"] + ["```", ""]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def record_consistency(run_dir: str | Path, report: dict) -> bool:
    """Add a compare's consistency figures to the run's summary.json as `consistency` (the other keys kept),
    where the run has a summary.json and the compare measured consistency; True when written."""
    path = Path(run_dir) / "summary.json"
    # A missing or unreadable summary is not ours to repair: the report and the run card still carry the figures.
    summary = _read_json(path) if report.get("consistency") else None
    if summary is None:
        return False
    summary["consistency"] = report["consistency"]
    _write_atomic(path, json.dumps(summary, indent=2) + "\n")
    return True


def write_run_card(run_dir: str | Path, report: dict | None = None) -> dict[str, Path] | None:
    """run_card.json and run_card.md in `run_dir`; None (nothing written) when it is not a training run."""
    run_dir = Path(run_dir)
    if not (run_dir / "train_config.json").is_file() and not (run_dir / "adapter_config.json").is_file():
        return None
    card = build_card(run_dir, report)
    _write_atomic(run_dir / "run_card.json", json.dumps(card, indent=2) + "\n")
    _write_atomic(run_dir / "run_card.md", render_markdown(card))
    return {"json": run_dir / "run_card.json", "md": run_dir / "run_card.md"}
