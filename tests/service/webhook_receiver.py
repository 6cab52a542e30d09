"""A webhook endpoint for tests: an http.server on loopback that records every POST (headers, body, time) and
answers with the statuses it is told to give first, then `then` (200 unless changed)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, first: list[int] = (), then: int = 200, delay: float = 0.0):
        self.first = list(first)
        self.then = then
        self.delay = delay
        self.received: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(receiver.delay)
                with receiver.lock:
                    status = receiver.first.pop(0) if receiver.first else receiver.then
                    receiver.received.append(
                        {"headers": dict(self.headers.items()), "body": body, "at": time.monotonic(), "status": status}
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answered(self, status: int) -> list[dict]:
        with self.lock:
            return [request for request in self.received if request["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
