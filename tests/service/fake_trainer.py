"""A stand-in for `tuneforge train` that follows the trainer's contract in milliseconds.

Writes metrics.jsonl (train / valid / checkpoint lines), summary.json and adapter files; on SIGTERM it
finishes its step, saves and exits; with --resume auto it continues after its newest complete checkpoint
(one with manifest.json, written last, as the real trainer does). Knobs (environment): FAKE_STEP_SECONDS,
FAKE_RUN_LOG (append "RUN_DIR_NAME PID FIRST_STEP" per run, to prove each job runs exactly once and
whether a run resumed). A training file containing CRASH exits 3; USER_ERROR exits 2;
SLOW runs until stopped. The command line it was given is kept in RUN/argv.json (tests read what the worker
asked for: the model, init_adapter, the job's options).
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--output", required=True)
parser.add_argument("--max-steps", type=int, default=6)
parser.add_argument("--save-every", type=int, default=2)
parser.add_argument("--resume")
args, _unknown = parser.parse_known_args()

out = Path(args.output)
out.mkdir(parents=True, exist_ok=True)
(out / "pid").write_text(str(os.getpid()))
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
first_step = 1
if args.resume == "auto":
    from tuneforge.runfiles import complete_checkpoints, trim_metrics

    done = complete_checkpoints(out)
    if done:
        first_step = int(done[-1].name.removeprefix("step-")) + 1
        trim_metrics(out / "metrics.jsonl", first_step - 1)
if os.environ.get("FAKE_RUN_LOG"):
    with open(os.environ["FAKE_RUN_LOG"], "a") as log:
        log.write(f"{out.name} {os.getpid()} {first_step}\n")
text = Path(args.data).read_text()
if "USER_ERROR" in text:
    print("train.jsonl: the model's context is too short for line 1", file=sys.stderr)
    sys.exit(2)
if "CRASH" in text:
    print("Traceback: simulated crash", file=sys.stderr)
    sys.exit(3)

stop = False


def on_term(_signum, _frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.05"))
if "SLOW" in text:  # a job that runs until it is cancelled or paused
    step_seconds, args.max_steps = 0.5, 10_000


def emit(record):
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps(record) + "\n")


def save(step):
    checkpoint = out / "checkpoints" / f"step-{step}"
    (checkpoint / "adapter").mkdir(parents=True, exist_ok=True)
    (checkpoint / "adapter" / "adapter_config.json").write_text("{}")  # the real trainer's layout
    (checkpoint / "manifest.json").write_text(json.dumps({"step": step}))
    emit({"type": "checkpoint", "step": step, "path": str(checkpoint)})


for step in range(first_step, args.max_steps + 1):
    time.sleep(step_seconds)
    emit(
        {
            "type": "train",
            "step": step,
            "total_steps": args.max_steps,
            "epoch": step / args.max_steps,
            "loss": 2.0 / step,
            "lr": 1e-3,
            "tokens_per_second": 100.0,
            "trained_tokens": 10 * step,
        }
    )
    if step % 2 == 0:
        emit({"type": "valid", "step": step, "valid_loss": 2.5 / step})
    if step % args.save_every == 0 or stop:
        save(step)
    if stop:
        sys.exit(0)

(out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
(out / "adapter_model.safetensors").write_bytes(b"")
(out / "eval_report.md").write_text("# Evaluation\n\nexact match: 0.5\n")
summary = {"trained_tokens": 10 * args.max_steps, "final_train_loss": 0.3, "resumed_from_step": first_step - 1}
(out / "summary.json").write_text(json.dumps(summary))
