"""python bench/serving.py [--data-dir DIR] [--max-tokens 64] [--no-peer]: the serving benchmark of issue 19.

Starts `tuneforge serve` on loopback (the real inference process, the embedded SmolLM2-135M-Instruct), makes
four `ft:` models through the API with tiny real jobs (one step, no evaluation) whose adapters' B matrices are
then filled with random values (a one-step adapter answers like the base; random B makes four models that
answer differently), and drives chat completions with the official `openai` SDK, streaming:

  * one request at a time: 16 prompts over 1 adapter and the same 16 over 4 adapters (the sequential
    baseline; these are also each model's answers "alone");
  * 4, 16 and 64 concurrent streams over 1 and over 4 adapters (max(c, 16) requests, c in flight);
  * the peer: the same prompts, one adapter merged and exported to GGUF (`tuneforge export --format gguf`),
    served by llama-cpp-python's server (`python -m llama_cpp.server`), at 1, 4 and 16 concurrent streams.

Reports total completion tokens/s, time to first token, p50/p99 latency, the machine's load, and whether every
greedy answer under concurrency equals the answer the same model gave alone. The done-when of issue 19:
16 concurrent requests over 4 ft: models reach at least 4x the tokens/s of the same requests sent one at a
time, in the same run. The data dir (jobs, adapters, the GGUF) is kept, so a second run skips the training.
Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
BASE = "smollm2-135m-instruct"
ADAPTERS = 4
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a busy market in the morning.",
    "Give me advice for my first day at a new job.",
    "Explain why the sky is blue to a ten-year-old.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe how bread is made, from flour to loaf.",
    "What should I think about before adopting a dog?",
    "Write a poem about autumn rain.",
    "Explain what a computer program is.",
    "Describe the life cycle of a butterfly.",
    "Tell me about the history of the bicycle.",
    "How do I plan a small vegetable garden?",
    "Write a product description for a wooden chair.",
    "Explain how a bill becomes a law.",
    "Describe a thunderstorm from the point of view of a cat.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


class Process:
    """A server in its own process group, logging to a file; `stop` takes the group down."""

    def __init__(self, command: list[str], log: Path, ready_url: str, env: dict | None = None):
        self.command, self.log, self.ready_url = command, log, ready_url
        self.env = env if env is not None else dict(os.environ)
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Process:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.command[:4]} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.command[:4]} did not answer {self.ready_url}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the four ft: models ------------------------------------------------------------------------------------


def training_rows(n: int = 12) -> str:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


def make_models(client: openai.OpenAI, data_dir: Path) -> list[tuple[str, Path]]:
    """Four succeeded jobs' (ft: model, run dir): the ones a previous run made, else four new one-step jobs."""
    done = [j for j in client.fine_tuning.jobs.list(limit=100) if j.status == "succeeded" and j.fine_tuned_model]
    if len(done) < ADAPTERS:
        path = data_dir.parent / "bench-train.jsonl"
        path.write_text(training_rows())
        training = client.files.create(file=path.open("rb"), purpose="fine-tune")
        ids = [
            client.fine_tuning.jobs.create(
                model=BASE,
                training_file=training.id,
                suffix=f"bench{i}",
                seed=i + 1,
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
                extra_body={"tuneforge": {"evaluate": False}},
            ).id
            for i in range(ADAPTERS - len(done))
        ]
        deadline = time.monotonic() + 1800
        while True:
            jobs = [client.fine_tuning.jobs.retrieve(i) for i in ids]
            if all(j.status in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not done after 30 min: {[j.status for j in jobs]}")
            time.sleep(2)
        failed = [f"{j.id}: {j.error}" for j in jobs if j.status != "succeeded"]
        if failed:
            raise RuntimeError(f"a model-making job failed: {failed}")
        done += jobs
    models = [(j.fine_tuned_model, data_dir / "runs" / j.id) for j in sorted(done, key=lambda j: j.created_at)]
    for seed, (_, run_dir) in enumerate(models[:ADAPTERS]):
        randomize_adapter(run_dir, seed)
    return models[:ADAPTERS]


def randomize_adapter(run_dir: Path, seed: int, std: float = 0.01) -> None:
    """Replace the adapter's B matrices (near zero after one step) with N(0, std) values, once."""
    import torch
    from safetensors.torch import load_file, save_file

    marker = run_dir / "bench-randomized"
    if marker.exists():
        return
    weights = run_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    generator = torch.Generator().manual_seed(1000 + seed)
    for name, tensor in tensors.items():
        if ".lora_B." in name:
            tensors[name] = (torch.randn(tensor.shape, generator=generator) * std).to(tensor.dtype)
    save_file(tensors, str(weights.with_suffix(".tmp")), metadata={"format": "pt"})
    os.replace(weights.with_suffix(".tmp"), weights)
    marker.write_text("lora_B ~ N(0, 0.01) by bench/serving.py\n")


# --- driving chat completions ------------------------------------------------------------------------------


@dataclass
class Answer:
    model: str
    prompt: int
    text: str = ""
    tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    error: str | None = None


async def ask(client: openai.AsyncOpenAI, model: str, prompt: int, max_tokens: int) -> Answer:
    answer = Answer(model, prompt)
    start = time.perf_counter()
    pieces, chunks = [], 0
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPTS[prompt]}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                answer.tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    if not pieces:
                        answer.ttft = time.perf_counter() - start
                    pieces.append(choice.delta.content)
                    chunks += 1
    except openai.OpenAIError as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    answer.latency = time.perf_counter() - start
    answer.text = "".join(pieces)
    answer.tokens = answer.tokens or chunks  # a server without usage in streams: one token per chunk
    return answer


