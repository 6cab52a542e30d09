"""Training on several processes:  torchrun --nproc-per-node 2 -m tuneforge train --data train.jsonl

PyTorch's own engine does the work: DistributedDataParallel for LoRA (the small adapters are replicated
and their gradients all-reduced) and FSDP2 `fully_shard` for full fine-tuning (parameters, gradients and
optimizer state sharded per decoder layer). gloo on CPU, NCCL on GPU. torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...) decides; without it every function here is a no-op and
training is one process.

Same global batch, same update. Every process builds the same step plan from (seed, epoch), takes its
share of each step's examples and divides its summed token loss by the trained-token count of the whole
step (all ranks). DDP and FSDP *average* gradients over ranks, so each rank's loss is multiplied by the
world size first: the averaged gradient is then exactly the one-process gradient of the step. Every rank
runs the same number of forward passes per step (one with fewer micro-batches runs a zero-weighted
extra one), because FSDP's all-gathers are collectives that every rank must join.

DPO, reward modelling and GRPO keep their models unwrapped: each rank runs its share's forward and backward
alone (no collective inside a forward, so no padding passes), and the run shell averages the trainable
gradients once per optimizer step (`average_gradients`, called by `recipes.run.optimizer_step`): the same
arithmetic as DDP's, reached by a path that also carries the forgetting guard's passes and GRPO's several
policy updates per batch. GRPO samples each prompt's group on the rank that holds the prompt, from a
generator seeded by (seed, step, prompt, sample), so what is drawn does not depend on the process count.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world() -> World:
    """The world torchrun describes in the environment (one process when there is none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    return World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def check_distributed_config(config, world: World) -> None:
    """Every method runs on several processes: SFT with DDP (LoRA) or FSDP2 (full), DPO, reward and GRPO with
    replicated weights and averaged gradients. What cannot is said before loading."""
    if not world.enabled:
        return
    from tuneforge.errors import UserError

    if config.method == "sft" and config.full and (config.eval_data or config.max_forgetting is not None):
        raise UserError(
            "--eval-data/--max-forgetting with --full under torchrun: the model is sharded; "
            "run `tuneforge eval --model OUTPUT` after training"
        )


def setup() -> World:
    world = launched_world()
    if world.enabled and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", world.local_rank))
        else:
            dist.init_process_group("gloo")
    return world


def teardown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device_for(world: World) -> str | None:
    """Each process drives its own GPU (LOCAL_RANK); None keeps the usual default."""
    if world.enabled and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return None


# Wrapped modules live until the worker leaves with os._exit (see `leave`). Freed when the recipe returns,
# DDP's reducer and the gloo process group it holds run destructors that can wait on a peer that has already
# exited: CI caught rank 0 of a finished 2-process run stuck in the recipe's frame teardown, after its
# summary.json was written and rank 1 had left.
_ALIVE_UNTIL_EXIT: list = []


def wrap(loss_module: torch.nn.Module, model, world: World, full: bool) -> torch.nn.Module:
    """DDP around the loss module for LoRA; FSDP2 per decoder layer + root for full fine-tuning.

    The loss module (model forward + fused loss) is what gets wrapped, so the distributed engine sees the
    whole forward, including the output head that the fused loss reads directly.
    """
    if not world.enabled:
        return loss_module
    if full:
        from torch.distributed.fsdp import fully_shard

        from tuneforge.models import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(loss_module)  # root: embeddings, final norm and the (tied) head
        _ALIVE_UNTIL_EXIT.append(loss_module)
        return loss_module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.local_rank] if torch.cuda.is_available() else None
    # Buffers (rotary tables) are computed identically everywhere: no per-forward broadcast.
    wrapped = DistributedDataParallel(loss_module, device_ids=device_ids, broadcast_buffers=False)
    _ALIVE_UNTIL_EXIT.append(wrapped)
    return wrapped


def gradient_sync(wrapped: torch.nn.Module, sync: bool):
    """Context for one backward: skip the gradient reduction on all but the last micro-batch of a step."""
    if hasattr(wrapped, "no_sync"):  # DDP
        return nullcontext() if sync else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
    return nullcontext()


def rank_share(indices: list[int], lengths: list[int], world: World) -> list[int]:
    """This rank's examples of one step: dealt by length so every rank gets a similar token count."""
    ordered = sorted(indices, key=lambda i: (lengths[i], i))
    return ordered[world.rank :: world.world_size]


def forward_passes(indices, lengths, world: World, split, lockstep: bool = True) -> list[tuple[list[int], int]]:
    """This rank's forward passes of one step, as (example indices, loss weight).

    `split(share)` cuts one rank's share into micro-batches. One process: every micro-batch, weight 1.
    Under torchrun: this rank's micro-batches with weight world_size (DDP and FSDP average gradients over
    ranks; the step's loss is their sum), then zero-weighted passes over one example until it has run as
    many passes as the busiest rank, so FSDP's collectives stay in step. Every rank computes every rank's
    count (the plan is deterministic), so no communication is needed to agree on it. `lockstep=False` (an
    unwrapped model, gradients averaged by `average_gradients`): no padding passes.
    """
    if not world.enabled:
        return [(batch, 1) for batch in split(list(indices))]
    if not lockstep:
        share = rank_share(indices, lengths, world)
        return [(batch, world.world_size) for batch in split(share)] if share else []
    counts = []
    mine: list[list[int]] = []
    for rank in range(world.world_size):
        share = rank_share(indices, lengths, World(rank, world.world_size, world.local_rank))
        batches = split(share) if share else []
        counts.append(len(batches))
        if rank == world.rank:
            mine = batches
    padding = (mine or [list(indices)])[0][:1]
    return [(batch, world.world_size) for batch in mine] + [(padding, 0)] * (max(counts) - len(mine))


def sum_over_ranks(values: list[float], world: World) -> list[float]:
    if not world.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_tensor_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The elementwise sum of a tensor of the same shape on every rank (a CPU tensor stays on the CPU)."""
    if not world.enabled:
        return tensor
    moved = tensor.to("cuda") if torch.cuda.is_available() else tensor.clone()
    dist.all_reduce(moved)
    return moved.to(tensor.device)


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """DDP's gradient average for an unwrapped model, in one flat all-reduce: every rank ends with the mean of
    the ranks' gradients. A parameter without a gradient on some rank (its share ran no pass) counts as zero."""
    if not world.enabled or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat = sum_tensor_over_ranks(flat, world) / world.world_size
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        n = grad.numel()
        parameter.grad = flat[offset : offset + n].view_as(grad).to(grad.dtype)
        offset += n


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole on every rank; a plain tensor as it is. Collective."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out like `like` (a DTensor parameter: this rank's shard; plain: as it is)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)
    return value


def is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight gathered whole (FSDP) on CPU, a tied weight once; collective, so all ranks call it."""
    whole, seen = {}, set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:  # the tied output head is the embedding: saved once, as save_pretrained does
            continue
        seen.add(id(value))
        whole[name] = full_tensor(value).detach().cpu()
    return whole


def leave(world: World, exit_code: int) -> None:
    """A torchrun worker whose run is complete exits at once, without interpreter shutdown.

    Called after the weights, summary and metrics are written and the process group is destroyed. A
    completed two-process run once printed its summary and then never exited (CI, under load): shutting
    down with gloo's, OpenMP's and the tokenizer's threads still alive is the one step left that nothing
    bounds. os._exit skips it; the streams are flushed first so no output is lost. One process: no-op.
    """
    if not world.enabled:
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(exit_code)

