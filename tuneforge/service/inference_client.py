"""The API side of inference: one child process (tuneforge/service/inference.py) spoken to in JSON lines.

The child is started on the first chat request and restarted if it dies. Requests are served one at a
time (a CPU box generates one reply at a time anyway); a streamed reply arrives as token lines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator

from tuneforge.service.devices import inference_env
from tuneforge.service.settings import Settings

STREAM_LIMIT = 16 * 1024 * 1024


class InferenceError(Exception):
    pass


class InferenceClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.ids = itertools.count(1)

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self.process is not None and self.process.returncode is None:
            return self.process
        env = dict(
            os.environ, **inference_env(self.settings), TUNEFORGE_ADAPTER_CACHE=str(self.settings.adapter_cache_size)
        )
        self.process = await asyncio.create_subprocess_exec(
            *self.settings.inference_command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=env,
            limit=STREAM_LIMIT,
        )
        return self.process

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        """Yields {"token": str} pieces (when request["stream"]) and finally {"result": {...}}."""
        async with self.lock:
            process = await self._ensure_started()
            request_id = next(self.ids)
            process.stdin.write((json.dumps({**request, "id": request_id}) + "\n").encode())
            await process.stdin.drain()
            while True:
                line = await process.stdout.readline()
                if not line:
                    self.process = None
                    raise InferenceError("the inference process exited; see the server log")
                message = json.loads(line)
                if message.get("id") != request_id:
                    continue
                if "error" in message:
                    raise InferenceError(message["error"])
                yield message
                if "result" in message:
                    return

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
