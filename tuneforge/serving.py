"""Serving: one base model in memory, every LoRA adapter in the same batch, continuous batching.

    from tuneforge.serving import Engine, GenerationRequest
    engine = Engine()                      # a scheduler thread decodes every running request together
    engine.submit(GenerationRequest.from_json({"id": "1", "model": "smollm2-135m-instruct",
                  "adapter": "runs/demo", "messages": [{"role": "user", "content": "Hi"}]}), emit=print)
    engine.cancel("1")

Each base model is loaded once; a LoRA adapter is read as plain tensors (tuneforge/multi_lora.py) into a
cache bounded by bytes (TUNEFORGE_ADAPTER_CACHE_MB) and applied per row inside the batched forward, so one
decode step serves every running request of that base whatever its adapter. A full fine-tune, or an adapter
that needs more than a low-rank term (DoRA, saved modules), is loaded as a model of its own.

Continuous batching: each base keeps one running batch with one left-padded KV cache. A new request is
prefilled on its own (with the others that arrived meanwhile), samples its first token from the prefill,
and its cache rows are left-padded to the batch's length and appended; finished or cancelled rows are
dropped from the cache between steps. Loading a model or adapter happens on a loader thread, so the
running batch keeps decoding meanwhile. Per-row sampling is tuneforge/sampling.py.

Messages to `emit` (the inference process writes them as JSON lines):
    {"id", "index", "token": text, "logprobs"?: [entry]}         while streaming (whole characters only)
    {"id", "result": {"choices": [{"index", "text", "finish_reason", "logprobs": {"content": [entry]} | None}],
                      "prompt_tokens", "completion_tokens"}}
    {"id", "error": message, "status": 400 | 503}
an entry being {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]} as OpenAI's.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from tuneforge.data.tokenize import end_of_turn_ids, tokenize_prompt
from tuneforge.errors import UserError
from tuneforge.generation import _first_stop, _streamable_end
from tuneforge.multi_lora import AdapterRows, LoraAdapter, install, linear_names, read_lora_adapter
from tuneforge.sampling import ConstraintDeadEnd, RowSampling, choose_tokens

MAX_N = 16
MAX_TOP_LOGPROBS = 20
DEFAULT_ADAPTER_CACHE_MB = 4096


@runtime_checkable
class Constraint(Protocol):
    """What constrained decoding (tuneforge/constrained.py: `make_constraint(tokenizer, response_format)`)
    gives the engine: one object per generated choice, stepped by the scheduler thread.

    Each decode step, for a row that carries a constraint, the engine:
      1. calls `fill_allowed(mask)` with `mask` a fresh 1-D `torch.bool` CPU tensor of the model's logits
         width (which may exceed `len(tokenizer)`), all False; the constraint sets True at every token id
         allowed next (end-of-turn ids included when the output may end there). Every other token's logit
         becomes -inf (after logit_bias and penalties, before temperature and top_p); a mask left all False
         ends that request with an error;
      2. samples a token and calls `advance(token_id)` with it (not called for an end-of-turn token,
         which ends the row);
      3. asks `is_finished()`; True ends the row (finish_reason "stop") without sampling another token.
    """

    def fill_allowed(self, mask) -> None: ...

    def advance(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...


class RequestError(Exception):
    """A request the engine refuses: `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class GenerationRequest:
    id: str
    messages: list[dict]
    model: str | None = None
    adapter: str | None = None
    tools: list | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    response_format: dict | None = None
    stream: bool = False

    @classmethod
    def from_json(cls, message: dict) -> GenerationRequest:
        """A request line's fields, checked; None means the default. Unknown fields (op, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in message.items() if k in known and v is not None}
        if "id" not in values or not isinstance(values.get("messages"), list) or not values["messages"]:
            raise RequestError("a request needs an id and a non-empty messages list")
        if isinstance(values.get("stop"), str):
            values["stop"] = [values["stop"]]
        try:
            for name, kind in (("max_new_tokens", int), ("n", int), ("top_logprobs", int), ("seed", int)):
                if name in values:
                    values[name] = kind(values[name])
            for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
                if name in values:
                    values[name] = float(values[name])
            if "logit_bias" in values:
                values["logit_bias"] = {int(k): float(v) for k, v in values["logit_bias"].items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise RequestError(f"a request field has the wrong type: {exc}") from None
        request = cls(**values)
        problems = [
            f"{name} must be {rule}"
            for name, bad, rule in (
                ("max_new_tokens", request.max_new_tokens < 1, "at least 1"),
                ("n", not 1 <= request.n <= MAX_N, f"between 1 and {MAX_N}"),
                ("top_logprobs", not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS, f"between 0 and {MAX_TOP_LOGPROBS}"),
                ("temperature", not 0 <= request.temperature <= 2, "between 0 and 2"),
                ("top_p", not 0 < request.top_p <= 1, "in (0, 1]"),
                ("presence_penalty", not -2 <= request.presence_penalty <= 2, "between -2 and 2"),
                ("frequency_penalty", not -2 <= request.frequency_penalty <= 2, "between -2 and 2"),
                ("logit_bias", any(not -100 <= v <= 100 for v in (request.logit_bias or {}).values()),
                 "a map of token id to a bias between -100 and 100"),
                ("stop", any(not isinstance(s, str) for s in request.stop or []) or len(request.stop or []) > 4,
                 "a string or a list of up to 4 strings"),
            )
            if bad
        ]
        if problems:
            raise RequestError("; ".join(problems))
        return request


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE writes each byte as one printable character; this maps them back."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[chr(byte)] = byte
        else:
            characters[chr(256 + extra)] = byte
            extra += 1
    return characters


_BYTE_DECODER = _byte_decoder()


def _token_bytes(tokenizer, token_id: int, text: str) -> list[int]:
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if "ByteLevel" in type(decoder).__name__ and piece and all(ch in _BYTE_DECODER for ch in piece):
        return [_BYTE_DECODER[ch] for ch in piece]
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
        return [int(piece[3:5], 16)]
    return list(text.encode("utf-8"))


@dataclass(eq=False)
class _Choice:
    """One generated answer: a row of the running batch."""

    request: _Request
    index: int
    sampling: RowSampling
    ids: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each token's text starts in `text`
    entries: list[dict] = field(default_factory=list)  # logprob entries, one per token
    text: str = ""
    emitted: int = 0  # characters streamed
    entries_sent: int = 0


@dataclass(eq=False)
class _Request:
    spec: GenerationRequest
    emit: Callable[[dict], None]
    base_key: tuple | None = None
    adapter_key: tuple | None = None
    adapter: LoraAdapter | None = None
    tokenizer: object = None
    prompt: list[int] = field(default_factory=list)
    choices: list[_Choice] = field(default_factory=list)
    done: dict[int, dict] = field(default_factory=dict)
    completion_tokens: int = 0
    ended: bool = False  # answered, failed or cancelled: its rows leave at the next step

    @property
    def needs_text(self) -> bool:
        return bool(self.spec.stream or self.spec.stop or self.spec.logprobs)


class _Base:
    """One loaded model and its running batch: a left-padded KV cache, its mask, and a choice per row."""

    def __init__(self, key: tuple, model, tokenizer):
        import inspect

        self.key, self.model, self.tokenizer = key, model, tokenizer
        self.rows = AdapterRows()
        self.targets = linear_names(model)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.eos_ids = end_of_turn_ids(tokenizer, model.config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        # transformers 5.x renamed `past_key_values` to `cache` (as generation.py).
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.waiting: deque[_Request] = deque()
        self.choices: list[_Choice] = []
        self.cache = self.mask = self.positions = self.last = None

    def forward(self, input_ids, attention_mask, position_ids, cache, adapters) -> torch.Tensor:
        self.rows.assign(adapters, self.device)
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
        return result.logits[:, -1, :]

    def keep_rows(self, keep: list[int]) -> None:
        """Drop every running row not in `keep` (batch positions), then padding columns no row needs."""
        if len(keep) == len(self.choices):
            return
        if not keep:
            self.choices, self.cache, self.mask, self.positions, self.last = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.choices = [self.choices[i] for i in keep]
        first = int(self.mask.any(0).long().argmax())
        if first > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def join(self, cache, mask, positions, last, choices: list[_Choice]) -> None:
        """Append freshly prefilled rows, left-padding whichever cache is shorter."""
        if self.cache is None:
            self.cache, self.mask, self.positions, self.last, self.choices = cache, mask, positions, last, choices
            return
        pad = torch.nn.functional.pad
        length = max(self.mask.shape[1], mask.shape[1])
        old, new = length - self.mask.shape[1], length - mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, (0, 0, old, 0)), pad(theirs.keys, (0, 0, new, 0))])
            mine.values = torch.cat([pad(mine.values, (0, 0, old, 0)), pad(theirs.values, (0, 0, new, 0))])
        self.mask = torch.cat([pad(self.mask, (old, 0)), pad(mask, (new, 0))])
        self.positions, self.last = torch.cat([self.positions, positions]), torch.cat([self.last, last])
        self.choices = self.choices + choices

    @property
    def idle(self) -> bool:
        return not self.choices and not self.waiting


def _default_load(model: str | None, adapter: str | None):
    import os

    import torch

    from tuneforge.models import default_device, load_model

    # On the CPU, serve in fp32 unless told otherwise: in bf16 a request's greedy answer changed with the other
    # rows of its batch (rounding flips near-ties as the matmul shapes change: 4-10 of 16 answers equal to the
    # model alone, against 16 of 16 in fp32, which was no slower one request at a time; docs/benchmarks.md).
    choice = os.environ.get("TUNEFORGE_SERVING_DTYPE", "auto")
    if choice == "auto":
        dtype = torch.float32 if default_device() == "cpu" else None
    else:
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if choice not in dtypes:
            raise ValueError(f"TUNEFORGE_SERVING_DTYPE={choice!r}: expected auto, {', '.join(dtypes)}")
        dtype = dtypes[choice]
    return load_model(model, adapter, dtype=dtype)


def _find_make_constraint():
    try:
        from tuneforge.constrained import make_constraint
    except ImportError:
        return None
    return make_constraint


class Engine:
    """Continuous batching over every loaded model; `submit` and `cancel` may be called from any thread.

    `load(model, adapter)` -> (model, tokenizer) as tuneforge.models.load_model (called with adapter None for
    a base, with a directory for a full fine-tune or an adapter served merged). With `background=False` no
    thread is started and the caller drives `step()` (tests do, to place arrivals between decode steps).
    """

    def __init__(self, *, load: Callable | None = None, make_constraint: Callable | None = None,
                 adapter_cache_bytes: int | None = None, max_models: int | None = None, max_rows: int = 64,
                 prefill_tokens: int = 4096, background: bool = True):
        self._load = load or _default_load
        self._make_constraint = make_constraint or _find_make_constraint()
        megabytes = int(os.environ.get("TUNEFORGE_ADAPTER_CACHE_MB", DEFAULT_ADAPTER_CACHE_MB))
        self.adapter_cache_bytes = adapter_cache_bytes if adapter_cache_bytes is not None else megabytes << 20
        self.max_models = max_models or int(os.environ.get("TUNEFORGE_ADAPTER_CACHE", "3"))
        self.max_rows, self.prefill_tokens = max_rows, prefill_tokens
        self._wake = threading.Condition()
        self._open = 0  # requests submitted and not yet answered or cancelled
        self._inbox: deque = deque()
        self._requests: dict[str, _Request] = {}
        self._bases: OrderedDict[tuple, _Base] = OrderedDict()
        self._adapters: OrderedDict[tuple, tuple[LoraAdapter | None, object]] = OrderedDict()
        self._loads: dict[tuple, Future] = {}
        self._parked: dict[tuple, list[_Request]] = {}
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="tuneforge-load")
        self._closed = False
        # Counters for tests and benchmarks: forwards run, and prefills that joined rows already decoding.
        self.stats = {"prefills": 0, "decode_steps": 0, "joined_running": 0, "max_rows": 0}
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="tuneforge-scheduler", daemon=True)
            self._thread.start()

    # The API, any thread

    def submit(self, request: GenerationRequest | dict, emit: Callable[[dict], None]) -> None:
        """Queue a request (a GenerationRequest, or a request line's dict: checked here, errors go to emit)."""
        if isinstance(request, dict):
            try:
                request = GenerationRequest.from_json(request)
            except RequestError as exc:
                emit({"id": request.get("id"), "error": str(exc), "status": exc.status})
                return

        def answer(message: dict) -> None:
            if "result" in message or "error" in message:
                self._settle()
            emit(message)

        with self._wake:
            self._open += 1
        self._post(("generate", request, answer))

    def cancel(self, request_id: str) -> None:
        self._post(("cancel", request_id, None))

    def idle(self) -> bool:
        """Every submitted request answered, failed or cancelled."""
        with self._wake:
            return self._open == 0

    def _settle(self) -> None:
        with self._wake:
            self._open -= 1

    def close(self) -> None:
        self._closed = True
        self._post(("close", None, None))
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _post(self, item) -> None:
        with self._wake:
            self._inbox.append(item)
            self._wake.notify()

    def _loop(self) -> None:
        import traceback

        while not self._closed:
            try:
                worked = self.step()
            except Exception:  # the scheduler must outlive any one bug
                traceback.print_exc()
                worked = False
            if not worked:
                with self._wake:
                    if not self._inbox and not self._closed:
                        self._wake.wait(timeout=1.0)

    def run_until_idle(self, timeout: float = 120.0) -> None:
        """Step until nothing is queued, loading or running (for callers without the background thread)."""
        deadline = time.monotonic() + timeout
        while self._inbox or self._loads or any(not base.idle for base in self._bases.values()):
            if not self.step():
                time.sleep(0.005)
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not become idle")

    # The scheduler thread

    @torch.inference_mode()
    def step(self) -> bool:
        """Take new requests and cancels, finish loads, prefill arrivals, decode one token for every row."""
        with self._wake:
            items = list(self._inbox)
            self._inbox.clear()
        for kind, payload, emit in items:
            if kind == "cancel":
                request = self._requests.pop(payload, None)
                if request is not None and not request.ended:
                    request.ended = True
                    self._settle()
            elif kind == "generate":
                self._start(payload, emit)
        worked = bool(items) | self._finish_loads()
        for base in list(self._bases.values()):
            try:
                self._drop_ended(base)
                if base.waiting and len(base.choices) < self.max_rows:
                    self._prefill(base)
                    worked = True
                if base.choices:
                    self._decode(base)
                    worked = True
            except Exception as exc:  # a failed forward fails that model's requests, not the process
                import traceback

                traceback.print_exc()
                self._fail_base(base, exc)
        return worked

    def _start(self, spec: GenerationRequest, emit) -> None:
        request = _Request(spec, emit)
        if spec.id in self._requests:
            emit({"id": spec.id, "error": f"request id {spec.id!r} is already in flight", "status": 400})
            return
        self._requests[spec.id] = request
        self._route(request)

    def _fail(self, request: _Request, message: str, status: int) -> None:
        if not request.ended:
            request.ended = True
            self._requests.pop(request.spec.id, None)
            request.emit({"id": request.spec.id, "error": message, "status": status})

    def _route(self, request: _Request) -> None:
        """Admit the request to its model's queue, or park it on the load of what it still lacks."""
        try:
            self._route_or_park(request)
        except (RequestError, UserError) as exc:
            self._fail(request, str(exc), getattr(exc, "status", 400))
        except Exception as exc:
            self._fail(request, f"{type(exc).__name__}: {exc}", 503)

    def _route_or_park(self, request: _Request) -> None:
        spec = request.spec
        if request.base_key is None:
            request.base_key, request.adapter_key = self._keys(spec)
        base = self._bases.get(request.base_key)
        if base is None:
            model, adapter = request.base_key[1], request.base_key[2]
            self._park(request, request.base_key, lambda: self._load(model, adapter))
            return
        self._bases.move_to_end(request.base_key)
        if request.adapter_key is not None and request.adapter is None:
            entry = self._adapters.get(request.adapter_key)
            if entry is None:
                folder = request.adapter_key[2]
                self._park(request, request.adapter_key, lambda: self._read_adapter(base, folder))
                return
            adapter, tokenizer = entry
            if adapter is None:  # not a plain low-rank adapter: serve it merged, as a model of its own
                request.base_key, request.adapter_key = ("merged", spec.model, request.adapter_key[2]), None
                self._route_or_park(request)
                return
            self._adapters.move_to_end(request.adapter_key)
            install(base.model, adapter, base.rows)
            request.adapter, request.tokenizer = adapter, tokenizer
        self._admit(base, request)

    @staticmethod
    def _keys(spec: GenerationRequest) -> tuple[tuple, tuple | None]:
        from tuneforge.models import DEFAULT_MODEL, adapter_base_spec

        if spec.adapter is None:
            return ("model", spec.model or DEFAULT_MODEL, None), None
        folder = Path(spec.adapter).expanduser()
        if (folder / "adapter_config.json").is_file():
            weights = folder / "adapter_model.safetensors"
            if not weights.is_file():
                raise RequestError(f"{spec.adapter}: no adapter_model.safetensors (only safetensors adapters are served)")
            base_spec = spec.model or adapter_base_spec(folder)
            # The file's mtime is part of the key: an adapter rewritten in place is read again.
            return ("model", base_spec, None), ("adapter", base_spec, str(folder.resolve()), weights.stat().st_mtime_ns)
        if (folder / "config.json").is_file():
            return ("full", None, str(folder.resolve())), None
        raise RequestError(f"{spec.adapter}: neither a LoRA adapter (adapter_config.json) nor a model (config.json)")

    def _read_adapter(self, base: _Base, folder: str):
        from tuneforge.models import adapter_tokenizer_dir, load_tokenizer

        adapter = read_lora_adapter(folder, base.targets, base.device, base.dtype)
        tokenizer_dir = adapter_tokenizer_dir(folder)  # the run's chat template, not the base's
        return adapter, (load_tokenizer(tokenizer_dir) if tokenizer_dir is not None and adapter is not None else None)

    def _park(self, request: _Request, key: tuple, load: Callable) -> None:
        self._parked.setdefault(key, []).append(request)
        if key not in self._loads:
            future = self._loader.submit(load)
            future.add_done_callback(lambda _: self._post(("loaded", None, None)))
            self._loads[key] = future

    def _finish_loads(self) -> bool:
        finished = [key for key, future in self._loads.items() if future.done()]
        for key in finished:
            future = self._loads.pop(key)
            parked = [r for r in self._parked.pop(key, []) if not r.ended]
            try:
                loaded = future.result()
            except Exception as exc:
                user_error = isinstance(exc, UserError)
                for request in parked:
                    self._fail(request, str(exc) if user_error else f"{type(exc).__name__}: {exc}", 400 if user_error else 503)
                continue
            if key[0] == "adapter":
                self._adapters[key] = loaded
            else:
                self._bases[key] = _Base(key, *loaded)
            for request in parked:  # before evicting, so that what was just loaded is in use
                self._route(request)
            self._evict_adapters()
            self._evict_models()
        return bool(finished)

    def _in_use(self) -> set[int]:
        return {id(r.adapter) for r in self._requests.values() if r.adapter is not None}

    def _evict_adapters(self) -> None:
        in_use = self._in_use()
        total = sum(a.nbytes for a, _ in self._adapters.values() if a is not None)
        for key, (adapter, _) in list(self._adapters.items()):
            if total <= self.adapter_cache_bytes:
                break
            if adapter is None or id(adapter) not in in_use:
                del self._adapters[key]
                total -= adapter.nbytes if adapter is not None else 0

    def _evict_models(self) -> None:
        for key, base in list(self._bases.items()):
            if len(self._bases) <= self.max_models:
                break
            if base.idle and not any(k[0] == "adapter" and k[1] == key[1] for k in self._loads):
                del self._bases[key]
                for adapter_key in [k for k in self._adapters if key[0] == "model" and k[1] == key[1]]:
                    del self._adapters[adapter_key]

    def _admit(self, base: _Base, request: _Request) -> None:
        spec = request.spec
        request.tokenizer = request.tokenizer or base.tokenizer
        request.prompt = tokenize_prompt(request.tokenizer, spec.messages, spec.tools)
        if len(request.prompt) >= base.max_positions:
            raise RequestError(f"the prompt has {len(request.prompt)} tokens; the model reads at most {base.max_positions}")
        bad = [t for t in spec.logit_bias or {} if not 0 <= t < base.vocab]
        if bad:
            raise RequestError(f"logit_bias names token ids outside the vocabulary (0..{base.vocab - 1}): {bad[:5]}")
        constraints = [None] * spec.n
        if spec.response_format and spec.response_format.get("type", "text") != "text":
            if self._make_constraint is None:
                raise RequestError("response_format needs tuneforge.constrained, which this installation lacks")
            constraints = [self._make_constraint(request.tokenizer, spec.response_format) for _ in range(spec.n)]
        request.choices = [_Choice(request, i, self._sampling(base, spec, i, constraints[i])) for i in range(spec.n)]
        base.waiting.append(request)

    @staticmethod
    def _sampling(base: _Base, spec: GenerationRequest, index: int, constraint) -> RowSampling:
        generator = None
        if spec.temperature > 0:
            # Seeded: choice i of a request with seed s always draws the same numbers, whatever shares its batch.
            seed = (spec.seed + index * 0x9E3779B97F4A7C15) % (1 << 64) if spec.seed is not None else random.getrandbits(63)
            generator = torch.Generator(device=base.device).manual_seed(seed)
        row = RowSampling(spec.temperature, spec.top_p, generator, spec.presence_penalty, spec.frequency_penalty,
                          constraint=constraint, top_logprobs=spec.top_logprobs if spec.logprobs else -1)
        if spec.logit_bias:
            row.bias_ids = torch.tensor(list(spec.logit_bias), device=base.device)
            row.bias_values = torch.tensor(list(spec.logit_bias.values()), device=base.device)
        if spec.presence_penalty or spec.frequency_penalty:
            row.counts = torch.zeros(base.vocab, device=base.device)
        return row

    # Decoding

    def _prefill(self, base: _Base) -> None:
        """Run the prompts waiting for this model in one forward and join their rows to the running batch."""
        from transformers import DynamicCache

        batch, tokens, rows = [], 0, len(base.choices)
        while base.waiting:
            request = base.waiting[0]
            fits = tokens + len(request.prompt) <= self.prefill_tokens and rows + request.spec.n <= self.max_rows
            if request.ended or not batch or fits:
                base.waiting.popleft()
                if not request.ended:
                    batch.append(request)
                    tokens, rows = tokens + len(request.prompt), rows + request.spec.n
                continue
            break
        if not batch:
            return
        width = max(len(r.prompt) for r in batch)
        input_ids = torch.full((len(batch), width), base.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            input_ids[row, width - len(request.prompt):] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt):] = 1
        input_ids, mask = input_ids.to(base.device), mask.to(base.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = base.forward(input_ids, mask, positions, cache, [r.adapter for r in batch])
        self.stats["prefills"] += 1
        self.stats["joined_running"] += bool(base.choices)
        # n choices of a request share its prefill: its cache row is repeated once per choice.
        row_of = [row for row, request in enumerate(batch) for _ in request.choices]
        choices = [choice for request in batch for choice in request.choices]
        going = self._advance(base, choices, logits[row_of])
        if not going:
            return
        index = torch.tensor([row_of[j] for j in going], device=base.device)
        cache.batch_select_indices(index)
        joined = [choices[j] for j in going]
        base.join(cache, mask[index],
                  torch.tensor([len(c.request.prompt) for c in joined], device=base.device),
                  torch.tensor([c.ids[-1] for c in joined], device=base.device), joined)

    def _decode(self, base: _Base) -> None:
        """One token for every running row, whatever its adapter."""
        base.mask = torch.cat([base.mask, base.mask.new_ones((len(base.choices), 1))], dim=1)
        logits = base.forward(base.last[:, None], base.mask, base.positions[:, None], base.cache,
                              [c.request.adapter for c in base.choices])
        base.positions = base.positions + 1
        self.stats["decode_steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(base.choices))
        going = self._advance(base, base.choices, logits)
        base.last = torch.tensor([c.ids[-1] if c.ids else base.pad_id for c in base.choices], device=base.device)
        base.keep_rows(going)

    def _drop_ended(self, base: _Base) -> None:
        if any(c.request.ended for c in base.choices):
            base.keep_rows([i for i, c in enumerate(base.choices) if not c.request.ended])

    def _fail_base(self, base: _Base, exc: Exception) -> None:
        for request in [*{id(c.request): c.request for c in base.choices}.values(), *base.waiting]:
            self._fail(request, f"generation failed: {type(exc).__name__}: {exc}", 503)
        base.waiting.clear()
        base.keep_rows([])

    def _advance(self, base: _Base, choices: list[_Choice], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token and act on it. Returns the positions of the rows still going."""
        live = [j for j, c in enumerate(choices) if not c.request.ended]
        try:
            tokens, reports = choose_tokens(logits[live], [choices[j].sampling for j in live])
        except ConstraintDeadEnd as dead:
            self._fail(choices[live[dead.args[0]]].request, "the response_format constraint allowed no next token", 400)
            return self._advance(base, choices, logits)
        going = []
        for j, token, report in zip(live, tokens, reports, strict=True):
            choice = choices[j]
            request = choice.request
            if request.ended:  # another choice of it failed meanwhile
                continue
            if token in base.eos_ids:
                self._finish(choice, "stop")
                continue
            choice.ids.append(token)
            choice.sampling.record(token)
            if report is not None:
                choice.entries.append(self._entry(request.tokenizer, token, report))
            constraint = choice.sampling.constraint
            if constraint is not None:
                constraint.advance(token)
            if request.needs_text:
                choice.offsets.append(len(choice.text))
                choice.text = request.tokenizer.decode(choice.ids, skip_special_tokens=True)
                if _first_stop(choice.text, request.spec.stop) is not None:
                    self._finish(choice, "stop")
                    continue
                if request.spec.stream and not choice.text.endswith("\ufffd"):
                    self._stream(choice, _streamable_end(choice.text, request.spec.stop))
            if constraint is not None and constraint.is_finished():
                self._finish(choice, "stop")
            elif len(choice.ids) >= request.spec.max_new_tokens or len(request.prompt) + len(choice.ids) >= base.max_positions:
                self._finish(choice, "length")
            else:
                going.append(j)
        return going

    def _entry(self, tokenizer, token: int, report) -> dict:
        logprob, alternatives = report

        def described(token_id: int) -> dict:
            text = tokenizer.decode([token_id])
            return {"token": text, "bytes": _token_bytes(tokenizer, token_id, text)}

        top = [{**described(t), "logprob": value} for t, value in alternatives]
        return {**described(token), "logprob": logprob, "top_logprobs": top}

    def _stream(self, choice: _Choice, end: int) -> None:
        """Send the text up to `end` not yet sent, with the logprob entries of the tokens it starts."""
        spec = choice.request.spec
        piece = choice.text[choice.emitted:end]
        sent = choice.entries_sent
        while sent < len(choice.entries) and choice.offsets[sent] < end:
            sent += 1
        if not piece and sent == choice.entries_sent:
            return
        message = {"id": spec.id, "index": choice.index, "token": piece}
        if spec.logprobs:
            message["logprobs"] = choice.entries[choice.entries_sent:sent]
        choice.emitted, choice.entries_sent = max(choice.emitted, end), sent
        choice.request.emit(message)

    def _finish(self, choice: _Choice, reason: str) -> None:
        request, spec = choice.request, choice.request.spec
        if not request.needs_text:
            choice.text = request.tokenizer.decode(choice.ids, skip_special_tokens=True)
        cut = _first_stop(choice.text, spec.stop)
        if cut is not None:
            choice.text = choice.text[:cut]
            # A token counts as answered when its text starts before the stop string.
            choice.entries = choice.entries[: sum(1 for start in choice.offsets if start < cut)]
        if spec.stream:
            choice.offsets = choice.offsets[: len(choice.entries)]
            self._stream(choice, len(choice.text))
            if choice.entries_sent < len(choice.entries):  # tokens with no text of their own
                choice.request.emit({"id": spec.id, "index": choice.index, "token": "",
                                     "logprobs": choice.entries[choice.entries_sent:]})
        request.completion_tokens += len(choice.ids)
        request.done[choice.index] = {
            "index": choice.index,
            "text": choice.text,
            "finish_reason": reason,
            "logprobs": {"content": choice.entries} if spec.logprobs else None,
        }
        if len(request.done) == spec.n:
            request.ended = True
            self._requests.pop(spec.id, None)
            choices = [request.done[i] for i in range(spec.n)]
            request.emit({"id": spec.id, "result": {"choices": choices, "prompt_tokens": len(request.prompt),
                                                     "completion_tokens": request.completion_tokens}})
