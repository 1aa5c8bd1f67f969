"""The training loop: SGD with momentum and cosine annealing, one checkpoint per epoch.

Readable top to bottom: for each epoch, shuffle with a generator seeded by
(seed, epoch), ask the defense for the loss of each batch, step, then write the
epoch's log line and checkpoint atomically. A checkpoint holds model, optimiser,
scheduler and RNG state, so a resumed run reaches exactly the weights of an
uninterrupted one.

Under torchrun (a :class:`~mmrobust.distributed.Team` of several ranks) each
global batch of ``batch_size`` clips, drawn from the same (seed, epoch)
shuffle, is split over the ranks; the model is wrapped in
``DistributedDataParallel``, which averages the gradients, each rank's loss
weighted by its share of the batch, so a step is that of the global batch.
Each rank runs its own training adversary and BatchNorm over its own share
(``--sync-bn``: over the global batch); the buffers are rank 0's at every
forward and at the end of every epoch. Rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmrobust.config import RunConfig
from mmrobust.datasets.base import Split
from mmrobust.defense import Defense, TrainContext
from mmrobust.distributed import SOLO, Team
from mmrobust.files import write_text
from mmrobust.results import save_torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
TRAIN_LOG = "train_log.jsonl"  # one JSON line per epoch, in the run directory
MONITOR_SIZE = 1024


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or belongs to another run."""


