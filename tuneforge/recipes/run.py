"""The run shell every recipe calls by name: what must behave the same for SFT, DPO, reward and GRPO.

    train_rows, valid_rows = run.train_and_validation(config, load_rows)
    with run.start(config, model, tokenizer, device, dtype, n_items=..., items_per_step=..., describe=..., items=...) as shell:
        for step in run.steps(shell, plan_for_epoch):       # resume skip; stop, early stop and the budget end it
            ... the recipe's own micro-batches, loss call and backward scaling ...
            run.optimizer_step(shell, step)                 # clip, scheduled lr, AdamW, a stop vote of every rank
            run.log(shell, step, {"loss": ...}, tokens=...)  # progress, metrics.jsonl + trackers, the bar
            if run.validation_due(shell): run.log_valid(shell, {...})
            run.checkpoint_if_due(shell, step)              # THE checkpoint rule
        ... save the weights ...
        return run.finish(shell, {...the method's own summary keys...})

No base class, no hooks: a recipe reads top to bottom and every call is where it happens. Numerics never
live here (losses are `tuneforge.losses`, the schedule `tuneforge.schedule`, batching `tuneforge.data`).
What lives here once, for every method: the step plan and its resume point, one checkpoint progress format
(`Progress`), metrics.jsonl trimmed on resume, train_seconds carried across attempts, what a stop signal
does, the checkpoint rule, the summary keys every method writes, and the experiment trackers
(`report_to`, tuneforge/tracking.py), which get what metrics.jsonl gets, where it gets it.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tuneforge import __version__, distributed, tracking
from tuneforge.checkpoint import load_checkpoint, resume_point, save_checkpoint, write_json_atomic
from tuneforge.config import TrainConfig
from tuneforge.data.curation import split_validation
from tuneforge.data.readers import with_columns
from tuneforge.errors import UserError
from tuneforge.runfiles import trim_metrics
from tuneforge.schedule import learning_rate_at, step_plan
from tuneforge.trainable import count_parameters, make_optimizer

# Version 1 (tuneforge 0.1.0) had no number and four shapes, one per method; 2 is this one shape.
PROGRESS_FORMAT = 2


@dataclass
class Progress:
    """Where a run stands, besides weights, optimizer state and RNGs: what a resumed run needs to go on.

    The step order is a pure function of (seed, epoch) and the learning rate of the step, so (epoch,
    step_in_epoch) and step are the whole position. `extra` holds a method's own state (GRPO: its sampling
    generator), so that a resumed run draws what the uninterrupted one would have.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    trained_tokens: int = 0
    loss_tokens: int = 0
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_record(self, method: str) -> dict:
        return {"format": PROGRESS_FORMAT, "method": method, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict, method: str, checkpoint: Path) -> Progress:
        version = record.get("format", 1)
        if version > PROGRESS_FORMAT:
            raise UserError(f"{checkpoint}: written by a newer tuneforge (progress format {version}; this is "
                            f"tuneforge {__version__}, format {PROGRESS_FORMAT}): upgrade tuneforge to resume it")
        if record.get("method", method) != method:
            raise UserError(f"{checkpoint}: a --method {record['method']} checkpoint; this run is --method {method} "
                            "(use another --output, or the same method)")
        if version == 1 and "order" in record:
            # GRPO under 0.1.0 carried its own prompt order across passes; it now steps through epochs like
            # every method, so that checkpoint's position has no equivalent here.
            raise UserError(f"{checkpoint}: a GRPO checkpoint written by tuneforge 0.1.0, whose prompt order this "
                            f"version ({__version__}) cannot continue exactly: start the run again without "
                            "--resume, or finish it with tuneforge 0.1.0")
        known = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**known)


@dataclass
class Step:
    """One optimizer step of the plan: `number` is 0-based (the step the learning rate is scheduled for)."""

    number: int
    epoch: int
    index_in_epoch: int
    steps_in_epoch: int
    indices: list[int]

    @property
    def ends_epoch(self) -> bool:
        return self.index_in_epoch + 1 == self.steps_in_epoch


