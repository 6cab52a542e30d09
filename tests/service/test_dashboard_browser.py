"""The dashboard in headless Chromium: the jobs list loads, a job page draws its loss curve, a screenshot is saved.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` Python package.
"""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest
from conftest import chat_rows, wait_for, write_jsonl

from tests.browser import headless_chromium

pytestmark = pytest.mark.service


@pytest.fixture
def browser():
    yield from headless_chromium("1200,1400")


def test_dashboard_shows_jobs_and_draws_the_loss_curve(browser, start_server, tmp_path):
    from selenium.webdriver.common.by import By

    server = start_server()
    key = server.create_key("acme")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows()).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id, suffix="ui")
    wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "succeeded")

    browser.get(f"{server.url}/?key={key}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#jobs a[href="#job={job.id}"]'), timeout=15)
    assert "succeeded" in browser.find_element(By.ID, "jobs").text

    browser.find_element(By.CSS_SELECTOR, f'#jobs a[href="#job={job.id}"]').click()
    curve = wait_for(lambda: browser.find_elements(By.ID, "train-loss"), timeout=15)[0]
    path = curve.get_attribute("d")
    assert path.startswith("M") and path.count("L") == 5  # six training steps, joined
    assert browser.find_element(By.ID, "valid-loss").get_attribute("d").count("L") == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#checkpoints tr")) == 4  # header + 3 checkpoints
    assert "The job has successfully completed" in browser.find_element(By.ID, "events").text
    assert "exact match" in browser.find_element(By.ID, "report").text
    assert browser.execute_script("return document.getElementById('loss-curve').getBBox().width") > 300

    shot = Path(os.environ.get("TUNEFORGE_SCREENSHOT_DIR", tmp_path)) / "dashboard-job.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_dashboard_without_key_asks_for_one(browser, start_server):
    from selenium.webdriver.common.by import By

    server = start_server(workers=0)
    browser.get(server.url + "/")
    wait_for(lambda: "Paste an API key" in browser.find_element(By.ID, "app").text, timeout=15)
    browser.execute_script("localStorage.setItem('tuneforge-key', 'wrong')")
    browser.get(server.url + "/")
    wait_for(lambda: browser.find_elements(By.ID, "load-error"), timeout=15)
    assert "Incorrect API key" in browser.find_element(By.ID, "load-error").text
