"""What a run writes, written so that a crash never leaves a half-file behind.

Final outputs: a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) or a full model in
safetensors, the tokenizer with its chat template, `train_config.json`, `metrics.jsonl`, `summary.json`.

Checkpoints (`checkpoints/step-N/`): trainable weights, optimizer state, RNG states (torch, python,
numpy), the position in the data (epoch, step in epoch; the order is a pure function of seed and epoch)
and the run's config, all in safetensors + JSON (nothing is ever unpickled). A LoRA run's checkpoint also
holds a usable `adapter/` with the tokenizer and the chat template the run trained with, as the final
output does, so a checkpoint is served and evaluated in the run's own template. The learning-rate schedule is
a pure function of the step, so the step is its whole state. Each is written into a staging folder,
fsynced, its `manifest.json` written last, then renamed into place: a folder without a manifest is
incomplete and ignored by resume.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneforge.distributed import full_state_dict, full_tensor, is_sharded, shard_like
from tuneforge.runfiles import MANIFEST, complete_checkpoints  # noqa: F401  (re-exported: recipes import it here)


def write_json_atomic(path: Path, payload: Any) -> None:
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model, tokenizer, folder: Path, writer: bool = True) -> None:
    """The usable result: a PEFT adapter, or a full model, plus the tokenizer and chat template.

    An FSDP-sharded model is gathered whole first (every rank calls this; only the writer saves).
    """
    whole = full_state_dict(model) if is_sharded(model) else None
    if not writer:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if whole is None:
        model.save_pretrained(folder, safe_serialization=True, **adapter_conversion(model))
    else:
        model.save_pretrained(folder, state_dict=whole, safe_serialization=True, **adapter_conversion(model))
    tokenizer.save_pretrained(folder)


def adapter_conversion(model) -> dict:
    """save_pretrained's arguments that turn a PiSSA / OLoRA adapter (trained against the residual its
    initialisation left in the base) into plain LoRA for the original base; none for any other model. The
    initial adapter is written by `trainable.new_adapter`."""
    initial = getattr(model, "initial_adapter_dir", None) if is_peft_model(model) else None
    return {"path_initial_model_for_weight_conversion": initial} if initial else {}


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trained weights by name, whole (FSDP shards are gathered: every rank must call this)."""
    return {
        name: full_tensor(p).detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad
    }


def _optimizer_to_flat(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for param_id, slots in state["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{slot}"] = full_tensor(value).detach().contiguous()
            else:
                meta["scalars"][f"{param_id}.{slot}"] = value
    return tensors, meta


def _optimizer_from_flat(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = value
    for key, value in meta["scalars"].items():
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = value
    # Optimizer ids number the parameters in group order; moments shaped like a sharded parameter are
    # laid out like it (a checkpoint written by N processes loads into M).
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param_id, slots in state.items():
        for slot, value in slots.items():
            if torch.is_tensor(value) and value.shape == params[param_id].shape:
                slots[slot] = shard_like(value, params[param_id])
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_snapshot() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def rng_restore(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    optimizer,
    progress: dict,
    keep: int,
    config: dict | None = None,
    writer: bool = True,
    tokenizer=None,
) -> Path:
    """Atomically write checkpoints/step-N and keep only the newest `keep` complete ones.

    Under torchrun every rank calls this (gathering FSDP shards is collective); only the `writer` (rank 0)
    touches the disk. The files are the same whatever the number of processes.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    weights = trainable_state(model)
    optim_tensors, optim_meta = _optimizer_to_flat(optimizer)
    if not writer:
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-step-{step}"
    for stale in root.glob(".staging-*"):  # left by a run killed mid-write; one writer per run folder
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir()
    save_file(weights, str(staging / "trainable.safetensors"))
    _test_crash_point(step)
    save_file(optim_tensors, str(staging / "optimizer.safetensors"))
    if config is not None:
        (staging / "train_config.json").write_text(json.dumps(config, indent=2))
    rng_tensors, rng_meta = rng_snapshot()
    save_file(rng_tensors, str(staging / "rng.safetensors"))
    (staging / "state.json").write_text(json.dumps({"optimizer": optim_meta, "rng": rng_meta, "progress": progress}))
    if is_peft_model(model):
        # A usable adapter at every checkpoint (the service lists these as fine-tuned model checkpoints).
        model.save_pretrained(staging / "adapter", safe_serialization=True, **adapter_conversion(model))
        if tokenizer is not None:  # its chat template may be the run's choice, not the base's (chat_template=)
            tokenizer.save_pretrained(staging / "adapter")
    _fsync_tree(staging)
    write_json_atomic(staging / MANIFEST, {"step": step, "complete": True, "progress": progress})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _test_crash_point(step: int) -> None:
    """Test-only: TUNEFORGE_TEST_CRASH_IN_CHECKPOINT=N dies like kill -9 halfway through writing step N."""
    if os.environ.get("TUNEFORGE_TEST_CRASH_IN_CHECKPOINT") == str(step):
        os._exit(137)


def resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint a run resumes from: `auto` = the newest complete one in the run folder (None when
    there is none yet, so a first attempt starts fresh), or the folder given."""
    if not resume:
        return None
    if resume == "auto":
        candidates = complete_checkpoints(run_dir)
        return candidates[-1] if candidates else None
    return Path(resume)


def restore_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole trained weights (from `trainable_state` or a checkpoint) into the model, sharded or not."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(shard_like(value, params[name]))


def load_checkpoint(folder: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG from a complete checkpoint; return its progress record."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder}: no manifest, not a complete checkpoint")
    restore_trainable(model, load_file(str(folder / "trainable.safetensors")))
    state = json.loads((folder / "state.json").read_text())
    _optimizer_from_flat(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    rng_restore(load_file(str(folder / "rng.safetensors")), state["rng"])
    return state["progress"]
