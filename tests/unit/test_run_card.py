"""The run card: written beside a real (tiny) training run by compare, with data hashes, the advice, the
learning curve, compare/consistency figures and commands that reproduce the run."""

from __future__ import annotations

import hashlib
import json
import shlex

from tests.conftest import write_jsonl
from tests.unit.test_compare import ticket_rows


def test_run_card_beside_a_trained_adapter(tmp_path, tiny_model_dir):
    from tuneforge.cli import main
    from tuneforge.config import build_config, parse_overrides
    from tuneforge.evaluate.run_card import train_command
    from tuneforge.recipes.sft import train

    data = write_jsonl(tmp_path / "train.jsonl", ticket_rows(12))
    test = write_jsonl(tmp_path / "test.jsonl", ticket_rows(3, offset=4))
    run = tmp_path / "run"
    config = build_config({"data": str(data), "output": str(run), "model": str(tiny_model_dir), "max_steps": 2,
                           "batch_size": 4, "forgetting_guard": "off", "lora_r": 4})
    train(config)
    advice = {"summary": "fine-tune: base zero-shot 0% exact match vs target 90%", "decision": "fine-tune",
              "metric": "exact_match", "target": 0.9, "best_prompting": "zero_shot", "expected_gain": 0.5,
              "prompting": {"zero_shot": {"metric": 0.0, "mean_prompt_tokens": 12.0}},
              "learning_curve": {"points": [{"examples": 4, "steps": 1, "metric": 0.25},
                                            {"examples": 8, "steps": 2, "metric": 0.5}],
                                 "extrapolation": {"from_examples": 8, "to_examples": 16, "gain": 0.25,
                                                   "gain_low": 0.1, "gain_high": 0.4}},
              "command": ["tuneforge", "advise", str(data), "--learning-curve"], "n_held_out": 2, "n_examples": 12,
              "seed": 0}
    (run / "advice.json").write_text(json.dumps(advice))
    assert main(["compare", "--data", str(test), "--adapter", str(run), "--max-new-tokens", "4", "--latency-samples",
                 "1", "--no-forgetting", "--consistency", "2", "--paraphrases", "1"]) == 0

    card = json.loads((run / "run_card.json").read_text())
    assert card["data"]["train"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert card["data"]["train"]["examples"] == 12 and card["data"]["train"]["format"] == "chat"
    assert card["data"]["test"]["examples"] == 3
    assert card["base_model"] == str(tiny_model_dir) and card["training"]["steps"] == 2
    assert card["advice"]["decision"] == "fine-tune" and len(card["learning_curve"]["points"]) == 2
    assert set(card["compare"]["variants"]) == {"zero_shot", "fine_tuned"}
    assert card["consistency"]["fine_tuned"]["n_samples"] == 2 and "examples" not in card["consistency"]["fine_tuned"]
    advise_line, train_line, compare_line = card["reproduce"]
    assert advise_line.startswith("tuneforge advise") and compare_line.startswith("tuneforge compare")
    # The train line rebuilds exactly the run's config.
    rebuilt = build_config(parse_overrides(shlex.split(train_line)[2:]))
    assert rebuilt.to_dict() == json.loads((run / "train_config.json").read_text())
    assert train_command(config.to_dict()) == shlex.split(train_line)
    page = (run / "run_card.md").read_text()
    for heading in ("## Data", "## Training", "## Before training: the advice", "## Learning curve", "## Compare",
                    "## Consistency", "## Reproduce"):
        assert heading in page, heading
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["advice"]["decision"] == "fine-tune"
    assert "learning_curve.png" in report["plots"]


def test_no_run_card_outside_a_run(tmp_path):
    from tuneforge.evaluate.run_card import write_run_card

    assert write_run_card(tmp_path) is None and not list(tmp_path.iterdir())


def test_compare_consistency_is_added_to_the_runs_summary(tmp_path):
    from tuneforge.evaluate.run_card import record_consistency

    summary = {"status": "completed", "steps": 12, "final_train_loss": 0.25}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    figures = {"fine_tuned": {"sample_agreement": 1.0, "paraphrase_agreement": 0.75}}

    assert record_consistency(tmp_path, {"consistency": figures}) is True
    assert json.loads((tmp_path / "summary.json").read_text()) == {**summary, "consistency": figures}
    # A compare without consistency, or a folder with no summary.json, writes nothing.
    assert record_consistency(tmp_path, {"consistency": None}) is False
    assert json.loads((tmp_path / "summary.json").read_text())["consistency"] == figures
    assert record_consistency(tmp_path / "elsewhere", {"consistency": figures}) is False
    assert not (tmp_path / "elsewhere").exists()