@dataclass
class Run:
    """What a recipe's loop needs besides its own numerics; built by `start`, used by the functions below."""

    config: TrainConfig
    output: Path
    world: distributed.World
    model: torch.nn.Module  # what trains and is checkpointed (the reward recipe's: body + value head)
    tokenizer: object
    device: str
    dtype: torch.dtype
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    progress: Progress
    resumed_from: Path | None
    metrics: MetricsLog
    stop: StopRequest
    bar: tqdm
    n_parameters: int
    n_trainable: int
    trainable: list[torch.nn.Parameter]
    history: list[dict] = field(default_factory=list)  # train records: an earlier attempt's, then this one's
    valid_history: list[dict] = field(default_factory=list)
    status: str = "completed"  # or "stopped" (a signal), "early_stopped" (the recipe says so)
    lr: float = 0.0
    seconds_before: float = 0.0  # train_seconds of earlier attempts
    throughput: Throughput = field(default_factory=lambda: Throughput())
    tracker: tracking.Trackers = field(default_factory=tracking.Trackers)  # report_to; none on ranks > 0
    average_gradients: bool = False  # several processes and no DDP / FSDP: optimizer_step averages the gradients

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.bar.close()
        self.stop.restore()
        self.metrics.close()
        self.tracker.close("failed" if exc_type else self.status)  # finish closed it already on success


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_and_validation(config: TrainConfig, load: Callable[[str], list]) -> tuple[list, list]:
    """(training rows, validation rows): --validation-data, else a seeded --validation-split of --data.

    Both files are read with the config's column mapping (`columns=`), if any."""
    rows = load(with_columns(config.data, config.columns))
    valid = load(with_columns(config.validation_data, config.columns)) if config.validation_data else []
    if not valid and config.validation_split > 0:
        rows, valid = split_validation(rows, config.validation_split, config.seed)
    return rows, valid


