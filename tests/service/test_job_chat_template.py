"""A job names its chat template with `extra_body={"tuneforge": {"chat_template": ...}}`: every built-in of
tuneforge/chat_templates.py is accepted (chatml-tools among them), the worker's validator renders the job's
rows with it, and a job whose tool-call rows its template would drop fails with a fix said in API terms.

    .venv/bin/python -m pytest tests/service/test_job_chat_template.py

The validator is the real `tuneforge validate` child process on the tiny random Llama (its tokenizer's own
template, ChatML, ignores tools, as SmolLM2's does).
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import make_tokenizer, write_jsonl
from tuneforge.chat_templates import BUILTIN_TEMPLATES
from tuneforge.data.validate import validate_file
from tuneforge.service.api_error import APIError
from tuneforge.service.file_validation import check_job_files, measure_estimate, validation_error
from tuneforge.service.job_options import check_options
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job

pytestmark = pytest.mark.service
API_FIX = 'extra_body={"tuneforge": {"chat_template": "chatml-tools"}}'
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look a letter up",
                                           "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]


def tool_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        letter = "abcdefghijklmnopqrstuvwxyz"[i]
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"name": letter})}}
        rows.append({"messages": [{"role": "user", "content": f"what is {letter}"},
                                  {"role": "assistant", "content": None, "tool_calls": [call]}], "tools": TOOLS})
    return rows


def test_every_built_in_template_is_a_job_option_and_files_are_not():
    for name in BUILTIN_TEMPLATES:
        assert check_options({"chat_template": name}, "supervised") == {"chat_template": name}
    for bad in ("/etc/passwd", "chatml-tool", {"chatml-tools": 1}, ["chatml-tools"], None):
        with pytest.raises(APIError) as refused:
            check_options({"chat_template": bad}, "supervised")
        assert refused.value.status == 400 and refused.value.param == "tuneforge.chat_template"
        assert "chatml-tools" in str(refused.value)  # the list it names is the built-ins'


def test_the_validators_template_finding_becomes_a_job_error_with_the_api_fix(tmp_path):
    """The finding as the real validator reports it (validate_file's own message, in CLI terms) becomes the
    job's one message, whose fix is the create body's option, or, for a vocabulary chatml-tools cannot write,
    another model (a job cannot name a Jinja file)."""
    tokenizer = copy.deepcopy(make_tokenizer())  # own template ChatML: no tools
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows())
    report = validate_file(path, "sft", tokenizer).to_dict()
    assert [e["code"] for e in report["errors"]] == ["template_ignores_tools"]
    assert "--chat-template" in report["errors"][0]["message"]  # the validator speaks to the command line
    error = validation_error(report, "training_file")
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    message = error["message"]
    assert message.startswith("Invalid file format in training_file: line 1: ") and API_FIX in message
    assert message.endswith("[template_ignores_tools]") and "\n" not in message
    assert "--chat-template" not in message and "chat_template=" not in message and "Jinja" not in message

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    no_chatml = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>")),
        unk_token="<unk>", eos_token="</s>")
    no_chatml.chat_template = BUILTIN_TEMPLATES["plain"].source
    message = validation_error(validate_file(path, "sft", no_chatml).to_dict(), "training_file")["message"]
    assert "[template_ignores_tools]" in message and API_FIX not in message
    assert "model whose own chat template renders tools" in message and "chat_template=" not in message


@pytest.fixture
def settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    write_jsonl(settings.files_dir / "file-tools", tool_rows())
    return settings


def job_with(model, options=None) -> Job:
    return Job(id="ftjob-template", org_id="org", model=str(model), training_file="file-tools", validation_file=None,
               method="supervised", options=options, lineage=None, ft_name="ft:x")


def test_the_worker_validates_with_the_jobs_chat_template(settings, tiny_model_dir):
    n_examples, error = check_job_files(settings, job_with(tiny_model_dir))
    assert n_examples is None and error["code"] == "invalid_training_file"
    assert "[template_ignores_tools]" in error["message"] and API_FIX in error["message"]
    # The same rows, asked for with the fix the message gives: valid, and the estimate is measured with it too.
    fixed = job_with(tiny_model_dir, {"chat_template": "chatml-tools"})
    assert check_job_files(settings, fixed) == (12, None)
    assert measure_estimate(settings, job_with(tiny_model_dir), {"n_epochs": 1, "batch_size": 4}) is None
    estimate = measure_estimate(settings, fixed, {"n_epochs": 1, "batch_size": 4})
    assert estimate is not None and estimate["train_seconds"] > 0
