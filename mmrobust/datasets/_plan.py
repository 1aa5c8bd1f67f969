"""The work of a ``prepare``: one small task per sample, run by a worker function.

A dataset module scans its raw release into a :class:`PreparePlan` (one small,
picklable task per sample plus a module-level worker function that turns a task
into fixed-shape arrays), using a :class:`Planner` to collect the tasks and the
samples it rejects while scanning. :func:`run_tasks` runs the tasks in order,
in worker processes if asked, with at most a few samples per worker in flight;
an unusable sample becomes a skip record (:class:`SampleError`) rather than an
exception. :mod:`mmrobust.datasets._cache_write` writes what they return.

Worker processes import this module (and the dataset's format module, which
imports it), so it imports neither torch nor the dataset registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

#: Bumped whenever the cache layout or the preprocessing changes; part of the cache key and of every plan digest.
FORMAT_VERSION = 2


class SampleError(ValueError):
    """One sample of a raw release cannot be used.

    Attributes:
        kind: short category, counted in the manifest ("malformed", "nan",
            "no-bodies", "video", "label", "missing", "unreadable", "name",
            "duplicate").
        path: the offending file (with ``:line`` where it helps).
        reason: what is wrong, in words.
    """

    def __init__(self, kind: str, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.kind = kind
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep the fields when sent back from a worker process
        return (SampleError, (self.kind, self.path, self.reason))

    def record(self, name: str) -> dict[str, str]:
        return {"name": name, "kind": self.kind, "path": self.path, "reason": self.reason}


def raise_for_skip(skip: Mapping[str, str]) -> None:
    """Raise the error ``--strict`` asks for: FileNotFoundError for a missing file, else ValueError."""
    message = f"{skip['path']}: {skip['reason']}"
    if skip["kind"] == "missing":
        raise FileNotFoundError(message)
    raise ValueError(message)


@dataclasses.dataclass
class PreparePlan:
    """Everything :func:`mmrobust.datasets._cache_write.run_prepare` needs, built by a dataset module
    from its raw release.

    Attributes:
        dataset: registry name.
        source: which release format the tasks come from ("raw", "pyskl", ...).
        root: the raw release that was scanned.
        names: one sample name per task, in order.
        tasks: one small picklable description per sample, in order.
        arrays: per-sample shape and dtype of every array the worker returns.
            Required: ``"skeleton"`` (raw, NaN where nobody is), ``"label"``
            (int) and ``"name"`` (a string, the sample's name in the release:
            :func:`mmrobust.datasets._cache_read.build_bundle` lists each
            split's names in ``DatasetBundle.info["names"]``). ``"rgb"`` is
            optional; any other array is per-sample metadata for ``split_masks``.
        worker: module-level function ``(task, config) -> {array: value}``; raises
            :class:`SampleError` for unusable input.
        config: passed to every worker call.
        split_masks: ``(arrays) -> {protocol: bool mask of training samples}``,
            given the kept label and metadata arrays (not rgb or skeleton).
        class_names: one per label.
        skeleton_unit: "m" or "px".
        skeleton_axes: names of the skeleton coordinate channels.
        skipped: samples already rejected while planning (records as in
            :meth:`SampleError.record`).
        info: extra manifest entries (class mapping, exclusions, layout notes).
    """

    dataset: str
    source: str
    root: str
    names: Sequence[str]
    tasks: Sequence[Any]
    arrays: Mapping[str, tuple[tuple[int, ...], str]]
    worker: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]]
    config: Mapping[str, Any]
    split_masks: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
    class_names: Sequence[str]
    skeleton_unit: str
    skeleton_axes: Sequence[str]
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def digest(self) -> str:
        """Identifies the work: the sample list, worker, config and array layout."""
        content = {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "source": self.source,
            "worker": f"{self.worker.__module__}.{self.worker.__qualname__}",
            "config": dict(self.config),
            "arrays": {k: [list(s), d] for k, (s, d) in self.arrays.items()},
            "planning_skips": [s["name"] for s in self.skipped],
        }
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
        for name in self.names:
            digest.update(name.encode() + b"\0")
        return digest.hexdigest()


class Planner:
    """Collects a plan's tasks and the samples rejected while scanning; with ``strict`` a rejection raises."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.tasks: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []

    def skip(self, error: SampleError, name: str) -> None:
        record = error.record(name)
        if self.strict:
            raise_for_skip(record)
        self.skipped.append(record)


def _run_task(worker, name: str, task: Any, config: Mapping[str, Any]):
    """Run one task; a bad sample becomes a skip record instead of an exception."""
    try:
        return "ok", worker(task, config)
    except SampleError as error:
        return "skip", error.record(name)
    except FileNotFoundError as error:
        return "skip", {"name": name, "kind": "missing", "path": str(error.filename or name),
                        "reason": f"file not found ({error.strerror or error})"}
    except OSError as error:
        return "skip", {"name": name, "kind": "unreadable", "path": str(error.filename or name),
                        "reason": f"cannot be read ({error.strerror or error})"}
    except Exception as error:
        raise RuntimeError(f"unexpected error while preparing sample {name!r}: "
                           f"{type(error).__name__}: {error}") from error


def run_tasks(plan: PreparePlan, start: int, workers: int) -> Iterator[tuple[int, tuple[str, Any]]]:
    """Results of tasks ``start..`` in task order, at most a few per worker in flight."""
    total = len(plan.tasks)
    if workers <= 1:
        for index in range(start, total):
            yield index, _run_task(plan.worker, plan.names[index], plan.tasks[index], plan.config)
        return
    window = 2 * workers + 2
    # spawn: workers start clean instead of copying a parent that may hold torch and its threads.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque = deque()
    upcoming = iter(range(start, total))

    def submit(index: int) -> None:
        future = pool.submit(_run_task, plan.worker, plan.names[index], plan.tasks[index], plan.config)
        pending.append((index, future))

    try:
        for index in upcoming:
            submit(index)
            if len(pending) >= window:
                break
        while pending:
            index, future = pending.popleft()
            outcome = future.result()
            following = next(upcoming, None)
            if following is not None:
                submit(following)
            yield index, outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
