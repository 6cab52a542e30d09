"""A stand-in inference process speaking the real protocol (tuneforge/service/inference.py): answers
"echo(<model>[+adapter]): <last user message>" word by word, each request on its own thread, so several
are in flight at once. TUNEFORGE_FAKE_TOKEN_DELAY (seconds per word) makes answers slow enough to cancel;
TUNEFORGE_FAKE_CANCEL_LOG names a file that gets one line per cancel received (the id).
TUNEFORGE_FAKE_HOLD_UNTIL=N holds every answer until N requests have arrived, so that N are in flight at
once; if they have not all come within HOLD_SECONDS, each held request fails with a 503 that says how many did.

For the chat API's features: a last user message "tool:NAME {json arguments}" is answered with the text a
Hermes-style template's model writes (<tool_call>{"name", "arguments"}</tool_call>); with logprobs each word
gets an OpenAI logprob entry (logprob -0.5 per word, top_logprobs alternatives); with a response_format of
json_object/json_schema, or a forced tool_choice, the answer is what the constraint would force (a JSON
object echoing the prompt, or a call of the first tool)."""

import json
import os
import threading
import time

from tuneforge.service.inference import serve

HOLD_SECONDS = 30.0


def _entry(piece: str, top: int) -> dict:
    """An OpenAI logprob entry for one piece, with `top` made-up alternatives."""
    alternatives = [{"token": piece}] + [{"token": f"alt{k}"} for k in range(1, top)]
    return {
        "token": piece,
        "logprob": -0.5,
        "bytes": list(piece.encode()),
        "top_logprobs": [
            {**a, "logprob": -0.5 - k, "bytes": list(a["token"].encode())} for k, a in enumerate(alternatives[:top])
        ],
    }


class EchoEngine:
    def __init__(self, delay: float = 0.0, hold_until: int = 0):
        self.delay = delay
        self.lock = threading.Lock()
        self.open: dict = {}  # request id -> its cancel flag
        self.hold_until = hold_until
        self.arrived = 0
        self.all_arrived = threading.Event()

    def submit(self, request: dict, emit) -> None:
        request_id = request.get("id")
        cancelled = threading.Event()
        with self.lock:
            self.open[request_id] = cancelled
            self.arrived += 1
            if self.arrived >= self.hold_until:
                self.all_arrived.set()
        threading.Thread(target=self._answer, args=(request, emit, cancelled), daemon=True).start()

    def _answer(self, request: dict, emit, cancelled: threading.Event) -> None:
        request_id = request["id"]
        if not self.all_arrived.wait(HOLD_SECONDS):
            message = f"only {self.arrived} of the {self.hold_until} requests held for arrived in {HOLD_SECONDS:g}s"
            emit({"id": request_id, "error": message, "status": 503})
            self._close(request_id)
            return
        name, adapter = request.get("model"), request.get("adapter")
        prompt = request["messages"][-1]["content"]
        max_new_tokens = int(request.get("max_new_tokens") or 256)
        text = f"echo({name}{'+' + os.path.basename(adapter) if adapter else ''}): {prompt}"
        response_format = request.get("response_format") or {}
        if prompt.startswith("tool:"):
            tool, _, arguments = prompt[len("tool:") :].partition(" ")
            text = f'<tool_call>\n{{"name": "{tool}", "arguments": {arguments or "{}"}}}\n</tool_call>'
        elif response_format.get("type") == "tool_calls":
            tool = response_format["tools"][0]["function"]["name"]
            text = f'<tool_call>\n{{"name": "{tool}", "arguments": {{}}}}\n</tool_call>'
        elif response_format.get("type") in ("json_object", "json_schema"):
            text = json.dumps({"echo": prompt})
        words = text.split(" ")[:max_new_tokens]
        choices = []
        for index in range(int(request.get("n") or 1)):
            for number, word in enumerate(words):
                if self.delay:
                    time.sleep(self.delay)
                if cancelled.is_set():
                    self._close(request_id)
                    return
                piece = word if number == 0 else " " + word
                if request.get("stream"):
                    line = {"id": request_id, "index": index, "token": piece}
                    if request.get("logprobs"):
                        line["logprobs"] = [_entry(piece, int(request.get("top_logprobs") or 0))]
                    emit(line)
            finish = "length" if len(words) == max_new_tokens else "stop"
            entries = [
                _entry(w if i == 0 else " " + w, int(request.get("top_logprobs") or 0)) for i, w in enumerate(words)
            ]
            logprobs = {"content": entries} if request.get("logprobs") else None
            choices.append({"index": index, "text": " ".join(words), "finish_reason": finish, "logprobs": logprobs})
        emit(
            {
                "id": request_id,
                "result": {
                    "choices": choices,
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(words) * len(choices),
                },
            }
        )
        self._close(request_id)

    def _close(self, request_id) -> None:
        with self.lock:
            self.open.pop(request_id, None)

    def cancel(self, request_id) -> None:
        if os.environ.get("TUNEFORGE_FAKE_CANCEL_LOG"):
            with open(os.environ["TUNEFORGE_FAKE_CANCEL_LOG"], "a") as log:
                log.write(f"{request_id}\n")
        with self.lock:
            flag = self.open.get(request_id)
        if flag is not None:
            flag.set()

    def idle(self) -> bool:
        with self.lock:
            return not self.open

    def close(self) -> None:
        pass


if __name__ == "__main__":
    serve(
        EchoEngine(
            float(os.environ.get("TUNEFORGE_FAKE_TOKEN_DELAY", "0")),
            int(os.environ.get("TUNEFORGE_FAKE_HOLD_UNTIL", "0")),
        )
    )
