"""The compare report in headless Chromium, offline: every plot image loads, the verdict shows; a screenshot is saved.

Needs Debian's `chromium` and `chromium-driver` packages, selenium and matplotlib. Set TUNEFORGE_SCREENSHOT_DIR
to keep the screenshot for a look.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser import headless_chromium

pytestmark = pytest.mark.e2e


def variant(exact: float, prompt_tokens: float, latency: float) -> dict:
    return {
        "n": 3,
        "exact_match": exact,
        "json_valid": min(1.0, exact + 0.2),
        "json_match": exact,
        "format_valid": min(1.0, exact + 0.2),
        "format": "json parses (object or array)",
        "mean_prompt_tokens": prompt_tokens,
        "mean_completion_tokens": 20.0,
        "batch_size": 16,
        "seconds": 3 * latency,
        "batch_seconds_per_answer": latency / 4,
        "batch_latency_p50_s": latency * 2,
        "batch_latency_p95_s": latency * 2.5,
        "latency_samples": 3,
        "latency_p50_s": latency,
        "latency_p95_s": latency * 1.2,
        "generated_tokens_per_second": 20 / latency,
        "examples": [{"prompt": "Where is <my> order A1?", "reference": '{"a": 1}', "prediction": '{"a": 1}'}] * 3,
    }


def sample_report() -> dict:
    from tuneforge.evaluate.compare import verdict

    report = {
        "data": "test.jsonl",
        "adapter": "runs/demo",
        "base_model": "smollm2-135m-instruct",
        "n": 3,
        "shots": 4,
        "shots_from": "train.jsonl",
        "seed": 0,
        "variants": {
            "zero_shot": variant(0.1, 60, 1.5),
            "few_shot": variant(0.4, 300, 2.5),
            "fine_tuned": variant(0.97, 60, 1.1),
        },
        "training": {"train": [[s, 3.0 / s] for s in range(1, 51)], "valid": [[10, 0.5], [20, 0.3], [30, 0.25]]},
        "forgetting": {
            "corpus": {"name": "pydoc_data.topics[eval]", "python": "3.11", "sha256": "ab" * 32},
            "window_tokens": 128,
            "n_windows": 32,
            "n_tokens": 4064,
            "base_perplexity": 10.0,
            "tuned_perplexity": 10.18,
            "perplexity_change_pct": 1.8,
            "mean_kl": 0.02,
            "n_questions": 20,
            "answer_agreement": 0.85,
            "max_forgetting_pct": 5.0,
            "passed": True,
        },
        "passed": True,
    }
    report["verdict"] = verdict(report)
    return report


@pytest.fixture
def browser():
    yield from headless_chromium("1200,2600")


def test_report_plots_load_in_a_browser(browser, tmp_path):
    pytest.importorskip("matplotlib")
    from selenium.webdriver.common.by import By

    from tuneforge.evaluate.report import write_report

    paths = write_report(sample_report(), tmp_path / "report")
    # Only report.html travels: the page must not need the PNG files next to it.
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(paths["html"], alone)
    browser.get(alone.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert [alt for alt, *_ in images] == ["training and validation loss", "variants", "forgetting"]
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert browser.find_element(By.ID, "verdict").text.startswith("fine-tuned: 97% exact vs 40% few-shot")
    assert "&lt;my&gt;" in browser.page_source or "<my>" in browser.find_element(By.TAG_NAME, "body").text
    shot = Path(os.environ.get("TUNEFORGE_SCREENSHOT_DIR", tmp_path)) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
