"""Several processes, one run: the process group that ``torchrun`` starts, and what the pipeline asks of it.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every
process runs the same command on its share of the work (DESIGN.md §3):
training splits each global batch over the ranks (DDP averages the
gradients), evaluation hands each chunk of test clips to one rank and gathers
the outcomes by sample index, and rank 0 alone writes files. A plain process
is a team of one, :data:`SOLO`, and takes exactly the single-process path.

The backend is NCCL for CUDA devices and gloo for the CPU (the tests run
gloo with 2 and 3 processes).

Example::

    team = join("cuda")             # under torchrun --nproc-per-node 8
    device = team.device("cuda")    # cuda:<local rank>
    for chunk in team.mine(range(chunks)): ...
    parts = team.gather({index: outcome})
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: How long a rank waits at a collective before it gives up, by default (``--collective-timeout``). A rank
#: that has attacked its chunks waits at the gather until the slowest rank has attacked its own; at paper
#: scale a chunk of strong-v1 (Square's 5,000 queries on 128 clips of I3D) takes hours. A rank that dies
#: does not make the others wait this long: torchrun stops the group as soon as one process fails.
TIMEOUT_MINUTES = 12 * 60


class TeamError(RuntimeError):
    """The ranks of one run disagree (data, configuration) or cannot work together."""


class MainFailed(Exception):
    """Raised on the other ranks when a step rank 0 does for the team (:meth:`Team.on_main`) failed there;
    rank 0 raises the error itself and reports it."""


@dataclass(frozen=True)
class Team:
    """This process's place among the ranks of one run.

    Attributes:
        rank: global rank (0 writes).
        size: world size (number of processes).
        local_rank: rank on this node (picks the GPU).
        backend: the process group's backend, None for a team of one.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """True on the rank that writes checkpoints, logs and records."""
        return self.rank == 0

    def device(self, device: torch.device | str) -> torch.device:
        """This rank's device for the run's device: under several processes ``cuda`` is ``cuda:<local
        rank>`` (an explicit index is refused: torchrun gives each rank its own GPU)."""
        device = torch.device(device)
        if device.type != "cuda" or self.size == 1:
            return device
        if device.index is not None:  # refused on every rank alike, so that rank 0 says it
            raise ValueError(f"--device {device} names one GPU, but under torchrun each rank takes the GPU of its "
                             f"local rank; use --device cuda")
        return torch.device("cuda", self.local_rank)

    def mine(self, items: Sequence[T] | range) -> list[T]:
        """The items this rank works on: every ``size``-th, from its rank on (each item goes to exactly one
        rank)."""
        return list(items[self.rank::self.size])

    def gather(self, part: dict[Any, Any], tag: str = "") -> dict[Any, Any]:
        """Every rank's ``part`` merged into one dict, the same on every rank (keys must not repeat).

        ``tag`` names the work (an attack cell): ranks that reach the gather of different work raise
        TeamError instead of merging it."""
        if self.size == 1:
            return dict(part)
        parts: list[tuple[str, dict[Any, Any]] | None] = [None] * self.size
        torch.distributed.all_gather_object(parts, (tag, part))
        merged: dict[Any, Any] = {}
        for rank, (rank_tag, rank_part) in enumerate(parts):
            if rank_tag != tag:
                raise TeamError(f"rank {rank} gathered {rank_tag!r} while this rank gathered {tag!r}: the ranks "
                                "went different ways through the work")
            repeated = merged.keys() & rank_part.keys()
            if repeated:
                raise TeamError(f"two ranks returned work item {sorted(repeated)[0]!r}")
            merged.update(rank_part)
        return merged

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` run by rank 0 alone and its result broadcast to every rank (reading state that must be
        the same everywhere, such as the checkpoint a run resumes from). When it raises, rank 0 raises
        the error and the others :class:`MainFailed`."""
        if self.size == 1:
            return work()
        outcome: tuple[bool, Any] = (True, None)
        if self.main:
            try:
                outcome = (True, work())
            except Exception as error:
                self.broadcast((False, None))
                raise error
        done, value = self.broadcast(outcome)
        if not done:
            raise MainFailed("rank 0 failed; it says why")
        return value

    def agree(self, what: str, value: Any) -> None:
        """Unless all ranks hold the same ``value`` (named ``what``), raise TeamError on rank 0 (naming the
        first rank that differs) and :class:`MainFailed` on the others."""
        if self.size == 1:
            return
        values: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        for rank, other in enumerate(values):
            if other == values[0]:
                continue
            if not self.main:
                raise MainFailed(f"rank {rank}'s {what} differs from rank 0's; rank 0 says how")
            raise TeamError(f"rank {rank} has another {what} than rank 0 ({_short(other)} against "
                            f"{_short(values[0])}); every rank must see the same files and settings")

    def total(self, values: Iterable[float]) -> list[float]:
        """The element-wise sum over ranks of ``values`` (through objects: NCCL cannot reduce CPU tensors)."""
        values = [float(v) for v in values]
        if self.size == 1:
            return values
        parts: list[list[float] | None] = [None] * self.size
        torch.distributed.all_gather_object(parts, values)
        return [sum(column) for column in zip(*parts)]

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def describe(self) -> dict[str, Any]:
        """What a record says of the processes that made it."""
        return {"world_size": self.size, "backend": self.backend}


SOLO = Team()


def launched() -> bool:
    """True when this process was started by torchrun with more than one process in the world."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def join(device: str = "auto", timeout_minutes: float = TIMEOUT_MINUTES) -> Team:
    """The team this process belongs to: under torchrun (``WORLD_SIZE`` > 1), the process group, joined
    on first call (NCCL for a CUDA ``device``, gloo for the CPU), whose collectives give up after
    ``timeout_minutes``; else :data:`SOLO`.

    Raises:
        ValueError: a CUDA device under torchrun with more processes per node than the node has GPUs
            (raised on every rank).
    """
    if not launched():
        return SOLO
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if per_node > torch.cuda.device_count():
            raise ValueError(f"{per_node} processes per node, but this machine has {torch.cuda.device_count()} "
                             "GPUs: start at most that many (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    if timeout_minutes <= 0:
        raise ValueError(f"the collective timeout must be positive, got {timeout_minutes} minutes")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not torch.distributed.is_initialized():
        store, rank, size = next(torch.distributed.rendezvous("env://", timeout=timeout))
        # torchrun's store outlives a worker group it restarts, and with it the old group's addresses, which
        # the new group's gloo would try to connect to: every start of the group gets keys of its own.
        start = (store.add("mmrobust/joined", 1) - 1) // size
        torch.distributed.init_process_group("nccl" if cuda else "gloo", store=torch.distributed.PrefixStore(
            f"mmrobust/start-{start}", store), rank=rank, world_size=size, timeout=timeout)
    return Team(rank=rank, size=size, local_rank=local_rank, backend=torch.distributed.get_backend())


def leave() -> None:
    """Close the process group, if this process joined one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def restarted() -> bool:
    """True when torchrun's elastic agent restarted this worker group after a failure (the run then
    continues from its last checkpoint)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