async def run_plan(
    client: openai.AsyncOpenAI, plan: list[tuple[str, int]], concurrency: int, max_tokens: int
) -> tuple[list[Answer], float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(model: str, prompt: int) -> Answer:
        async with gate:
            return await ask(client, model, prompt, max_tokens)

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(m, p) for m, p in plan))
    return list(answers), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


def summarize(
    server: str, name: str, concurrency: int, answers: list[Answer], wall: float, load_seen: str, alone: dict | None
) -> dict:
    good = [a for a in answers if a.error is None]
    tokens = sum(a.tokens for a in good)
    row = {
        "server": server,
        "scenario": name,
        "concurrency": concurrency,
        "requests": len(answers),
        "errors": len(answers) - len(good),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "ttft_p50_s": round(percentile([a.ttft for a in good], 50), 3),
        "latency_p50_s": round(percentile([a.latency for a in good], 50), 2),
        "latency_p99_s": round(percentile([a.latency for a in good], 99), 2),
        "load": load_seen,
    }
    if alone is not None:
        row["equal_to_alone"] = sum(alone.get((a.model, a.prompt)) == a.text for a in good)
    errors = [a.error for a in answers if a.error]
    if errors:
        row["first_error"] = errors[0][:300]
    return row


def plan_for(models: list[str], requests: int) -> list[tuple[str, int]]:
    """Request i asks prompt i % 16 of model i % len(models) (with 4 models, the model follows the prompt)."""
    return [(models[i % len(models)], i % len(PROMPTS)) for i in range(requests)]


def table(rows: list[dict]) -> str:
    head = (
        "| server | scenario | concurrent | requests | tokens | wall s | tokens/s | TTFT p50 s | latency p50 s "
        "| latency p99 s | equal to alone | load (1/5/15 min) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        equal = f"{r['equal_to_alone']}/{r['requests'] - r['errors']}" if "equal_to_alone" in r else "—"
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(
            f"| {r['server']} | {r['scenario']} | {r['concurrency']} | {r['requests']}{errors} | "
            f"{r['completion_tokens']} | {r['wall_s']} | {r['tokens_per_s']} | {r['ttft_p50_s']} | "
            f"{r['latency_p50_s']} | {r['latency_p99_s']} | {equal} | {r['load']} |"
        )
    return "\n".join(lines)


def inference_pid(server_pid: int) -> int | None:
    """The inference process (tuneforge.service.inference) started by the server with pid `server_pid`."""
    import psutil

    for child in psutil.Process(server_pid).children(recursive=True):
        if "tuneforge.service.inference" in " ".join(child.cmdline()):
            return child.pid
    return None


def start_profile(server_pid: int | None, output: Path | None) -> subprocess.Popen | None:
    """py-spy sampling the inference process (every thread, GIL-free samples included) until stopped."""
    pid = inference_pid(server_pid) if server_pid and output else None
    if pid is None:
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--output", str(output), "--threads"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(profiler: subprocess.Popen | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        profiler.wait(timeout=60)


def profile_summary(path: Path, top: int = 12) -> str:
    """Where the scheduler thread's samples of a py-spy raw profile end (the Python line that was running,
    torch's kernels included), and the share spent under each tuneforge/serving.py and multi_lora.py frame."""
    leaf, inclusive, total = {}, {}, 0
    lines = path.read_text().splitlines()
    scheduler = [line for line in lines if "tuneforge-scheduler" in line or "_loop (tuneforge/serving.py" in line]
    for line in scheduler or lines:
        stack, _, count = line.rpartition(" ")
        frames, count = stack.split(";")[1:], int(count)
        total += count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        for frame in {f for f in frames if "tuneforge/" in f and "_loop" not in f and "step (" not in f}:
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(counts: dict) -> list[str]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in best]

    return "\n".join(["running line:", *ranked(leaf), "under tuneforge frame:", *ranked(inclusive)])


