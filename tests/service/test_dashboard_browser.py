"""The dashboard in headless Chromium against the real service (fake trainer, validator, preview and export):
the jobs list and a job's loss curve; a file uploaded, its validation report and loss-mask preview shown
before the job is created; create, pause, resume, cancel; checkpoints and jobs compared; the adapter and an
export downloaded; the create form driven with the keyboard alone; user data never run as markup.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` Python package.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import httpx
import openai
import pytest
from conftest import chat_rows, wait_for, write_jsonl

from tests.browser import headless_chromium

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


@pytest.fixture
def browser():
    yield from headless_chromium("1200,1400")


def by_id(browser, element_id: str, timeout: float = 15):
    from selenium.webdriver.common.by import By

    try:
        return wait_for(lambda: browser.find_elements(By.ID, element_id), timeout=timeout)[0]
    except AssertionError:
        page = browser.find_element(By.ID, "app").text[:2000]
        raise AssertionError(f"no #{element_id} within {timeout}s; the page says:\n{page}") from None


def text_of(browser, element_id: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return by_id(browser, element_id).text
    except StaleElementReferenceException:  # the page redrew the element between finding and reading it
        return ""  # nothing read yet: wait_text's wait_for asks again


def wait_text(browser, element_id: str, needle: str, timeout: float = 20) -> str:
    return wait_for(lambda: needle in (t := text_of(browser, element_id)) and t, timeout=timeout)


def sdk_for(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def open_dashboard(browser, server, key, hash_=""):
    # The key travels in the fragment (never sent to the server); the page moves it to localStorage.
    browser.get(f"{server.url}/#key={key}" + ("&" + hash_[1:] if hash_ else ""))
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete")


def succeeded_job(sdk, tmp_path, name, **hyperparameters):
    training = sdk.files.create(file=write_jsonl(tmp_path / name, chat_rows()).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, suffix="ui",
                                      hyperparameters=hyperparameters or None)
    done = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled")
                    and j, timeout=90)
    assert done.status == "succeeded", done.error
    return job


def slow_rows(n: int = 12) -> list[dict]:
    """Rows that keep the fake trainer running until the job is paused or cancelled."""
    return [{"messages": [{"role": "user", "content": f"SLOW question {i}"},
                          {"role": "assistant", "content": f"answer number {i}"}]} for i in range(n)]


def test_dashboard_shows_jobs_draws_the_loss_curve_and_downloads(browser, start_server, tmp_path):
    from selenium.webdriver.common.by import By

    server = start_server()
    key = server.create_key("acme")
    job = succeeded_job(sdk_for(server, key), tmp_path, "t.jsonl")

    open_dashboard(browser, server, key)
    assert "key=" not in browser.current_url and key not in browser.current_url  # kept in localStorage only
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#jobs a[href="#job={job.id}"]'), timeout=15)
    assert "succeeded" in browser.find_element(By.ID, "jobs").text

    browser.find_element(By.CSS_SELECTOR, f'#jobs a[href="#job={job.id}"]').click()
    curve = by_id(browser, "train-loss")
    path = curve.get_attribute("d")
    assert path.startswith("M") and path.count("L") == 5  # six training steps, joined
    assert browser.find_element(By.ID, "valid-loss").get_attribute("d").count("L") == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#checkpoints tbody tr")) == 3
    assert "The job has successfully completed" in browser.find_element(By.ID, "events").text
    # The report as the API serves it: text as text, an HTML page in a frame that may not run scripts.
    report_file = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job.id}", headers={"Authorization": f"Bearer {key}"})
    content = httpx.get(f"{server.url}/v1/files/{report_file.json()['report_file']}/content",
                        headers={"Authorization": f"Bearer {key}"}).text
    report = by_id(browser, "report")
    if report.tag_name == "iframe":
        assert report.get_attribute("sandbox") == "" and report.get_attribute("srcdoc") == content
    else:
        assert report.text.strip() == content.strip()
    assert browser.execute_script("return document.getElementById('loss-curve').getBBox().width") > 300

    # The adapter and an export arrive as downloads, fetched with the key in a header.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    by_id(browser, "download-adapter").click()
    adapter = wait_for(lambda: [p for p in downloads.glob("*-adapter.zip")], timeout=20)[0]
    wait_text(browser, "status", "Downloaded")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipfile.ZipFile(adapter).namelist())
    by_id(browser, "export-gguf").click()
    gguf = wait_for(lambda: [p for p in downloads.glob("*.gguf")], timeout=20)[0]
    wait_for(lambda: gguf.read_bytes()[:4] == b"GGUF", timeout=10)
    assert (server.data_dir / "runs" / job.id / "exports" / "model.gguf").read_bytes() == gguf.read_bytes()

    shot = Path(os.environ.get("TUNEFORGE_SCREENSHOT_DIR", tmp_path)) / "dashboard-job.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_upload_check_create_pause_resume_cancel(browser, start_server, tmp_path):
    from selenium.webdriver.common.by import By

    server = start_server()
    key = server.create_key("acme")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
    open_dashboard(browser, server, key, "#new")

    # A bad file, named like markup: its report names each bad line and its fix, and the name stays text.
    evil = "<img src=x onerror=window.__pwned=1>.jsonl"
    rows = chat_rows()
    bad = write_jsonl(tmp_path / evil, [rows[0], {"text": "no messages"}, "not json", rows[0]])
    by_id(browser, "training-upload").send_keys(str(bad))
    by_id(browser, "check-files").click()
    errors = wait_text(browser, "errors-training", "missing_field")
    assert "line 2" in errors and "line 3" in errors and "invalid_json" in errors
    assert "add it (docs/data.md lists each format's fields)" in errors  # the fix, beside the problem
    assert "line 4" in text_of(browser, "warnings-training") and "duplicate" in text_of(browser, "warnings-training")
    assert "INVALID (2 errors)" in text_of(browser, "check-training") and evil in text_of(browser, "check-training")
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#app img")
    by_id(browser, "create-job").click()  # refused before anything is sent: the report says why
    assert "2 errors" in wait_text(browser, "create-error", "errors")
    assert http.get("/v1/fine_tuning/jobs").json()["data"] == []

    # A good file: counts, and the preview marks exactly the answer and its end-of-turn as trained.
    good = write_jsonl(tmp_path / "good.jsonl", slow_rows())
    by_id(browser, "training-upload").send_keys(str(good))
    by_id(browser, "check-files").click()
    wait_text(browser, "check-training", "OK")
    assert "12 examples" in text_of(browser, "check-training")
    assert not browser.find_elements(By.ID, "errors-training")
    marked = [m.text for m in by_id(browser, "preview-0").find_elements(By.TAG_NAME, "mark")]
    assert "".join(marked).split() == ["answer", "number", "0", "<|end|>"]
    assert "SLOW" in by_id(browser, "preview-0").text  # the prompt is shown, untrained

    by_id(browser, "n-epochs").send_keys("2")
    by_id(browser, "lr-multiplier").send_keys("0.5")
    by_id(browser, "suffix").send_keys("ui")
    by_id(browser, "seed").send_keys("7")
    by_id(browser, "create-job").click()
    wait_for(lambda: browser.current_url.split("#")[-1].startswith("job="), timeout=15)
    job_id = browser.current_url.split("#job=")[-1]
    job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert (job["model"], job["user_provided_suffix"], job["seed"]) == (BASE, "ui", 7)
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    assert job["method"]["supervised"]["hyperparameters"]["learning_rate_multiplier"] == 0.5
    training_file = http.get(f"/v1/files/{job['training_file']}").json()
    assert training_file["filename"] == "good.jsonl"

    wait_text(browser, "job-status", "running", timeout=30)
    by_id(browser, "pause-job").click()
    wait_text(browser, "job-status", "paused")
    assert http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "paused"
    by_id(browser, "resume-job").click()
    wait_for(lambda: text_of(browser, "job-status") in ("queued", "running"), timeout=20)
    by_id(browser, "cancel-job").click()
    wait_text(browser, "job-status", "cancelled")
    assert http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
    assert not browser.find_elements(By.ID, "cancel-job") and not browser.find_elements(By.ID, "download-adapter")

    browser.find_element(By.LINK_TEXT, "← all jobs").click()
    assert "cancelled" in wait_text(browser, "jobs", job_id)


# The job object's `eval` and `forgetting` (filled by the job's comparison after training) are set here to
# known figures, one job with forgetting figures and one without, to show that what is present is drawn and
# what is absent is a dash.
FIGURES_STUB = """(() => {
  const figures = FIGURES_JSON;
  const realFetch = window.fetch;
  window.fetch = async (...args) => {
    const response = await realFetch(...args);
    const id = String(args[0]).replace("/v1/fine_tuning/jobs/", "");
    if (!(id in figures)) return response;
    const job = Object.assign(await response.json(), figures[id]);
    return new Response(JSON.stringify(job), {status: 200, headers: {"Content-Type": "application/json"}});
  };
})();"""


def test_compare_checkpoints_and_jobs(browser, start_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = start_server()
    key = server.create_key("acme")
    sdk = sdk_for(server, key)
    first = succeeded_job(sdk, tmp_path, "a.jsonl", n_epochs=2)
    second = succeeded_job(sdk, tmp_path, "b.jsonl", n_epochs=4)
    figures = {first.id: {"eval": {"exact_match": 0.75, "base": {"exact_match": 0.25}},
                          "forgetting": {"general_drop": 1.5, "passed": True}},
               second.id: {"eval": {"exact_match": 0.5}, "forgetting": None}}
    stub = FIGURES_STUB.replace("FIGURES_JSON", json.dumps(figures))
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": stub})

    # Checkpoints of one job: step 2 against step 6, with the change.
    open_dashboard(browser, server, key, f"#job={first.id}")
    assert "two or more" in text_of(browser, "checkpoint-comparison")
    by_id(browser, "select-step-2").click()
    by_id(browser, "select-step-6").click()
    comparison = wait_text(browser, "checkpoint-comparison", "step 6")
    assert "train_loss 1.0000 0.3333 (-0.6667)" in comparison  # the fake trainer's loss is 2/step
    assert "valid_loss 1.2500 0.4167 (-0.8333)" in comparison
    figures = text_of(browser, "figures")
    assert "eval.exact_match 0.7500" in figures and "eval.base.exact_match 0.2500" in figures
    assert "forgetting.passed yes" in figures

    # Jobs side by side, chosen with the keyboard in the list.
    browser.find_element(By.LINK_TEXT, "← all jobs").click()
    compare = by_id(browser, "compare-jobs")
    assert compare.get_attribute("disabled") is not None
    for job in (first, second):
        box = by_id(browser, f"select-{job.id}")
        browser.execute_script("arguments[0].focus()", box)
        box.send_keys(Keys.SPACE)
    assert box.is_selected() and compare.get_attribute("disabled") is None
    compare.send_keys(Keys.ENTER)
    summary = wait_text(browser, "compare-summary", second.id)
    assert first.id in summary and "n_epochs 2 4" in summary
    assert "last train loss 0.3333 0.3333" in summary and "best valid loss 0.4167 0.4167" in summary
    per_step = text_of(browser, "compare-checkpoints")
    for step, loss in ((2, "1.0000 / 1.2500"), (4, "0.5000 / 0.6250"), (6, "0.3333 / 0.4167")):
        assert f"step {step} {loss} {loss}" in per_step
    figures = text_of(browser, "compare-figures")
    assert "eval.exact_match 0.7500 0.5000" in figures and "forgetting.general_drop 1.5000 –" in figures
    assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-curve path")) == 2


def active_id(browser) -> str:
    return browser.execute_script("return document.activeElement && document.activeElement.id")


def tab_to(browser, element_id: str, limit: int = 80) -> None:
    """Press Tab until `element_id` has the focus, as a keyboard user would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        if active_id(browser) == element_id:
            return
        ActionChains(browser).send_keys(Keys.TAB).perform()
    raise AssertionError(f"Tab never reached #{element_id} (stuck on #{active_id(browser)})")


