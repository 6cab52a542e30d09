"""`tuneforge validate FILE --json --estimate --method M --model M [--chat-template T] --min-examples N`, run by
the worker on a job's files.

The validator runs as a child process, like the trainer (it may load the model's tokenizer, and the worker
never imports transformers). It renders the rows with the template the trainer will use (the job's
`tuneforge.chat_template`, else the model's own). Its JSON report gives either the number of training
examples, which sizes the "auto" hyperparameters, or the job's error in OpenAI's shape, naming the first bad
line. For the training file it also times two training steps on the job's model (`--estimate`), which gives
the job's estimated_finish before the first step runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tuneforge.data.findings import CODES
from tuneforge.data.validate import MIN_EXAMPLES
from tuneforge.service.file_storage import file_path
from tuneforge.service.model_ids import runs_on
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job
from tuneforge.service.training_command import trainer_method

VALIDATE_TIMEOUT_SECONDS = 600


def check_job_files(settings: Settings, job: Job) -> tuple[int | None, dict | None]:
    """(the number of training examples, None) when the job's files are fit to train on, else (None, the job's
    error) for the first file that is not."""
    n_examples = None
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id is None:
            continue
        path = file_path(settings, file_id)
        if not path.exists():
            return None, {"code": "invalid_file", "param": param, "message": f"The {param} {file_id} no longer exists."}
        report, problem = run_validator(settings.validate_command, path, method=trainer_method(job.method),
                                        param=param, model=runs_on(job), chat_template=chat_template_of(job))
        if problem:
            return None, {"code": "validation_unavailable", "param": param, "message": problem}
        if not report.get("ok", False):
            return None, validation_error(report, param)
        if param == "training_file":
            n_examples = report.get("n_examples")
    return n_examples, None


def measure_estimate(settings: Settings, job: Job, hyperparameters: dict) -> dict | None:
    """The validator's measured estimate for the run the job will be (its epochs, batch size, model and
    options): two training steps timed on this machine. None when estimates are off or it could not measure;
    an estimate is advice, so its failure never fails the job."""
    if not settings.estimate:
        return None
    extra = []
    for flag, key in (("--epochs", "n_epochs"), ("--batch-size", "batch_size")):
        if isinstance(hyperparameters.get(key), int | float):
            extra += [flag, str(hyperparameters[key])]
    max_length = (job.options or {}).get("max_length")
    if isinstance(max_length, int):
        extra += ["--max-length", str(max_length)]
    report, problem = run_validator(settings.validate_command, file_path(settings, job.training_file),
                                    method=trainer_method(job.method), param="training_file", estimate=True,
                                    model=runs_on(job), chat_template=chat_template_of(job), extra=extra)
    estimate = report.get("estimate") or {}
    return estimate if problem is None and isinstance(estimate.get("train_seconds"), int | float) else None


def chat_template_of(job: Job) -> str | None:
    """The built-in template the job asked for (job_options.check_options let only those through), or None:
    the model's own."""
    value = (job.options or {}).get("chat_template")
    return value if isinstance(value, str) else None


def run_validator(validate_command: list[str], path: Path, *, method: str, param: str, estimate: bool = False,
                  model: str | None = None, chat_template: str | None = None,
                  extra: list[str] | None = None) -> tuple[dict, str | None]:
    """(report, None), or ({}, why the validator could not give one). The training file needs the trainer's
    minimum number of examples; a validation file needs one. `estimate` also times two training steps on
    `model` (the report's "estimate"; a failed estimate is reported in it, not as a failure). `chat_template`
    renders the rows as the trainer's chat_template= will."""
    min_examples = MIN_EXAMPLES if param == "training_file" else 1
    command = [*validate_command, str(path), "--json", "--estimate" if estimate else "--no-estimate", "--method", method]
    if model:
        command += ["--model", model]
    if chat_template:
        command += ["--chat-template", chat_template]
    command += ["--min-examples", str(min_examples), *(extra or [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=VALIDATE_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"The data validator could not run: {exc}"
    report = _parse_json_report(done.stdout)
    if report is None or done.returncode not in (0, 1):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"The data validator failed (exit {done.returncode}): {last}"
    return report, None


def validation_error(report: dict, param: str) -> dict:
    """The job's error for a file the validator refused: the first problem, and how many more there are."""
    errors = report.get("errors") or []
    if not errors:
        return {"code": "invalid_file", "message": f"The {param} could not be validated.", "param": param}
    # The validator lists file-level problems first (too few examples, a CSV named .jsonl); the job's one
    # message names a row when there is one, the problem a user fixes by opening the file at that line.
    first = next((e for e in errors if e.get("line") or e.get("row") is not None), errors[0])
    more = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return {
        "code": "invalid_training_file" if param == "training_file" else "invalid_validation_file",
        # `where` says "line 7" in JSONL, "row 3 (line 18)" in CSV/JSON arrays, "the file" for file-level problems.
        "message": f"Invalid file format in {param}: {first.get('where') or 'line ' + str(first.get('line'))}: "
        f"{_in_api_terms(first)} "
        f"[{first.get('code')}]{more}",
        "param": param,
    }


def _in_api_terms(finding: dict) -> str:
    """The finding's message, with the fix said as an API user makes it where the validator says it in the
    command line's terms (chat_template=..., --chat-template, a Jinja file, which a job cannot name)."""
    message = str(finding.get("message"))
    if finding.get("code") != "template_ignores_tools":
        return message
    problem = CODES["template_ignores_tools"][1]
    # The validator offers chatml-tools only when the model's vocabulary can write its turn markers
    # (data/tokenize.py, tool_template_message); otherwise no built-in a job may name renders tools.
    if "chat_template=chatml-tools" in message:
        fix = ('create the job with extra_body={"tuneforge": {"chat_template": "chatml-tools"}}, a built-in '
               "template that renders them")
    else:
        fix = ("no built-in template a job can name fits this model's vocabulary (chatml-tools needs <|im_start|> and "
               "<|im_end|>): fine-tune a model whose own chat template renders tools")
    return f"{problem}; {fix}"


def _parse_json_report(stdout: str) -> dict | None:
    """The validator prints one JSON object; accept it pretty-printed or after other lines."""
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else "", text[text.find("{") :] if "{" in text else ""):
        try:
            report = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            return report
    return None
