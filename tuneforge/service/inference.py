"""python -m tuneforge.service.inference: the inference process behind /v1/chat/completions.

Reads JSON lines on stdin, many requests in flight at once (tuneforge.serving.Engine batches them):
    {"id", "op": "generate", "model": BASE, "adapter": DIR | null, "messages", "tools"?, "max_new_tokens",
     "temperature", "top_p", "seed", "stop", "n", "logprobs", "top_logprobs", "presence_penalty",
     "frequency_penalty", "logit_bias", "response_format"?, "stream"}
    {"id", "op": "cancel"}                      the client went away: its rows leave the batch at the next step
and writes JSON lines on stdout, lines of different ids interleaved:
    {"id", "index": choice, "token": text, "logprobs"?: [entry]}      while streaming
    {"id", "result": {"choices": [{"index", "text", "finish_reason", "logprobs"}], "prompt_tokens",
                      "completion_tokens"}}
    {"id", "error": message, "status": 400 | 503}
(the full description is tuneforge/serving.py's docstring). When stdin closes, requests in flight are
finished before the process exits. This is the only service process that imports torch, and it does so in
main(), so that importing this module (as the service's tests and stand-ins do) stays light.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def serve(engine, stdin=None, stdout=None, drain_seconds: float = 600.0) -> None:
    """Feed request lines to `engine` until stdin closes. `engine` has `submit(request: dict, emit)`,
    `cancel(request_id)`, `idle() -> bool` and `close()`: tuneforge.serving.Engine, or a stand-in
    (tests/service/fake_inference.py)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    write_lock = threading.Lock()

    def emit(message: dict) -> None:
        line = json.dumps(message) + "\n"
        with write_lock:
            stdout.write(line)
            stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("a request line must be a JSON object")
        except ValueError as exc:
            emit({"id": None, "error": f"unreadable request line: {exc}", "status": 400})
            continue
        op = message.get("op", "generate")
        if op == "cancel":
            engine.cancel(message.get("id"))
        elif op == "generate":
            engine.submit(message, emit)
        else:
            emit({"id": message.get("id"), "error": f"unknown op {op!r} (generate or cancel)", "status": 400})
    deadline = time.monotonic() + drain_seconds
    while not engine.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()


def main() -> int:
    # stdout carries the protocol; anything a library prints (from Python or C) goes to stderr instead.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    from tuneforge.serving import Engine

    serve(Engine(), stdin=sys.stdin, stdout=protocol_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
