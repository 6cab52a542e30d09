"""How long and how much memory a run will take, measured on the real model:  tuneforge validate train.jsonl --model M

`tuneforge validate` calls `estimate_training` at the end of a clean report (unless --no-estimate). It
builds the model as training would (`trainable.build_model`) and runs two short SFT steps
(`recipes.sft.micro_batch_loss_sum`), which is why it lives above data/: the data layer never imports
the model runner or a recipe. The figures measured on real models are in docs/benchmarks.md.
"""

from __future__ import annotations

import resource
import time

import torch

from tuneforge.config import build_config
from tuneforge.data.batching import collate
from tuneforge.data.validate import ValidationReport, auto_epochs
from tuneforge.recipes.sft import micro_batch_loss_sum
from tuneforge.trainable import build_model, make_optimizer


def estimate_training(report: ValidationReport, model_spec: str, epochs: float | None = None, batch_size: int = 8,
                      calibration_tokens: int = 512) -> dict:
    """Time and peak memory for the run, from real forward+backward+optimizer steps on the actual model.

    Two short steps: (A) the longest example alone, which also warms up and allocates the optimizer state,
    then (B) a micro-batch of the longest examples (at most `calibration_tokens` tokens). Seconds per
    token come from the warm step B and are scaled to every token of every epoch. Memory: the growth of
    peak memory from A to B, per token, scaled to the largest micro-batch training will build (batch_size x
    longest example, capped at micro_batch_tokens). Both are linear extrapolations of a short measurement:
    attention grows faster than linearly with length, and on a busy machine the time varies with load.
    """
    if not report.longest:
        return {}
    config = build_config({"data": report.path, "model": model_spec, "max_length": report.max_length,
                           "batch_size": batch_size})
    epochs = epochs if epochs is not None else auto_epochs(report.n_examples)
    started = time.perf_counter()
    model, _tokenizer, device, dtype = build_model(config)
    load_seconds = time.perf_counter() - started
    optimizer = make_optimizer(model, config)
    batch_examples, tokens = [], 0
    for length, _line, _id, example in sorted(report.longest, key=lambda item: -item[0]):
        if batch_examples and (len(batch_examples) >= batch_size or tokens + length > calibration_tokens):
            break
        batch_examples.append(example)
        tokens += length

    def peak_mb() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    step_seconds, cpu_seconds, peaks = [], [], []
    for examples in (batch_examples[:1], batch_examples):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        batch = collate(examples, 0, device)
        loss_sum, n_targets = micro_batch_loss_sum(model, batch)
        (loss_sum / max(n_targets, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - begin)
        cpu_seconds.append(time.process_time() - begin_cpu)
        peaks.append(peak_mb())
    first_tokens = len(batch_examples[0].input_ids)
    per_token_mb = (peaks[1] - peaks[0]) / (tokens - first_tokens) if tokens > first_tokens else 0.0
    longest = max(report.lengths) if report.lengths else tokens
    train_micro_tokens = min(batch_size * min(longest, report.max_length), config.resolved_micro_batch_tokens(device))
    seconds_per_token = step_seconds[-1] / tokens
    # On a shared CPU the wall time follows other people's load; CPU time / threads is what the same step
    # takes on an otherwise idle machine (the two agree when nothing else runs).
    idle_seconds_per_token = min(step_seconds[-1], cpu_seconds[-1] / max(1, torch.get_num_threads())) / tokens
    # DPO: policy forward+backward on both answers (counted in n_tokens) plus a no-grad reference forward.
    method_factor = 4 / 3 if report.method == "dpo" else 1.0
    train_tokens = report.n_tokens * epochs
    return {
        "model": model_spec,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "epochs": epochs,
        "batch_size": batch_size,
        "calibration_examples": len(batch_examples),
        "calibration_tokens": tokens,
        "calibration_step_seconds": [round(s, 3) for s in step_seconds],
        "model_load_seconds": round(load_seconds, 2),
        "seconds_per_token": round(seconds_per_token, 6),
        "train_tokens": train_tokens,
        "train_seconds": round(train_tokens * seconds_per_token * method_factor, 3),
        "calibration_cpu_seconds": [round(s, 3) for s in cpu_seconds],
        "train_seconds_if_idle": round(train_tokens * idle_seconds_per_token * method_factor, 3)
        if device == "cpu" else None,
        "calibration_peak_memory_mb": round(peaks[1], 1),
        "peak_memory_mb": round(peaks[1] + max(0.0, per_token_mb) * max(0, train_micro_tokens - tokens), 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "resident memory (RSS)",
        "threads": torch.get_num_threads(),
        "peak_memory_micro_batch_tokens": train_micro_tokens,
    }