async def measure_ours(
    base_url: str,
    key: str,
    models: list[str],
    max_tokens: int,
    concurrencies: list[int],
    server_pid: int | None = None,
    profile: Path | None = None,
) -> tuple[list[dict], dict]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=1800)
    rows, alone = [], {}
    # Warm-up: the inference process starts, the base and all four adapters load, kernels are touched.
    warm, _ = await run_plan(client, [(m, 0) for m in models], len(models), 8)
    if any(a.error for a in warm):
        raise RuntimeError(f"warm-up failed: {[a.error for a in warm if a.error]}")
    for label, chosen in (("1 adapter", models[:1]), (f"{len(models)} adapters", models)):
        # One at a time: the sequential baseline, and every (model, prompt)'s answer alone.
        loaded = load()
        answers, wall = await run_plan(client, plan_for(chosen, len(PROMPTS)), 1, max_tokens)
        alone.update({(a.model, a.prompt): a.text for a in answers if a.error is None})
        rows.append(summarize("tuneforge", f"{label}, one at a time", 1, answers, wall, loaded, None))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    for concurrency in concurrencies:
        if concurrency == 1:
            continue
        for label, chosen in (("1 adapter", models[:1]), (f"{len(models)} adapters", models)):
            loaded = load()
            profiler = start_profile(server_pid, profile) if (concurrency, len(chosen)) == (16, ADAPTERS) else None
            answers, wall = await run_plan(
                client, plan_for(chosen, max(concurrency, len(PROMPTS))), concurrency, max_tokens
            )
            stop_profile(profiler)
            if profiler is not None and profile.exists():
                print(f"py-spy, scheduler thread, inclusive ({profile}):\n{profile_summary(profile)}", flush=True)
            rows.append(summarize("tuneforge", label, concurrency, answers, wall, loaded, alone))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            differing = [a for a in answers if a.error is None and alone.get((a.model, a.prompt)) != a.text]
            for a in differing[:3]:  # where the first few part from the answer alone
                mine, theirs = a.text, alone.get((a.model, a.prompt)) or ""
                at = next(
                    (i for i, (x, y) in enumerate(zip(mine, theirs, strict=False)) if x != y),
                    min(len(mine), len(theirs)),
                )
                print(
                    f"  differs from alone at character {at}: {mine[max(0, at - 30) : at + 30]!r} vs "
                    f"{theirs[max(0, at - 30) : at + 30]!r}",
                    flush=True,
                )
    await client.close()
    return rows, alone