def start(
    config: TrainConfig,
    model,
    tokenizer,
    device: str,
    dtype: torch.dtype,
    *,
    n_items: int,
    items_per_step: int,
    describe: str,
    items: str,
    world: distributed.World | None = None,
    wrapped: bool = False,
) -> Run:
    """Plan the steps, build the optimizer, resume from a checkpoint if asked, open the log, say what runs.

    Call it after everything that must see the weights as training first started (DPO's reference
    log-probs) and after any distributed wrapping (FSDP's optimizer holds this rank's shards). `wrapped`: DDP or
    FSDP averages the gradients across ranks; otherwise `optimizer_step` does (`distributed.average_gradients`).
    """
    world = world or distributed.World()
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        write_json_atomic(output / "train_config.json", config.to_dict())
    steps_per_epoch, total_steps, warmup = step_plan(
        n_items, items_per_step, config.epochs, config.max_steps, config.warmup_ratio
    )
    optimizer = make_optimizer(model, config)
    progress, logged = Progress(), []
    resumed_from = resume_point(output, config.resume)
    if resumed_from is not None:
        record = load_checkpoint(resumed_from, model, optimizer)
        progress = Progress.from_record(record, config.method, resumed_from)
        if world.is_main:  # drop what the dead attempt logged past its checkpoint
            logged = trim_metrics(output / "metrics.jsonl", progress.step)
    n_parameters, n_trainable = count_parameters(model)
    tracker = tracking.open_trackers(config, output, resumed_at=progress.step if resumed_from else None,
                                     enabled=world.is_main)
    tracker.log_params(config.to_dict())
    if world.is_main:
        print(
            f"tuneforge: {describe} on {config.model} | {items}, {total_steps} steps, "
            f"{device}/{str(dtype).removeprefix('torch.')} | trainable {n_trainable:,} of {n_parameters:,}"
            + (f" | resumed from {resumed_from.name}" if resumed_from else "")
            + (f" | {world.world_size} processes" if world.enabled else ""),
            file=sys.stderr,
        )
    return Run(
        config=config,
        output=output,
        world=world,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup,
        eval_every=config.eval_every or max(1, total_steps // 5),
        progress=progress,
        resumed_from=resumed_from,
        metrics=MetricsLog(output / "metrics.jsonl", append=resumed_from is not None, enabled=world.is_main),
        stop=StopRequest().install(),
        bar=tqdm(total=total_steps, initial=progress.step, desc=config.method, unit="step", file=sys.stderr,
                 dynamic_ncols=True, disable=not world.is_main),
        n_parameters=n_parameters,
        n_trainable=n_trainable,
        trainable=[p for p in model.parameters() if p.requires_grad],
        history=[r for r in logged if r.get("type") == "train"],
        valid_history=[r for r in logged if r.get("type") == "valid"],
        seconds_before=progress.train_seconds,
        tracker=tracker,
        average_gradients=world.enabled and not wrapped,
    )


def steps(run: Run, plan_for_epoch: Callable[[int], list[list[int]]]) -> Iterator[Step]:
    """The optimizer steps still to run, epoch by epoch; a resumed run skips what its checkpoint had done.

    Ends at the step budget, after a step in which a stop was requested (unless it was the last one: then
    the run is complete), or when the recipe set `run.status` (early stopping).
    """
    run.throughput = Throughput()
    epoch, skip = run.progress.epoch, run.progress.step_in_epoch
    while run.progress.step < run.total_steps:
        plan = plan_for_epoch(epoch)
        if not plan:
            raise UserError("no training examples to plan steps from", path=run.config.data)
        for index in range(skip, len(plan)):
            if run.progress.step >= run.total_steps:
                break
            yield Step(run.progress.step, epoch, index, len(plan), plan[index])
            if run.stop.requested and run.progress.step < run.total_steps:
                run.status = "stopped"
            if run.status != "completed":
                return
        epoch, skip = epoch + 1, 0


def optimizer_step(run: Run, step: Step) -> float:
    """Average the gradients over ranks (unwrapped models), clip, set the scheduled learning rate, step AdamW,
    clear the gradients; returns the learning rate.

    Every rank votes first: a signal that reached any one process stops all of them after this same step.
    """
    (votes,) = distributed.sum_over_ranks([float(run.stop.requested)], run.world)
    run.stop.requested = votes > 0
    if run.average_gradients:
        distributed.average_gradients(run.trainable, run.world)
    config = run.config
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.trainable, config.max_grad_norm)
    run.lr = learning_rate_at(step.number, run.total_steps, config.resolved_learning_rate(), run.warmup_steps,
                              config.lr_schedule)
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr * group.get("lr_ratio", 1.0)  # LoRA+ (trainable.make_optimizer)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return run.lr


def log(run: Run, step: Step, values: dict, *, tokens: int, loss_tokens: int = 0, show: tuple[str, ...] = ("loss",)) -> dict:
    """The step is done: advance the progress, write its train record (every log_every steps), show it."""
    progress = run.progress
    progress.step = step.number + 1
    progress.epoch, progress.step_in_epoch = step.epoch, step.index_in_epoch + 1
    progress.trained_tokens += tokens
    progress.loss_tokens += loss_tokens
    run.throughput.add(tokens)
    record = {
        "type": "train",
        "step": progress.step,
        "total_steps": run.total_steps,  # so a watcher (the service's worker) can show progress and a finish time
        "epoch": round(step.epoch + (step.index_in_epoch + 1) / step.steps_in_epoch, 4),
        **values,
        "lr": run.lr,
        "tokens_per_second": round(run.throughput.tokens_per_second, 2),
        "trained_tokens": progress.trained_tokens,
    }
    run.history.append(record)
    if progress.step % run.config.log_every == 0 or progress.step == run.total_steps:
        run.metrics.write(record)
        run.tracker.log(tracking.scalars("train", record), step=progress.step)
    run.bar.set_postfix({key: f"{values[key]:.4f}" for key in show} | {"tok_s": f"{run.throughput.tokens_per_second:.0f}"})
    run.bar.update(1)
    return record


def validation_due(run: Run) -> bool:
    return run.progress.step % run.eval_every == 0 or run.progress.step == run.total_steps