def press(browser, *keys) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(*keys).perform()


def test_the_create_form_works_with_the_keyboard_alone(browser, start_server, tmp_path):
    from selenium.webdriver.common.keys import Keys

    server = start_server()
    key = server.create_key("acme")
    sdk = sdk_for(server, key)
    stored = sdk.files.create(file=write_jsonl(tmp_path / "kbd.jsonl", chat_rows()).open("rb"), purpose="fine-tune")
    open_dashboard(browser, server, key, "#new")
    by_id(browser, "create-job")
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('#create-form input, #create-form select, #create-form textarea')]"
        ".filter((el) => !el.labels || !el.labels.length).map((el) => el.id)")
    assert unlabelled == []
    browser.execute_script("document.getElementById('api-key').focus()")

    tab_to(browser, "training-file")
    outline = browser.execute_script("const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth]")
    assert outline == ["solid", "3px"]  # the focus is visible
    press(browser, Keys.ARROW_DOWN)  # the one uploaded file
    assert browser.execute_script("return document.getElementById('training-file').value") == stored.id
    tab_to(browser, "check-files")
    press(browser, Keys.ENTER)
    wait_text(browser, "check-training", "OK")
    assert "kbd.jsonl" in text_of(browser, "check-training") and by_id(browser, "preview-0")

    tab_to(browser, "n-epochs")
    press(browser, "3")
    tab_to(browser, "suffix")
    press(browser, "kbd")
    tab_to(browser, "create-job")
    press(browser, Keys.SPACE)
    wait_for(lambda: "#job=" in browser.current_url, timeout=15)
    job = sdk.fine_tuning.jobs.retrieve(browser.current_url.split("#job=")[-1])
    assert (job.training_file, job.user_provided_suffix) == (stored.id, "kbd")
    assert job.method.supervised.hyperparameters.n_epochs == 3
    wait_text(browser, "job-status", "succeeded", timeout=60)


