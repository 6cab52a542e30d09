"""A stand-in inference process speaking the real protocol (tuneforge/service/inference.py): answers
"echo(<model>[+adapter]): <last user message>" word by word, each request on its own thread, so several
are in flight at once. TUNEFORGE_FAKE_TOKEN_DELAY (seconds per word) makes answers slow enough to cancel."""

import os
import threading
import time

from tuneforge.service.inference import serve


class EchoEngine:
    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.lock = threading.Lock()
        self.open: dict = {}  # request id -> its cancel flag

    def submit(self, request: dict, emit) -> None:
        request_id = request.get("id")
        cancelled = threading.Event()
        with self.lock:
            self.open[request_id] = cancelled
        threading.Thread(target=self._answer, args=(request, emit, cancelled), daemon=True).start()

    def _answer(self, request: dict, emit, cancelled: threading.Event) -> None:
        request_id = request["id"]
        name, adapter = request.get("model"), request.get("adapter")
        prompt = request["messages"][-1]["content"]
        max_new_tokens = int(request.get("max_new_tokens") or 256)
        words = f"echo({name}{'+' + os.path.basename(adapter) if adapter else ''}): {prompt}".split(" ")[:max_new_tokens]
        choices = []
        for index in range(int(request.get("n") or 1)):
            for number, word in enumerate(words):
                if self.delay:
                    time.sleep(self.delay)
                if cancelled.is_set():
                    self._close(request_id)
                    return
                if request.get("stream"):
                    emit({"id": request_id, "index": index, "token": word if number == 0 else " " + word})
            finish = "length" if len(words) == max_new_tokens else "stop"
            choices.append({"index": index, "text": " ".join(words), "finish_reason": finish, "logprobs": None})
        emit({"id": request_id, "result": {"choices": choices, "prompt_tokens": len(prompt.split()),
                                           "completion_tokens": len(words) * len(choices)}})
        self._close(request_id)

    def _close(self, request_id) -> None:
        with self.lock:
            self.open.pop(request_id, None)

    def cancel(self, request_id) -> None:
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
    serve(EchoEngine(float(os.environ.get("TUNEFORGE_FAKE_TOKEN_DELAY", "0"))))
