"""The API side of inference: one child process (tuneforge/service/inference.py) spoken to in JSON lines,
many requests in flight over it at once.

    ticket = client.admit(model_id)                      # Overloaded (a 429) when that model's queue is full
    async with aclosing(client.generate(request, ticket)) as messages:
        async for message in messages: ...               # token lines, then the result; InferenceFailed

The protocol (the child answers lines of different requests interleaved):
    to the child    {"id", "op": "generate", "model", "adapter", "messages", "tools"?, "max_new_tokens",
                     "temperature", "top_p", "seed", "stop", "n", "logprobs", "top_logprobs",
                     "presence_penalty", "frequency_penalty", "logit_bias", "response_format"?, "stream"}
                    {"id", "op": "cancel"}
    from the child  {"id", "index", "token", "logprobs"?}       while streaming
                    {"id", "result": {"choices": [{"index", "text", "finish_reason", "logprobs"?}],
                                      "prompt_tokens", "completion_tokens"}}
                    {"id", "error", "status": 400 | 503}
    where "logprobs" is a list of OpenAI's entries: {"token", "logprob", "bytes", "top_logprobs": [...]}.

One reader task reads the child's stdout and puts each line on its request's own queue without ever
waiting, so a slow streaming client only lets its own queue grow and never stalls the others. Each model
id admits at most `chat_max_pending` requests at once (queued in the engine or decoding); past that the
request is refused at once with retry-after rather than waiting unboundedly. A request that ends before
its result (its client went away, its timeout passed) sends the child a cancel, so the engine stops
spending decode steps on it. If the child dies, every request in flight fails with a 503 and the next
request starts a new child.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from collections.abc import AsyncIterator

from tuneforge.service.devices import inference_env
from tuneforge.service.settings import Settings

STREAM_LIMIT = 16 * 1024 * 1024


class InferenceError(Exception):
    """A request the inference process did not answer; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 503, code: str = "inference_failed"):
        super().__init__(message)
        self.status = status
        self.code = code


class Overloaded(InferenceError):
    def __init__(self, model: str, limit: int, retry_after: int):
        super().__init__(
            f"Too many requests are waiting for {model!r} ({limit} at most); retry after {retry_after}s.",
            status=429,
            code="rate_limit_exceeded",
        )
        self.retry_after = retry_after


class InferenceTimeout(InferenceError):
    def __init__(self, seconds: float):
        super().__init__(f"The request did not finish within {seconds:g}s.", status=504, code="timeout")


class Ticket:
    """One admitted request's place in its model's queue; released once, however the request ends."""

    def __init__(self, client: InferenceClient, key: str):
        self.client = client
        self.key = key
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.client.pending_by_model[self.key] -= 1
            if self.client.pending_by_model[self.key] <= 0:
                del self.client.pending_by_model[self.key]


class InferenceClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task | None = None
        self.start_lock = asyncio.Lock()
        self.ids = itertools.count(1)
        self.queues: dict[str, asyncio.Queue] = {}
        self.pending_by_model: Counter[str] = Counter()
        self.cancels_sent = 0

    # --- admission ----------------------------------------------------------------------------------------

    def admit(self, key: str) -> Ticket:
        limit = self.settings.chat_max_pending
        if self.pending_by_model[key] >= limit:
            raise Overloaded(key, limit, self.settings.chat_retry_after_seconds)
        self.pending_by_model[key] += 1
        return Ticket(self, key)

    # --- the child process -----------------------------------------------------------------------------------

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self.start_lock:
            if self.process is not None and self.process.returncode is None and self.reader and not self.reader.done():
                return self.process
            env = dict(
                os.environ,
                **inference_env(self.settings),
                TUNEFORGE_ADAPTER_CACHE=str(self.settings.adapter_cache_size),
            )
            self.process = await asyncio.create_subprocess_exec(
                *self.settings.inference_command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                env=env,
                limit=STREAM_LIMIT,
            )
            self.reader = asyncio.create_task(self._read(self.process))
            return self.process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Dispatch the child's lines to their requests' queues until it exits; then fail what is left."""
        try:
            while True:
                line = await process.stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not a protocol line (a library printing to stdout): skip it
                queue = self.queues.get(str(message.get("id")))
                if queue is not None:  # a cancelled request's late lines have nowhere to go
                    queue.put_nowait(message)
        finally:
            if self.process is process:
                self.process = None
            dead = {"error": "the inference process exited; see the server log", "status": 503}
            for queue in self.queues.values():
                queue.put_nowait(dead)

    def _send(self, message: dict) -> None:
        """Write one line; never waits (the pipe's buffer absorbs it), so it is safe in a finally block."""
        process = self.process
        if process is None or process.returncode is not None or process.stdin.is_closing():
            return
        try:
            process.stdin.write((json.dumps(message) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass

    # --- requests ----------------------------------------------------------------------------------------

    async def generate(self, request: dict, ticket: Ticket | None = None) -> AsyncIterator[dict]:
        """Yields the child's lines for this request: {"index", "token"} pieces (when request["stream"])
        and finally {"result": {...}}. Raises InferenceError (503 / 400 from the child, 504 on timeout)."""
        request_id = f"r{next(self.ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = queue
        sent = answered = False
        timeout = self.settings.chat_timeout_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            process = await self._ensure_started()
            self._send({**request, "op": "generate", "id": request_id})
            sent = True
            await process.stdin.drain()
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise InferenceTimeout(timeout) from None
                if "error" in message:
                    answered = True
                    raise InferenceError(str(message["error"]), int(message.get("status") or 503))
                if "result" in message:
                    answered = True
                yield message
                if answered:
                    return
        finally:
            self.queues.pop(request_id, None)
            if sent and not answered:  # timed out, the client went away, or the caller stopped reading
                self.cancels_sent += 1
                self._send({"id": request_id, "op": "cancel"})
            if ticket is not None:
                ticket.release()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
        if self.reader is not None:
            self.reader.cancel()
