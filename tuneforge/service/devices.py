"""tuneforge serve --workers 2 --gpus 0,1 [--gpus-per-worker 1] [--inference-gpu 2] | tuneforge worker --gpus 0,1:
which GPUs each process of the service may use, handed to it (and so to its trainers) as CUDA_VISIBLE_DEVICES.

Without placement every worker and the inference process open the default device, so on a machine with
several GPUs they all pile onto GPU 0. Here:
- a worker is given its devices (`--gpus`, else what CUDA_VISIBLE_DEVICES or nvidia-smi show; `none`: CPU
  only), and its environment says so before any trainer starts, so the `tuneforge train` child inherits it;
- `serve` splits its devices between its embedded workers, `--gpus-per-worker` each (default 1); a list too
  short for that is a usage error, while GPUs found rather than named are shared round-robin instead;
- the inference process gets `--inference-gpu` (or the default device, as before);
- a job asking for N processes (torchrun, `tuneforge train --nproc N`) runs only on a worker that has N
  devices, or up to `max_cpu_processes` on a worker without GPUs; `check_processes` says why not.

Ids are the ones nvidia-smi prints (indices or GPU-/MIG- UUIDs): CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA
number devices as nvidia-smi does (its own default order is fastest first).
"""

from __future__ import annotations

import os
import re
import subprocess

from tuneforge.service.settings import Settings

DEVICE_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")


def parse_gpus(text: str) -> tuple[str, ...]:
    """`--gpus 0,1` (indices or UUIDs, as nvidia-smi prints them) or `none`. Raises ValueError saying what
    is wrong."""
    text = text.strip()
    if text.lower() == "none":
        return ()
    devices = tuple(part.strip() for part in text.split(","))
    bad = [device for device in devices if not DEVICE_ID.match(device)]
    if bad or not devices:
        raise ValueError(f"--gpus {text!r}: expected GPU indices or UUIDs separated by commas (0,1), or none")
    if len(set(devices)) != len(devices):
        raise ValueError(f"--gpus {text!r}: a GPU is listed twice")
    return devices


def visible_gpus() -> list[str]:
    """The GPUs this process may use when nobody said: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list
    (no torch: the service's processes never import it), else none."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        devices = []
        for part in os.environ["CUDA_VISIBLE_DEVICES"].split(","):
            part = part.strip()
            if not DEVICE_ID.match(part):  # CUDA stops at the first invalid entry ("-1" hides every GPU)
                break
            devices.append(part)
        return devices
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]


def worker_devices(settings: Settings) -> list[str]:
    """The GPUs a worker's jobs may use: its --gpus / TUNEFORGE_GPUS, else those visible to it."""
    return list(settings.gpus) if settings.gpus is not None else visible_gpus()


def trainer_env(devices: list[str] | tuple[str, ...]) -> dict[str, str]:
    """What a child must see to use exactly `devices` (none: no GPU at all)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(devices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def worker_env(devices: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A worker's environment for its share: the devices in its settings (TUNEFORGE_GPUS) and, for its
    trainer children, in CUDA_VISIBLE_DEVICES."""
    return {"TUNEFORGE_GPUS": ",".join(devices) or "none", **trainer_env(devices)}


def split_devices(settings: Settings, n_workers: int) -> tuple[list[list[str]] | None, str | None]:
    """Each embedded worker's devices, and a note for the operator (or None). None instead of the list:
    no GPU was named or found, so the workers keep the environment they inherit. Raises ValueError when
    the named GPUs cannot give every worker its share."""
    named = settings.gpus is not None
    devices = worker_devices(settings)
    per_worker = settings.gpus_per_worker or 1
    if per_worker < 1:
        raise ValueError(f"--gpus-per-worker {per_worker}: expected 1 or more")
    if not devices:
        return ([[] for _ in range(n_workers)] if named else None), None
    needed = n_workers * per_worker
    if needed > len(devices):
        if named or settings.gpus_per_worker:
            raise ValueError(
                f"{n_workers} workers x {per_worker} GPU(s) each need {needed} GPUs; --gpus gives {len(devices)} "
                f"({','.join(devices)}): start fewer workers or lower --gpus-per-worker"
            )
        # Found, not named: keep every worker running, as before placement existed, but spread them out.
        shares = [[devices[(i * per_worker + j) % len(devices)] for j in range(per_worker)] for i in range(n_workers)]
        return shares, f"{n_workers} workers share {len(devices)} GPU(s) ({','.join(devices)}); name them with --gpus"
    shares = [devices[i * per_worker : (i + 1) * per_worker] for i in range(n_workers)]
    unused = devices[needed:]
    note = f"GPU(s) {','.join(unused)} not given to any worker (--workers / --gpus-per-worker)" if unused else None
    return shares, note


def inference_env(settings: Settings) -> dict[str, str]:
    """The inference process's device: --inference-gpu, else whatever it inherits."""
    return trainer_env([settings.inference_gpu]) if settings.inference_gpu else {}


def check_processes(n: int, devices: list[str], *, max_cpu_processes: int = 1) -> str | None:
    """Why a worker holding `devices` cannot run a job of `n` processes (one per GPU; on a worker without
    GPUs, at most `max_cpu_processes`); None when it can."""
    if n < 1:
        return f"n_processes must be 1 or more, got {n}"
    if devices:
        if n > len(devices):
            return (
                f"the job asks for {n} processes, one per GPU, but its worker has {len(devices)} GPU(s) "
                f"({','.join(devices)}): ask for at most {len(devices)}, or run a worker with more (--gpus)"
            )
        return None
    if n > max_cpu_processes:
        return (
            f"the job asks for {n} processes but its worker has no GPU and allows {max_cpu_processes} CPU "
            "process(es) (TUNEFORGE_MAX_CPU_PROCESSES)"
        )
    return None


def nproc_args(n: int) -> list[str]:
    """The trainer arguments for `n` processes: `--nproc N` (torchrun --standalone) when more than one."""
    return ["--nproc", str(n)] if n > 1 else []
