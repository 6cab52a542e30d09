"""The whole fine-tuning flow through the official openai SDK, as a script so any SDK version can run it:

    python tests/service/sdk_flow.py BASE_URL API_KEY WORKDIR [--real] [--skip-cancel]

Uses only the SDK and the standard library (a second environment with openai 2.x runs it unchanged).
Prints one JSON line with what it saw; exits non-zero on the first broken expectation.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import openai

BASE = "smollm2-135m-instruct"
TERMINAL = ("succeeded", "failed", "cancelled")


def rows(n, marker=""):
    return [
        {
            "messages": [
                {"role": "user", "content": f"{marker}Say the colour number {i}."},
                {"role": "assistant", "content": f"Colour {i} is blue."},
            ]
        }
        for i in range(n)
    ]


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def wait(client, job_id, statuses=TERMINAL, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("api_key")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--real", action="store_true", help="real trainer and model: fewer, slower jobs")
    parser.add_argument("--skip-cancel", action="store_true")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each job")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=2, timeout=120)
    seen = {"sdk": openai.__version__}

    # upload -> create -> succeeded
    training = client.files.create(file=write(args.workdir / "train.jsonl", rows(12)).open("rb"), purpose="fine-tune")
    validation = client.files.create(file=write(args.workdir / "valid.jsonl", rows(3)).open("rb"), purpose="fine-tune")
    check(client.files.retrieve(training.id).bytes == (args.workdir / "train.jsonl").stat().st_size, "file size")
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        validation_file=validation.id,
        suffix="flow",
        seed=3,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": "auto"}},
        },
    )
    check(job.status == "validating_files", f"new job status {job.status}")
    job = wait(client, job.id, timeout=args.timeout)
    check(job.status == "succeeded", f"job ended {job.status}: {job.error}")
    check(
        job.fine_tuned_model.startswith(f"ft:{BASE}:") and job.fine_tuned_model.endswith(job.id.removeprefix("ftjob-")),
        job.fine_tuned_model,
    )
    check(job.trained_tokens and job.trained_tokens > 0, "trained_tokens")
    seen["fine_tuned_model"] = job.fine_tuned_model

    # events and checkpoints paginate
    first = client.fine_tuning.jobs.list_events(job.id, limit=2)
    check(len(first.data) == 2 and first.has_more, "events first page")
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))
    check(len(events) == len({e.id for e in events}) > 4, "events pages")
    check(any(e.type == "metrics" and e.data.get("train_loss") is not None for e in events), "metrics events")
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    check(len(checkpoints) >= 1, "checkpoints")
    steps = [c.step_number for c in checkpoints]
    check(steps == sorted(steps, reverse=True), f"checkpoints newest first: {steps}")
    results = client.files.content(job.result_files[0]).text
    check(results.startswith("step,train_loss"), "results csv")
    seen.update(events=len(events), checkpoints=steps)

    # chat with the fine-tuned model, plain and streamed
    models = [m.id for m in client.models.list()]
    check(job.fine_tuned_model in models and BASE in models, f"models {models}")
    messages = [{"role": "user", "content": "Say the colour number 3."}]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    check(isinstance(text, str) and text.strip(), "empty reply")
    check(reply.usage.completion_tokens > 0, "usage")
    stream = client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    check(streamed == text, f"streamed {streamed!r} != {text!r}")
    seen["reply"] = text

    # a bad file fails with a line-numbered error
    bad_rows = [*rows(2), "{oops not json", *rows(1)]
    bad = client.files.create(file=write(args.workdir / "bad.jsonl", bad_rows).open("rb"), purpose="fine-tune")
    failed = wait(client, client.fine_tuning.jobs.create(model=BASE, training_file=bad.id).id, timeout=args.timeout)
    check(
        failed.status == "failed" and failed.error and "line 3" in failed.error.message.lower(),
        f"bad file: {failed.status} {failed.error}",
    )
    check(failed.error.param == "training_file", f"param {failed.error.param}")
    seen["bad_file_error"] = failed.error.message

    # cancel stops a running job within seconds
    if not args.skip_cancel:
        slow = client.files.create(
            file=write(args.workdir / "slow.jsonl", rows(4, "SLOW ")).open("rb"), purpose="fine-tune"
        )
        running = client.fine_tuning.jobs.create(model=BASE, training_file=slow.id)
        wait(client, running.id, ("running",))
        time.sleep(1)
        started = time.monotonic()
        check(client.fine_tuning.jobs.cancel(running.id).status == "cancelled", "cancel answer")
        seen["cancel_seconds"] = round(time.monotonic() - started, 2)
        try:
            client.fine_tuning.jobs.cancel(running.id)
            raise AssertionError("cancelling twice should conflict")
        except openai.ConflictError:
            pass

    # errors in OpenAI's envelope
    try:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
        raise AssertionError("missing job should 404")
    except openai.NotFoundError as exc:
        check(exc.body and "message" in exc.body, f"envelope {exc.body}")
    try:
        client.fine_tuning.jobs.create(model=BASE, training_file="file-nope")
        raise AssertionError("unknown file should 400")
    except openai.BadRequestError as exc:
        check(exc.param == "training_file" if hasattr(exc, "param") else True, "param")

    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
