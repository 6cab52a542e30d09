"""tuneforge compare on the tiny random Llama: few-shot prompts, format checks, the report and the CLI."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tuneforge.evaluate.compare import format_checker, percentile, select_shots, verdict, with_shots


def ticket_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "you are helpful"},
                {"role": "user", "content": f"what is {'abcdefghij'[(i + offset) % 10]}"},
                {"role": "assistant", "content": '{ "name" : "' + "abcdefghij"[(i + offset + 1) % 10] + '" }'},
            ]
        }
        for i in range(n)
    ]


def test_with_shots_goes_after_system_messages_exactly():
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    shots = [("u1", "a1"), ("u2", "a2")]
    assert with_shots(prompt, shots) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "Q"},
    ]
    no_system = [{"role": "user", "content": "Q"}]
    assert with_shots(no_system, shots[:1]) == [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "Q"},
    ]
    assert with_shots(prompt, []) == prompt


def test_select_shots_is_deterministic_by_seed(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ticket_rows(10))
    first = select_shots(path, 3, seed=1)
    assert first == select_shots(path, 3, seed=1)
    assert len(set(first)) == 3
    assert all(user.startswith("what is ") for user, _ in first)  # the user turn, never the system message
    assert select_shots(path, 10, seed=2) != select_shots(path, 10, seed=3)  # same pairs, another order


def test_format_checkers(tmp_path):
    name, valid = format_checker(['{"a": 1}'])
    assert name.startswith("json") and valid('{"b": 2}') and not valid("nope")
    assert format_checker(["plain"]) is None
    _, regex = format_checker(["x"], format_regex=r"[a-z]+")
    assert regex(" abc ") and not regex("abc1")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    _, by_schema = format_checker(["x"], json_schema=str(schema))
    assert by_schema('{"name": "x"}') and not by_schema('{"other": 1}') and not by_schema("{")


def test_percentile_matches_numpy():
    import numpy as np

    values = [0.3, 0.1, 0.9, 0.4, 0.5]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_verdict_line():
    report = {
        "variants": {
            "zero_shot": {
                "exact_match": 0.1,
                "mean_prompt_tokens": 30.0,
                "latency_p50_s": 1.0,
                "batch_seconds_per_answer": 0.2,
            },
            "few_shot": {
                "exact_match": 0.4,
                "mean_prompt_tokens": 183.0,
                "latency_p50_s": 2.3,
                "batch_seconds_per_answer": 0.5,
            },
            "fine_tuned": {
                "exact_match": 0.97,
                "mean_prompt_tokens": 30.0,
                "latency_p50_s": 1.0,
                "batch_seconds_per_answer": 0.2,
            },
        },
        "forgetting": {
            "perplexity_change_pct": 1.8,
            "answer_agreement": 0.85,
            "max_forgetting_pct": 5.0,
            "passed": True,
        },
    }
    line = verdict(report)
    assert line.startswith("fine-tuned: 97% exact vs 40% few-shot (10% zero-shot)")
    assert "prompts 6.1x shorter" in line and "2.3x faster per answer" in line
    assert "forgetting +1.8% perplexity" in line and "within 5% gate" in line


@pytest.fixture
def tiny_compare(tmp_path, tiny_model_dir):
    """A compare run where the 'fine-tuned' model is the base itself (a full-model dir as --adapter)."""
    from tuneforge.evaluate.compare import compare

    test = write_jsonl(tmp_path / "test.jsonl", ticket_rows(4, offset=3))
    train = write_jsonl(tmp_path / "train.jsonl", ticket_rows(6))
    (tiny_model_dir / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"type": "train", "step": 1, "loss": 3.0},
                {"type": "train", "step": 2, "loss": 2.0},
                {"type": "valid", "step": 2, "valid_loss": 2.5},
                {"type": "checkpoint", "step": 2},
            ]
        )
        + "\n"
    )
    report = compare(
        str(test),
        str(tiny_model_dir),
        model=str(tiny_model_dir),
        shots=2,
        shots_from=str(train),
        max_new_tokens=8,
        latency_samples=2,
        forgetting_windows=4,
        window_tokens=16,
        max_forgetting=5.0,
        batch_size=3,
    )
    return report


def test_compare_report_has_every_key(tiny_compare, tmp_path):
    from tuneforge.evaluate.report import write_report

    report = tiny_compare
    assert set(report["variants"]) == {"zero_shot", "few_shot", "fine_tuned"}
    for result in report["variants"].values():
        for key in (
            "exact_match",
            "json_valid",
            "format_valid",
            "mean_prompt_tokens",
            "latency_p50_s",
            "latency_p95_s",
            "batch_latency_p50_s",
            "batch_latency_p95_s",
            "batch_seconds_per_answer",
            "generated_tokens_per_second",
            "examples",
        ):
            assert key in result, key
        assert result["n"] == 4 and result["latency_samples"] == 2
    # Two user/assistant shots make every few-shot prompt longer than the zero-shot one.
    assert report["variants"]["few_shot"]["mean_prompt_tokens"] > report["variants"]["zero_shot"]["mean_prompt_tokens"]
    # Same weights, same prompts, greedy: identical answers.
    zero = [e["prediction"] for e in report["variants"]["zero_shot"]["examples"]]
    assert zero == [e["prediction"] for e in report["variants"]["fine_tuned"]["examples"]]
    assert report["training"] == {"train": [[1, 3.0], [2, 2.0]], "valid": [[2, 2.5]]}
    forgetting = report["forgetting"]
    assert forgetting["perplexity_change_pct"] == pytest.approx(0.0, abs=1e-6)
    assert forgetting["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    assert forgetting["answer_agreement"] == 1.0 and forgetting["passed"] is True and report["passed"] is True
    assert report["verdict"].startswith("fine-tuned: ")

    paths = write_report(report, tmp_path / "report")
    saved = json.loads(paths["json"].read_text())
    for key in (
        "data",
        "adapter",
        "base_model",
        "n",
        "shots",
        "variants",
        "training",
        "forgetting",
        "passed",
        "verdict",
        "plots",
    ):
        assert key in saved, key
    assert saved["plots"] == ["loss_curves.png", "variants.png", "forgetting.png"]
    for name in saved["plots"]:
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3


def test_compare_cli_writes_report_and_gates(tmp_path, tiny_model_dir, capsys):
    from tuneforge.cli import main

    test = write_jsonl(tmp_path / "test.jsonl", ticket_rows(2))
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            "--data",
            str(test),
            "--adapter",
            str(tiny_model_dir),
            "--model",
            str(tiny_model_dir),
            "--output",
            str(out),
            "--max-new-tokens",
            "4",
            "--latency-samples",
            "1",
            "--forgetting-windows",
            "2",
            "--window-tokens",
            "8",
            "--max-forgetting",
            "1",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("fine-tuned: ")
    assert (out / "report.html").is_file() and (out / "variants.png").is_file()
    report = json.loads((out / "report.json").read_text())
    assert "few_shot" not in report["variants"] and report["forgetting"]["passed"] is True


def test_compare_cli_usage_errors(tmp_path, tiny_model_dir, capsys):
    from tuneforge.cli import main

    test = write_jsonl(tmp_path / "test.jsonl", ticket_rows(2))
    assert main(["compare", "--data", str(test), "--adapter", str(tmp_path / "missing")]) == 2
    assert main(["compare", "--data", str(test), "--adapter", str(tiny_model_dir), "--shots", "2"]) == 2
    assert "--shots-from" in capsys.readouterr().err