def log_valid(run: Run, values: dict) -> dict:
    """A validation record at the current step (step 0: before training)."""
    record = {"type": "valid", "step": run.progress.step, **values}
    run.valid_history.append(record)
    run.metrics.write(record)
    run.tracker.log(tracking.scalars("valid", record), step=run.progress.step)
    return record


def checkpoint_if_due(run: Run, step: Step) -> Path | None:
    """THE checkpoint rule, for every method: every save_every steps, at the end of each epoch, and after a
    step in which a stop was requested; never after the last step (the final weights are the output)."""
    config, progress = run.config, run.progress
    due = progress.step % (config.save_every or 1) == 0 or step.ends_epoch or run.stop.requested
    if not config.save_every or not due or progress.step >= run.total_steps:
        return None
    progress.train_seconds = run.seconds_before + run.throughput.seconds
    path = save_checkpoint(run.output, progress.step, run.model, run.optimizer, progress.to_record(config.method),
                           config.keep_checkpoints, config.to_dict(), writer=run.world.is_main, tokenizer=run.tokenizer)
    run.metrics.write({"type": "checkpoint", "step": progress.step, "path": str(path),
                       "train_loss": run.history[-1].get("loss") if run.history else None,
                       "valid_loss": last_valid_loss(run)})
    return path


def last_valid_loss(run: Run) -> float | None:
    """The newest validation loss (SFT logs it as valid_loss, the pair methods as loss); None when none."""
    for record in reversed(run.valid_history):
        for key in ("valid_loss", "loss"):
            if record.get(key) is not None:
                return record[key]
    return None


def tail_mean(run: Run, key: str) -> float | None:
    """Mean of `key` over the last tenth of the train records: the run's 'final' value, less noisy than one step."""
    tail = [r[key] for r in run.history[-max(1, len(run.history) // 10):] if r.get(key) is not None]
    return round(sum(tail) / len(tail), 6) if tail else None


def finish(run: Run, method_fields: dict) -> dict:
    """summary.json: the keys every method writes, the method's own, and the end-of-training evaluation
    (--eval-data, --max-forgetting) on the trained model. Call it after the weights are saved."""
    config, progress = run.config, run.progress
    summary = {
        "status": run.status,
        "model": config.model,
        "method": config.method,
        "full": config.full,
        "output": str(run.output),
        "steps": progress.step,
        "total_steps": run.total_steps,
        "epochs": round(progress.step / run.steps_per_epoch, 4),
        "trained_tokens": progress.trained_tokens,
        "loss_tokens": progress.loss_tokens,
        "train_seconds": round(run.seconds_before + run.throughput.seconds, 3),
        "tokens_per_second": round(run.throughput.tokens_per_second, 2),
        "final_train_loss": tail_mean(run, "loss"),
        "final_valid_loss": last_valid_loss(run),
        **method_fields,
        "n_parameters": run.n_parameters,
        "n_trainable_parameters": run.n_trainable,
        "device": run.device,
        "dtype": str(run.dtype).removeprefix("torch."),
        "world_size": run.world.world_size,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not run.world.is_main:
        return summary
    if config.eval_data or config.max_forgetting is not None or config.max_general_drop is not None:
        from tuneforge.evaluate.compare import training_eval

        summary.update(training_eval(run.model, run.tokenizer, config))  # "eval" and "forgetting" (with its gate)
        run.tracker.log(tracking.scalars("eval", summary.get("eval")) | tracking.scalars("forgetting",
                        summary.get("forgetting")), step=progress.step)
    write_json_atomic(run.output / "summary.json", summary)
    run.tracker.close(run.status)
    return summary


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl; flushed at once so watchers see progress."""

    def __init__(self, path: Path, append: bool = False, enabled: bool = True):
        self.handle = None
        if enabled:  # under torchrun only rank 0 logs
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("a" if append else "w")

    def write(self, record: dict) -> None:
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()
            self.handle = None


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits cleanly (pre-emption)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class Throughput:
    def __init__(self):
        self.started = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)