RECORD_CREATES = """(() => {
  window.__creates = JSON.parse(sessionStorage.getItem("creates") || "[]");
  const realFetch = window.fetch;
  window.fetch = (path, init) => {
    if (String(path) === "/v1/fine_tuning/jobs" && init && init.method === "POST") {
      window.__creates.push(JSON.parse(init.body));
      sessionStorage.setItem("creates", JSON.stringify(window.__creates));
    }
    return realFetch(path, init);
  };
})();"""


def test_tuneforge_options_are_sent_only_when_set(browser, start_server, tmp_path):
    from tuneforge.service.schemas import JobCreate

    server = start_server()
    key = server.create_key("acme")
    sdk = sdk_for(server, key)
    stored = sdk.files.create(file=write_jsonl(tmp_path / "o.jsonl", chat_rows()).open("rb"), purpose="fine-tune")
    pairs = [{"prompt": f"{i}+{i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(12)]
    preference = sdk.files.create(file=write_jsonl(tmp_path / "pairs.jsonl", pairs).open("rb"), purpose="fine-tune")
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CREATES})
    open_dashboard(browser, server, key, "#new")
    from selenium.webdriver.support.ui import Select

    Select(by_id(browser, "training-file")).select_by_value(stored.id)
    by_id(browser, "create-job").click()
    wait_for(lambda: "#job=" in browser.current_url, timeout=15)
    (plain,) = browser.execute_script("return window.__creates")
    assert plain == {"model": BASE, "training_file": stored.id, "method": {"type": "supervised", "supervised": {}}}

    browser.get(f"{server.url}/#new")
    Select(by_id(browser, "method")).select_by_value("dpo")
    Select(by_id(browser, "training-file")).select_by_value(preference.id)
    wait_text(browser, "check-training", "OK")  # checked as preference pairs
    by_id(browser, "beta").send_keys("0.2")
    by_id(browser, "opt-lora-r").send_keys("32")
    Select(by_id(browser, "opt-full")).select_by_value("true")
    by_id(browser, "opt-max-length").send_keys("1024")
    Select(by_id(browser, "opt-forgetting-guard")).select_by_value("off")
    by_id(browser, "create-job").click()
    sent = wait_for(lambda: len(creates := browser.execute_script("return window.__creates")) == 2 and creates[1])
    assert sent["tuneforge"] == {"lora_r": 32, "full": True, "max_length": 1024, "forgetting_guard": "off"}
    assert sent["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    assert sent["training_file"] == preference.id
    if "tuneforge" in JobCreate.model_fields:  # the API takes the options: a job is made
        wait_for(lambda: "#job=" in browser.current_url, timeout=15)
    else:  # not yet: the server's refusal is shown where the user looks
        assert "tuneforge" in wait_text(browser, "create-error", "tuneforge")


def test_dashboard_without_key_asks_for_one(browser, start_server):
    from selenium.webdriver.common.by import By

    server = start_server(workers=0)
    answer = httpx.get(server.url + "/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    browser.get(server.url + "/")
    wait_for(lambda: "Paste an API key" in browser.find_element(By.ID, "app").text, timeout=15)
    browser.execute_script("localStorage.setItem('tuneforge-key', 'wrong')")
    browser.get(server.url + "/")
    wait_for(lambda: browser.find_elements(By.ID, "load-error"), timeout=15)
    assert "Incorrect API key" in browser.find_element(By.ID, "load-error").text
