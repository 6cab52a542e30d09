"""python -m tuneforge.service.inference: the inference process behind /v1/chat/completions.

Reads one JSON request per line on stdin, writes JSON lines on stdout: {"id", "token"} while streaming,
then {"id", "result": {"text", "prompt_tokens", "completion_tokens", "finish_reason"}} or {"id", "error"}.
Loaded (model, adapter) pairs are kept in a small LRU so a fine-tuned adapter is loaded once, not per request.
This is the only service process that imports torch (through tuneforge.models).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable


class ModelCache:
    """Least-recently-used (model, adapter) -> (model, tokenizer)."""

    def __init__(self, load: Callable, capacity: int):
        self.load = load
        self.capacity = max(1, capacity)
        self.entries: OrderedDict = OrderedDict()

    def get(self, model: str, adapter: str | None):
        key = (model, adapter)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        loaded = self.load(model, adapter)
        self.entries[key] = loaded
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return loaded


def serve(load: Callable, generate: Callable, stdin=None, stdout=None, capacity: int = 3) -> None:
    """Answer requests until stdin closes. `load` and `generate` follow tuneforge.models.load_model and
    tuneforge.generation.generate_chat."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    cache = ModelCache(load, capacity)
    write_lock = threading.Lock()

    def emit(message: dict) -> None:
        with write_lock:
            stdout.write(json.dumps(message) + "\n")
            stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        request_id = request.get("id")
        try:
            model, tokenizer = cache.get(request["model"], request.get("adapter"))
            on_token = None
            if request.get("stream"):

                def on_token(_index: int, piece: str, request_id=request_id) -> None:
                    if piece:
                        emit({"id": request_id, "token": piece})

            results = generate(
                model,
                tokenizer,
                [request["messages"]],
                max_new_tokens=int(request.get("max_new_tokens") or 256),
                temperature=float(request.get("temperature") or 0.0),
                top_p=float(request.get("top_p") or 1.0),
                seed=request.get("seed"),
                stop=request.get("stop"),
                on_token=on_token,
            )
            emit({"id": request_id, "result": results[0]})
        except Exception as exc:  # one bad request must not take the process down
            emit({"id": request_id, "error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    # stdout carries the protocol; anything a library prints (from Python or C) goes to stderr instead.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    from tuneforge.generation import generate_chat
    from tuneforge.models import load_model

    serve(
        load_model,
        generate_chat,
        stdin=sys.stdin,
        stdout=protocol_out,
        capacity=int(os.environ.get("TUNEFORGE_ADAPTER_CACHE", "3")),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