async def measure_peer(base_url: str, max_tokens: int, ours_alone: dict, model0: str) -> list[dict]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=1800)
    await run_plan(client, [("peer", 0)], 1, 8)  # warm-up
    rows, alone = [], {}
    for concurrency in (1, 4, 16):
        loaded = load()
        answers, wall = await run_plan(client, plan_for(["peer"], len(PROMPTS)), concurrency, max_tokens)
        if concurrency == 1:
            alone = {(a.model, a.prompt): a.text for a in answers if a.error is None}
            same = sum(ours_alone.get((model0, a.prompt)) == a.text for a in answers)
            print(f"  llama.cpp's greedy answers equal to tuneforge's (same adapter): {same}/{len(answers)}")
        name = "1 adapter (merged GGUF)" + (", one at a time" if concurrency == 1 else "")
        rows.append(
            summarize("llama.cpp", name, concurrency, answers, wall, loaded, alone if concurrency > 1 else None)
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    await client.close()
    return rows


def start_peer(run_dir: Path, work: Path, threads: int) -> tuple[Process | None, str]:
    """llama-cpp-python's server on the merged GGUF of `run_dir`, or None and the reason it cannot run."""
    try:
        import llama_cpp  # noqa: F401
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        return None, (
            f"llama-cpp-python[server] is not importable ({exc}); build it with "
            "`bash scripts/install_llama_cpp.sh .venv/bin/python` and install sse-starlette, "
            "starlette-context, pydantic-settings"
        )
    gguf = work / f"{run_dir.name}-f16.gguf"
    if not gguf.exists():
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tuneforge",
                "export",
                "--adapter",
                str(run_dir),
                "--format",
                "gguf",
                "--output",
                str(gguf),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode != 0:
            return None, f"tuneforge export --format gguf failed: {done.stderr[-1000:]}"
    port = free_port()
    threads = str(threads)
    peer = Process(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--n_ctx",
            "4096",
            # by default a new request interrupts the one running; queue them instead, as a client expects
            "--interrupt_requests",
            "False",
        ],
        work / "llama-server.log",
        f"http://127.0.0.1:{port}/v1/models",
    )
    try:
        return peer.start(), f"http://127.0.0.1:{port}/v1"
    except RuntimeError as exc:
        return None, f"llama_cpp.server did not start: {exc}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path.home() / ".cache" / "tuneforge-bench" / "serving",
        help="the server's data dir (kept: a second run reuses its four ft: models)",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated concurrent streams")
    parser.add_argument("--no-peer", action="store_true", help="skip llama.cpp's server")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="compute threads for both servers (OMP_NUM_THREADS for tuneforge's inference process, n_threads for "
        "llama.cpp); on a CPU shared with other work 1 avoids waiting on descheduled OpenMP threads",
    )
    parser.add_argument("--output", type=Path, help="write every row as JSON here")
    parser.add_argument(
        "--py-spy", type=Path, help="record the inference process with py-spy (raw stacks) during 16 over 4 adapters"
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    work = data_dir.parent

    env = {
        "PYTHONPATH": str(ROOT),
        "TUNEFORGE_MAX_STEPS": "1",
        "TUNEFORGE_ESTIMATE": "0",
        "TUNEFORGE_SAVE_EVERY": "1000",
        "TUNEFORGE_LEASE_SECONDS": "120",
        "TUNEFORGE_POLL_SECONDS": "0.5",
        # the bench measures the engine, not the service's rate limits and queue caps
        "TUNEFORGE_CHAT_TOKENS_PER_MINUTE": "0",
        "TUNEFORGE_REQUESTS_PER_MINUTE": "0",
        "TUNEFORGE_CHAT_MAX_PENDING": "1024",
        "OMP_NUM_THREADS": str(args.threads),
    }
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}, **env}
    store = ["--data-dir", str(data_dir)]
    port = free_port()
    server = Process(
        [
            sys.executable,
            "-m",
            "tuneforge",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            *store,
        ],
        work / "tuneforge-server.log",
        f"http://127.0.0.1:{port}/healthz",
        env,
    )
    print(f"load before: {load()}; {args.threads} compute thread(s) per server", flush=True)
    server.start()
    peer = None
    try:
        key = subprocess.run(
            [sys.executable, "-m", "tuneforge", "keys", "create", "--org", "bench", *store],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.split()[-1]
        base_url = f"http://127.0.0.1:{port}/v1"
        started = time.monotonic()
        made = make_models(openai.OpenAI(base_url=base_url, api_key=key, timeout=120), data_dir)
        models = [m for m, _ in made]
        print(f"models ({time.monotonic() - started:.0f} s): {models}", flush=True)
        rows, alone = asyncio.run(
            measure_ours(base_url, key, models, args.max_tokens, concurrencies, server.popen.pid, args.py_spy)
        )
        differ = sum(
            alone.get((models[0], p)) != alone.get((models[p % len(models)], p))
            for p in range(len(PROMPTS))
            if p % len(models)
        )
        print(
            f"the adapters change the answers: {differ}/12 prompts answered differently by another adapter "
            "than by the first",
            flush=True,
        )
        if not args.no_peer:
            peer, peer_url = start_peer(made[0][1], work, args.threads)
            if peer is None:
                print(f"the peer did not run: {peer_url}", flush=True)
            else:
                rows += asyncio.run(measure_peer(peer_url, args.max_tokens, alone, models[0]))
    finally:
        if peer is not None:
            peer.stop()
        server.stop()
    print(f"\nload after: {load()}\n")
    print(table(rows))
    by = {(r["server"], r["scenario"], r["concurrency"]): r for r in rows}
    sequential = by.get(("tuneforge", f"{ADAPTERS} adapters, one at a time", 1))
    concurrent = by.get(("tuneforge", f"{ADAPTERS} adapters", 16))
    if sequential and concurrent:
        ratio = concurrent["tokens_per_s"] / sequential["tokens_per_s"]
        equal = concurrent["equal_to_alone"] == concurrent["requests"] and not concurrent["errors"]
        every = all(
            r.get("equal_to_alone", r["requests"] - r["errors"]) == r["requests"]
            for r in rows
            if r["server"] == "tuneforge"
        )
        print(
            f"\ndone-when: 16 concurrent over {ADAPTERS} ft: models / one at a time = {ratio:.2f}x (needs >= 4x); "
            f"their answers equal each model alone: {equal}; every concurrent tuneforge answer equal: {every}"
        )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