@dataclass
class TrainResult:
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` stands for ("auto": CUDA when there is one, else the CPU).

    Raises:
        ValueError: a name torch does not know, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    return device


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is not a readable mmrobust checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not an mmrobust checkpoint of format {CHECKPOINT_FORMAT}")
    return state


#: What a checkpoint must hold to continue a run, and of which type.
RESUME_FIELDS = {"config": dict, "epoch": int, "epochs": int, "model": dict, "optimizer": dict, "scheduler": dict,
                 "rng": torch.Tensor}


def check_resume_state(state: dict[str, Any], path: str | Path, epochs: int | None = None) -> None:
    """Raise CheckpointError naming the field unless ``state`` has every field a resume needs, each of its
    type, a CPU RNG state of bytes, and 0 ≤ epoch ≤ epochs (its own, and ``epochs`` if given)."""
    for name, kind in RESUME_FIELDS.items():
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            found = "nothing" if value is None else type(value).__name__
            raise CheckpointError(f"checkpoint {path} cannot be resumed: its {name!r} should be a "
                                  f"{kind.__name__}, found {found}")
    if state["rng"].dtype != torch.uint8 or state["rng"].dim() != 1:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'rng' is not a CPU RNG state "
                              f"(uint8 bytes), found {state['rng'].dtype} {tuple(state['rng'].shape)}")
    limit = state["epochs"] if epochs is None else min(state["epochs"], epochs)
    if not 0 <= state["epoch"] <= limit:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it says epoch {state['epoch']} of "
                              f"{limit}")


def load_model_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's weights; CheckpointError listing the first missing and unexpected keys (or the
    first shape mismatch) when they do not fit."""
    weights = state["model"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, first {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, first {', '.join(unexpected[:3])}")
        raise CheckpointError(f"checkpoint {path} does not fit this model (another defense or preset?): "
                              f"keys {'; '.join(parts)}")
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"checkpoint {path} does not fit this model: {key} is {shape}, the model "
                                  f"has {tuple(expected[key].shape)}")
    model.load_state_dict(weights)


def _read_log(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] < upto_epoch]


def train(model: nn.Module, defense: Defense, data: Split, config: RunConfig, epochs: int, run_dir: Path,
          *, device: torch.device, resume: dict[str, Any] | None = None, progress: bool = True,
          after_epoch: Callable[[int], None] | None = None,
          validate: Callable[[nn.Module], dict[str, float]] | None = None, team: Team = SOLO) -> TrainResult:
    """Train ``model`` in place for ``epochs`` epochs, checkpointing into ``run_dir``.

    Args:
        resume: a checkpoint from :func:`load_checkpoint` to continue from.
        after_epoch: called with the finished epoch index after its checkpoint
            is on disk (tests use it to simulate a crash).
        validate: scores the model after every epoch (held-out accuracies);
            its numbers join the epoch's log line. It runs under its own RNG
            state, so the weights are those of a run without it.
        team: the ranks sharing each batch (module docstring); rank 0 writes.
    """
    from tqdm.auto import tqdm

    model.to(device)
    trained = replicate(model, device, team, sync_bn=config.sync_bn)  # what the loss runs through
    progress = progress and team.main
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start_epoch = 0
    if resume is not None:
        trained_by = int(resume.get("world_size", 1))
        if trained_by != team.size and not config.sync_bn:
            raise CheckpointError(f"the checkpoint was trained by {trained_by} process(es) and this run has "
                                  f"{team.size}: BatchNorm normalises each process's share of a batch, so the "
                                  f"rest of the run would be another recipe; resume with {trained_by}")
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        start_epoch = int(resume["epoch"])
    # Clean accuracy in eval mode is tracked on a fixed subset of the training set.
    monitor = data.take(torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))[:MONITOR_SIZE].numpy())
    log_path = run_dir / TRAIN_LOG
    history = _read_log(log_path, start_epoch)
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        shuffle = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        ctx = TrainContext(device=device, epoch=epoch, generator=torch.Generator(device=device).manual_seed(
            config.seed * 100_019 + epoch + RANK_STREAM * team.rank),
            modalities=tuple(getattr(model, "modalities", ())), epochs=epochs)
        defense.before_epoch(model, data, ctx)
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        batches = shard_batches(data, config.batch_size, shuffle, ctx.modalities or None, team)
        bar = tqdm(batches, total=len(data) // config.batch_size + (len(data) % config.batch_size >= team.size),
                   disable=None if progress else True, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   leave=False, dynamic_ncols=True)
        for batch, share in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss = defense.loss(trained, batch, ctx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            optimizer.step()
            n = len(batch["label"])
            total_loss += loss.item() * n
            seen += n
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        scheduler.step()
        total_loss, seen = team.total([total_loss, seen])
        share_buffers(model, team)
        correct = _accuracy_counts(model, monitor, config.batch_size * 4, device, ctx.modalities)
        row = {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": 100.0 * correct / len(monitor),
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_start}
        if validate is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                row.update(validate(model))
            row["validation_seconds"] = time.perf_counter() - epoch_start - row["seconds"]
        history.append(row)
        if team.main:
            save_torch(run_dir / "checkpoint.pt", {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "epochs": epochs, "config": config.to_dict(),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "world_size": team.size,
            })
            write_text(log_path, "".join(json.dumps(r) + "\n" for r in history))
        log.info("epoch %d/%d loss %.4f train acc %.2f%%", epoch + 1, epochs, row["loss"], row["train_accuracy"])
        if progress:
            heldout = "".join(f", {key.removeprefix('heldout_')} {value:.1f}%" for key, value in row.items()
                              if key.startswith("heldout_"))
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, train accuracy "
                       f"{row['train_accuracy']:.1f}%{' (held out' + heldout + ')' if heldout else ''}, "
                       f"{row['seconds']:.1f}s")
        if after_epoch is not None:
            after_epoch(epoch)
    return TrainResult(epochs_run=epochs - start_epoch, seconds=time.perf_counter() - started, history=history)


#: Offset between the ranks' streams of training-adversary random starts (rank 0's is the single process's).
RANK_STREAM = 1_000_003


def shard_batches(data: Split, batch_size: int, generator: torch.Generator, modalities: tuple[str, ...] | None,
                  team: Team = SOLO) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """This rank's part of every global batch of one epoch, and the weight of its loss.

    The global batches are those of a single process (a shuffle by
    ``generator``, ``batch_size`` clips each); rank r takes the r-th of
    ``team.size`` near-equal parts. The weight, (part size × ranks) / global
    batch size, makes DDP's mean over ranks the mean over the global batch
    (1 when the parts are equal). A last global batch smaller than the number
    of ranks is left out, since a rank without samples cannot join the step.
    """
    order = torch.randperm(len(data), generator=generator).numpy()
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if len(index) < team.size:
            break
        part = np.array_split(index, team.size)[team.rank]
        yield data.batch(part, modalities), len(part) * team.size / len(index)


class _Replicated(DistributedDataParallel):
    """DDP that answers the wrapped model's attributes too, so a defense's loss sees the model it built."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def replicate(model: nn.Module, device: torch.device, team: Team = SOLO, *, sync_bn: bool = False) -> nn.Module:
    """``model`` itself for a team of one, else ``model`` wrapped in DDP (BatchNorm converted to
    SyncBatchNorm in place when ``sync_bn``; CUDA only)."""
    if team.size == 1:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation); drop it "
                             "to keep BatchNorm per rank")
        for name, child in list(model.named_children()):  # in place: the optimiser and defenses hold `model`
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return _Replicated(model, device_ids=[device.index] if device.type == "cuda" else None)


def share_buffers(model: nn.Module, team: Team) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): the checkpoint's, the monitor's."""
    if team.size > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


@torch.no_grad()
def predict(model: nn.Module, data: Split, batch_size: int, device: torch.device,
            modalities: tuple[str, ...] = ()) -> torch.Tensor:
    """Predicted class of every sample, in eval mode (the model's mode is restored)."""
    from mmrobust.model import logits_of

    was_training = model.training
    model.eval()
    try:
        out = []
        for batch in data.batches(batch_size, modalities=modalities or None):
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(logits_of(model(batch)).argmax(1).cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def _accuracy_counts(model: nn.Module, data: Split, batch_size: int, device: torch.device,
                     modalities: tuple[str, ...]) -> int:
    predictions = predict(model, data, batch_size, device, modalities)
    return int((predictions == torch.from_numpy(data.labels)).sum())


def convergence(history: list[dict[str, Any]], keys: tuple[str, ...] = ("heldout_clean", "heldout_avg"),
                limit: float = 1.0) -> dict[str, Any] | None:
    """How much the last quarter of epochs moved each held-out accuracy in ``keys``, and whether every
    change is under ``limit`` points; None without held-out numbers or with fewer than 2 epochs.

    The change is the rise (or fall) over ``window`` epochs of the least-squares line through the epoch
    before the last quarter and the ``window`` epochs of the quarter: the movement over the last
    quarter, as read from every epoch of it rather than from two, so that one noisy epoch does not decide
    (on a few hundred held-out clips an undefended model's robust accuracy moves by about two points from
    one epoch to the next). With a window of 1 or 2 epochs the line passes through the end points, and
    the change is the last epoch minus the one before the quarter.
    """
    rows = [row for row in history if all(key in row for key in keys)]
    if len(rows) < 2 or len(rows) != len(history):
        return None
    window = max(1, math.ceil(len(rows) / 4))
    steps = [step - window / 2 for step in range(window + 1)]  # centred epoch offsets, summing to 0
    spread = sum(step * step for step in steps)
    changes = {key: window * sum(step * row[key] for step, row in zip(steps, rows[-1 - window:])) / spread
               for key in keys}
    return {"window": window, "changes": changes, "limit": limit,
            "converged": all(abs(change) < limit for change in changes.values())}


def recipe_convergence(histories: Sequence[list[dict[str, Any]]],
                       keys: tuple[str, ...] = ("heldout_clean", "heldout_avg"),
                       limit: float = 1.0) -> dict[str, Any] | None:
    """:func:`convergence` of a recipe: of the mean curve, epoch by epoch, over the runs of its training
    seeds (``seeds`` says how many); None when a run lacks held-out numbers or the runs differ in length.

    The rule is about the recipe, and one run's curve carries its own noise besides, from a few hundred
    held-out clips and the last updates of its weights and BatchNorm statistics. The mean of n seeds keeps
    what every seed shares, a recipe still rising, and averages the rest down by √n. With one run it is
    that run's verdict.
    """
    if not histories or len({len(history) for history in histories}) != 1:
        return None
    if not all(key in row for history in histories for row in history for key in keys):
        return None
    mean = [{key: float(np.mean([history[epoch][key] for history in histories])) for key in keys}
            for epoch in range(len(histories[0]))]
    found = convergence(mean, keys, limit)
    return None if found is None else {**found, "seeds": len(histories)}

