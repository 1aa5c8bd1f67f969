"""Writing the prepared-dataset cache: how a raw release becomes memory-mapped arrays.

:func:`prepare_from_root` asks a dataset module for the :class:`PreparePlan` of
its raw release (see :mod:`mmrobust.datasets._plan`); :func:`run_prepare`
streams the tasks through the plan's worker, in parallel if asked, and writes
the results in task order into ``.npy`` files created with
:func:`numpy.lib.format.open_memmap`; :mod:`mmrobust.datasets._cache_read`
memory-maps them. Memory stays bounded: at most a few samples per worker are in
flight, nothing else is kept, and the files are written with positioned writes
rather than through a mapping, so the resident set of a prepare does not grow
with the amount written.

Every plan declares the arrays :data:`REQUIRED_ARRAYS`: ``skeleton``,
``label`` and ``name`` (a string per sample, its name in the release, which
:func:`~mmrobust.datasets._cache_read.build_bundle` lists per split in
``DatasetBundle.info["names"]``); ``rgb`` and metadata arrays (performer,
camera, ...) are optional.

Layout of one cache directory (``<cache>/<dataset>/<root name>-<key>/``)::

    key.json            what the cache was built from (dataset, root, sizes)
    <array>.npy         rgb, label, name and per-sample metadata, one row per sample
    skeleton.raw.npy    skeletons as parsed (NaN where nobody is), while preparing
    skeleton.npy        skeletons mapped into [0, 1], written at the end
    progress.json       how far a running prepare has got (removed when done)
    manifest.json       written last: counts, skips, normalisation, fingerprint
    .lock               held while a prepare writes (one writer at a time)

Resuming: rows are written in task order and ``progress.json`` records,
atomically, how many tasks are done and which were skipped. A killed prepare
restarts from there; the rows after the last record are simply written again,
so the result is byte-identical to an uninterrupted run. The arrays hold one
row per planned task; only the first ``num_samples`` rows (the manifest's count)
are data, and loaders slice them.

Skeleton normalisation: after streaming, a joint farther than
:data:`JOINT_BOUND` from its body's centre (10 m for 3-D joints in metres) is
dropped as a tracking error, then one affine map with a single scale for all
coordinate axes sends a robust box of the kept samples' valid joints (train
and test alike; per axis, quantiles :data:`BOX_QUANTILE` of the clips' lowest
and highest coordinates) into [0.01, 0.99], centred on each axis; the few
coordinates outside it are clipped and counted. Where nobody is (a missing
second person, a frame without a body, an undetected or dropped joint) the
stored value is exactly 0.0.
``manifest["skeleton"]`` records scale, offset, unit, padding, the rule, the
clipped coordinates and the dropped joints per sample:
``physical = value * scale + offset[axis]``.

Only the preparing process imports this module (workers import
:mod:`~mmrobust.datasets._plan` and the dataset's format module); it imports
no dataset module and not the registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmrobust.datasets._plan import FORMAT_VERSION, PreparePlan, raise_for_skip, run_tasks
from mmrobust.datasets.base import DataRequest, cache_root
from mmrobust.files import exclusive, write_text

logger = logging.getLogger("mmrobust.datasets")

#: Seconds between progress records while preparing (tests set 0: record after every sample).
COMMIT_SECONDS = 2.0
#: Bytes read per step when a pass runs over a whole array (bounds the memory of those passes).
_CHUNK_BYTES = 1 << 20
#: Valid skeleton coordinates map into [margin, 1 - margin], so 0.0 only ever means "nobody there".
SKELETON_MARGIN = 0.01
#: Per-sample skip reasons logged one by one before the rest are only counted.
_LOGGED_SKIPS = 20
#: Arrays every plan declares: the cache's normalisation, labels and per-split sample names need them.
REQUIRED_ARRAYS = ("skeleton", "label", "name")


# -- locations ---------------------------------------------------------------

def cache_key(dataset: str, root: str | os.PathLike, request: DataRequest) -> dict[str, Any]:
    """What identifies a prepared cache: dataset, resolved root, input sizes, format version.

    Only these fields: a request's split, seed, preset name or progress flag
    never moves a cache.
    """
    return {
        "dataset": dataset,
        "root": os.path.realpath(os.fspath(root)),
        "rgb_frames": int(request.rgb_frames),
        "rgb_size": int(request.rgb_size),
        "skeleton_frames": int(request.skeleton_frames),
        "format_version": FORMAT_VERSION,
    }


def cache_directory(dataset: str, root: str | os.PathLike, request: DataRequest) -> Path:
    """The cache directory for ``dataset`` prepared from ``root`` at the request's sizes."""
    key = cache_key(dataset, root, request)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", Path(key["root"]).name or "root")[:40]
    return cache_root(request.cache_dir) / dataset / f"{stem}-{digest}"


def prepare_command(dataset: str, request: DataRequest, root: str | os.PathLike | None = None) -> str:
    """The shell command that prepares what ``request`` asks for.

    The input sizes are named by the request's model preset (``--preset``)
    when it has one, else spelled out.
    """
    words = ["mmrobust", "prepare", "--dataset", dataset,
             "--root", shlex.quote(os.fspath(root)) if root else "PATH"]
    if request.preset:
        words += ["--preset", request.preset]
    else:
        words += ["--rgb-frames", str(request.rgb_frames), "--rgb-size", str(request.rgb_size),
                  "--skeleton-frames", str(request.skeleton_frames)]
    if request.cache_dir:
        words += ["--data-dir", shlex.quote(os.fspath(request.cache_dir))]
    return " ".join(words)


# -- JSON files --------------------------------------------------------------

def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


# -- writing -----------------------------------------------------------------

def _exclusive(directory: Path):
    """Refuse a second prepare writing to the same cache at the same time."""
    return exclusive(directory, "cache")


def _array_path(directory: Path, name: str, staged: bool = True) -> Path:
    if name == "skeleton" and staged:
        return directory / "skeleton.raw.npy"
    return directory / f"{name}.npy"


class RowFile:
    """An ``.npy`` file written and read row by row with plain file I/O.

    The file is created by :func:`numpy.lib.format.open_memmap` (header, then
    space for every row) and loaders map it; while preparing it is never
    mapped, so the resident memory of a prepare does not grow with the amount
    written.
    """

    def __init__(self, path: Path, shape: tuple[int, ...] | None = None, dtype: str | None = None) -> None:
        self.path = Path(path)
        if shape is not None:
            created = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype), shape=shape)
            del created
        with open(self.path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                self.shape, fortran_order, self.dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                self.shape, fortran_order, self.dtype = np.lib.format.read_array_header_2_0(stream)
            self.offset = stream.tell()
        if fortran_order:
            raise ValueError(f"{self.path}: Fortran-ordered array, expected C order")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.stream = open(self.path, "r+b", buffering=0)

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, row: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value, dtype=self.dtype).tobytes()
        self.stream.seek(self.offset + row * self.row_bytes)
        self.stream.write(data)

    def read(self, rows: slice) -> np.ndarray:
        begin, end, _ = rows.indices(self.shape[0])
        count = max(0, end - begin)
        self.stream.seek(self.offset + begin * self.row_bytes)
        buffer = bytearray(count * self.row_bytes)
        if self.stream.readinto(buffer) != len(buffer):
            raise ValueError(f"{self.path}: file is shorter than its header says; prepare again")
        return np.frombuffer(buffer, dtype=self.dtype).reshape(count, *self.shape[1:])

    def sync(self) -> None:
        os.fsync(self.stream.fileno())

    def close(self) -> None:
        self.stream.close()


def _open_staged(plan: PreparePlan, directory: Path, fresh: bool) -> dict[str, RowFile]:
    total = len(plan.tasks)
    files: dict[str, RowFile] = {}
    try:
        for name, (shape, dtype) in plan.arrays.items():
            path = _array_path(directory, name)
            full_shape = (total, *shape)
            if fresh:
                files[name] = RowFile(path, full_shape, dtype)
                continue
            files[name] = RowFile(path)
            if files[name].shape != full_shape or files[name].dtype != np.dtype(dtype):
                raise ValueError(f"{path}: staged array is {files[name].dtype} {files[name].shape}, "
                                 f"expected {dtype} {full_shape}")
    except BaseException:
        for file in files.values():
            file.close()
        raise
    return files


def prepare_from_root(dataset: str, request: DataRequest, plan: Callable[..., PreparePlan], *, workers: int,
                      strict: bool, release: str) -> dict[str, Any]:
    """Plan the work for ``request.root`` with ``plan(root, request, strict=...)`` and run it into the
    dataset's cache (:func:`cache_directory`); ``release`` names what the root must hold, for messages."""
    if not request.root:
        raise ValueError(f"preparing {dataset} needs the folder of the {release} (root)")
    root = Path(request.root).expanduser()
    return run_prepare(plan(root, request, strict=strict), cache_directory(dataset, root, request),
                       cache_key(dataset, root, request), workers=workers, strict=strict,
                       progress=request.progress, replace=request.replace)


def run_prepare(plan: PreparePlan, directory: Path, key: Mapping[str, Any], *, workers: int = 1,
                strict: bool = False, progress: bool = True, replace: bool = False) -> dict[str, Any]:
    """Stream ``plan`` into the cache at ``directory``, resuming earlier work; return the manifest.

    A complete cache of another plan (the release changed) is left as it is
    unless ``replace``. A prepare that fails records why in ``progress.json``,
    so that loaders can say so.

    Raises:
        FileExistsError: a complete cache of another plan, without ``replace``.
        ValueError / FileNotFoundError: with ``strict``, at the first unusable
            sample; without, only when no sample at all is usable.
        ValueError: the plan lacks an array every cache needs
            (:data:`REQUIRED_ARRAYS`).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    lacking = [name for name in REQUIRED_ARRAYS if name not in plan.arrays]
    if lacking:
        raise ValueError(f"the {plan.dataset} plan declares arrays {sorted(plan.arrays)}; every cache needs "
                         f"{', '.join(REQUIRED_ARRAYS)} (lacking: {', '.join(lacking)})")
    if not plan.tasks:
        _raise_nothing_usable(plan)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory):
        digest = plan.digest()
        manifest_path = directory / "manifest.json"
        if manifest_path.exists():
            manifest = read_json(manifest_path)
            if manifest.get("plan_digest") == digest:
                logger.info("%s is already prepared in %s", plan.dataset, directory)
                for leftover in (directory / "progress.json", _array_path(directory, "skeleton")):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()  # a run killed between writing the manifest and tidying up
                return manifest
            if not replace:
                raise FileExistsError(
                    f"the release under {plan.root} changed since {directory} was prepared ({manifest.get('num_samples')} "
                    f"samples then, {len(plan.tasks)} planned now); the complete cache is left as it is: pass "
                    "--replace to prepare it again in its place")
            logger.warning("the release under %s changed since %s was prepared; preparing again", plan.root, directory)
            manifest_path.unlink()
        atomic_write_json(directory / "key.json", dict(key))

        progress_path = directory / "progress.json"
        state = read_json(progress_path) if progress_path.exists() else None
        fresh = not state or state.get("plan_digest") != digest
        if not fresh:
            try:
                arrays = _open_staged(plan, directory, fresh=False)
            except (OSError, ValueError) as error:
                logger.warning("cannot resume (%s); starting over", error)
                fresh = True
        if fresh:
            state = {"plan_digest": digest, "next": 0, "kept": 0, "skipped": list(plan.skipped)}
            with contextlib.suppress(FileNotFoundError):
                progress_path.unlink()
            arrays = _open_staged(plan, directory, fresh=True)
        elif state["next"]:
            logger.info("resuming %s at sample %d of %d", plan.dataset, state["next"], len(plan.tasks))

        try:
            _stream(plan, arrays, state, progress_path, workers=workers, strict=strict, progress=progress)
            manifest = _finalize(plan, directory, arrays, state, digest, key)
        except (ValueError, FileNotFoundError) as error:  # a sample --strict refuses, or none usable
            atomic_write_json(progress_path, {**state, "failed": str(error)})
            raise
        finally:
            for file in arrays.values():
                file.close()
        atomic_write_json(manifest_path, manifest)
        for leftover in (progress_path, _array_path(directory, "skeleton")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        return manifest


def _stream(plan, arrays, state, progress_path, *, workers, strict, progress) -> None:
    """Run the tasks from ``state["next"]`` on, write kept rows in order, record progress as it goes."""
    total = len(plan.tasks)
    skipped = state["skipped"]
    logged = 0
    for skip in skipped:  # found while planning
        logged += 1
        if logged <= _LOGGED_SKIPS:
            logger.warning("skipping %s: %s: %s", skip["name"], skip["path"], skip["reason"])

    def commit() -> None:
        for file in arrays.values():
            file.sync()
        atomic_write_json(progress_path, state)

    bar = tqdm(total=total, initial=state["next"], disable=not progress, unit="clip",
               desc=f"prepare {plan.dataset}", dynamic_ncols=True)
    last_commit = time.monotonic()
    outcomes = run_tasks(plan, state["next"], workers)
    try:
        for index, (status, payload) in outcomes:
            if status == "ok":
                _write_row(plan, arrays, state["kept"], payload)
                state["kept"] += 1
            else:
                if strict:
                    raise_for_skip(payload)
                skipped.append(payload)
                logged += 1
                if logged <= _LOGGED_SKIPS:
                    logger.warning("skipping %s: %s: %s", payload["name"], payload["path"], payload["reason"])
            state["next"] = index + 1
            bar.update(1)
            if time.monotonic() - last_commit >= COMMIT_SECONDS:
                commit()
                last_commit = time.monotonic()
    finally:
        outcomes.close()  # stops the worker pool at once, also on errors
        bar.close()
        commit()
    if logged > _LOGGED_SKIPS:
        logger.warning("%d samples skipped in all; the manifest lists each with its reason", logged)


def _write_row(plan: PreparePlan, arrays: Mapping[str, RowFile], row: int, values: Mapping[str, Any]) -> None:
    if set(values) != set(plan.arrays):
        raise RuntimeError(f"worker returned arrays {sorted(values)}, plan declares {sorted(plan.arrays)}")
    for name, value in values.items():
        value = np.asarray(value)
        shape, _ = plan.arrays[name]
        if value.shape != tuple(shape):
            raise RuntimeError(f"worker returned {name} of shape {value.shape}, plan declares {tuple(shape)}")
        arrays[name].write(row, value)


def _raise_nothing_usable(plan: PreparePlan, skipped: Sequence[Mapping[str, str]] = ()) -> None:
    skipped = list(skipped) or plan.skipped
    examples = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
    raise ValueError(f"{plan.root}: no usable {plan.dataset} sample"
                     + (f" ({len(skipped)} skipped, e.g. {examples})" if skipped else ""))


def _rows(shape: tuple[int, ...], dtype: np.dtype, count: int) -> Iterator[slice]:
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes)
    for begin in range(0, count, step):
        yield slice(begin, min(begin + step, count))


#: Joints farther than this from their body's centre in that frame (the median of its joints), in the
#: release's unit, are tracking errors and count as missing: NTU RGB+D's 3-D joints, in metres. Units
#: without an entry (2-D pixels) have no bound.
JOINT_BOUND = {"m": 10.0}
#: Share of clips whose lowest (or highest) coordinate on an axis may lie outside the normalisation box;
#: those coordinates are clipped to [0, 1] and counted. One stray clip cannot stretch the box.
BOX_QUANTILE = 0.001


def _drop_far_joints(raw: RowFile, names: RowFile, count: int, bound: float | None) -> dict[str, int]:
    """Set every joint farther than ``bound`` from its body's centre to NaN (missing), in place; return
    the number dropped per sample name."""
    dropped: dict[str, int] = {}
    if bound is None:
        return dropped
    for rows in _rows(raw.shape, raw.dtype, count):
        block = raw.read(rows).astype(np.float64)  # (n, C, T, V, M), NaN where nobody is
        valid = np.isfinite(block).all(axis=1, keepdims=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # frames where a body is absent: all-NaN medians
            centre = np.nanmedian(np.where(valid, block, np.nan), axis=3, keepdims=True)
        distance = np.sqrt(((block - centre) ** 2).sum(axis=1, keepdims=True))
        far = valid & (distance > bound)
        if far.any():
            raw.write(rows.start, np.where(far, np.nan, block))
            per_sample = far.reshape(len(block), -1).sum(axis=1)
            sample_names = names.read(rows)
            for i in np.flatnonzero(per_sample):
                dropped[str(sample_names[i])] = int(per_sample[i])
    return dropped


def _skeleton_map(raw: RowFile, count: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Scale and per-axis offset sending the normalisation box into [margin, 1 - margin]: per axis, from
    the :data:`BOX_QUANTILE` quantile of the clips' lowest valid coordinates to the 1 − BOX_QUANTILE
    quantile of their highest; one scale for every axis (the box's longest side)."""
    channels = raw.shape[1]
    lows, highs = [], []
    for rows in _rows(raw.shape, raw.dtype, count):
        block = raw.read(rows).reshape(-1, channels, int(np.prod(raw.shape[2:])))
        finite = np.isfinite(block)
        lows.append(np.where(finite, block, np.inf).min(axis=2))
        highs.append(np.where(finite, block, -np.inf).max(axis=2))
    lows, highs = np.concatenate(lows), np.concatenate(highs)
    present = np.isfinite(lows).all(axis=1)
    if not present.any():
        raise ValueError(f"{raw.path}: no valid joint coordinate in any kept sample")
    low = np.quantile(lows[present], BOX_QUANTILE, axis=0)
    high = np.quantile(highs[present], 1.0 - BOX_QUANTILE, axis=0)
    extent = float(np.max(high - low))
    scale = extent / (1.0 - 2.0 * SKELETON_MARGIN) if extent > 0 else 1.0
    offset = (low + high) / 2.0 - scale / 2.0
    return scale, offset, low, high


def _finalize(plan, directory: Path, arrays: Mapping[str, RowFile], state, digest: str, key) -> dict[str, Any]:
    kept = state["kept"]
    if kept == 0:
        _raise_nothing_usable(plan, state["skipped"])

    raw = arrays["skeleton"]
    bound = JOINT_BOUND.get(plan.skeleton_unit)
    dropped = _drop_far_joints(raw, arrays["name"], kept, bound)
    if dropped:
        logger.warning("%d joints farther than %g %s from their body's centre were dropped as tracking errors "
                       "(%d samples; listed in the manifest)", sum(dropped.values()), bound, plan.skeleton_unit,
                       len(dropped))
    scale, offset, low, high = _skeleton_map(raw, kept)
    final_path = _array_path(directory, "skeleton", staged=False)
    temporary = final_path.with_name(".skeleton.npy.tmp")
    mapped = RowFile(temporary, (kept, *raw.shape[1:]), "float32")
    clipped = 0
    try:
        shift = offset.reshape(1, -1, *([1] * (len(raw.shape) - 2)))
        for rows in _rows(raw.shape, raw.dtype, kept):
            values = raw.read(rows).astype(np.float64)
            values -= shift
            values /= scale
            clipped += int(((values < 0.0) | (values > 1.0)).sum())  # NaN compares False
            np.nan_to_num(values, copy=False, nan=0.0)
            np.clip(values, 0.0, 1.0, out=values)
            mapped.write(rows.start, values)  # consecutive rows: one write
        mapped.sync()
    finally:
        mapped.close()
    os.replace(temporary, final_path)

    final = {name: file for name, file in arrays.items() if name != "skeleton"}
    final["skeleton"] = RowFile(final_path)
    try:
        small = {name: file.read(slice(0, kept)).copy() for name, file in final.items()
                 if name not in ("rgb", "skeleton")}
        fingerprint = _fingerprint_rows(final, kept)
        shapes = {name: (np.dtype(file.dtype).str, [kept, *file.shape[1:]]) for name, file in final.items()}
    finally:
        final["skeleton"].close()

    labels = small["label"].astype(np.int64)
    num_classes = len(plan.class_names)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise RuntimeError(f"labels outside 0..{num_classes - 1} reached the cache; this is a bug")

    def counts(mask: np.ndarray) -> dict[str, Any]:
        return {"count": int(mask.sum()),
                "per_class": np.bincount(labels[mask], minlength=num_classes).tolist()}

    splits = {protocol: {"train": counts(is_train), "test": counts(~is_train)}
              for protocol, is_train in plan.split_masks(small).items()}
    skipped = state["skipped"]
    by_kind: dict[str, int] = {}
    for skip in skipped:
        by_kind[skip["kind"]] = by_kind.get(skip["kind"], 0) + 1
    return {
        "dataset": plan.dataset,
        "source": plan.source,
        "root": plan.root,
        "key": dict(key),
        "format_version": FORMAT_VERSION,
        "plan_digest": digest,
        "num_samples": kept,
        "num_planned": len(plan.tasks),
        "modalities": [name for name in ("rgb", "skeleton") if name in final],
        "arrays": {name: {"file": _array_path(directory, name, staged=False).name, "dtype": dtype, "shape": shape}
                   for name, (dtype, shape) in sorted(shapes.items())},
        "num_classes": num_classes,
        "class_names": list(plan.class_names),
        "per_class": np.bincount(labels, minlength=num_classes).tolist(),
        "splits": splits,
        "skipped": skipped,
        "skipped_count": len(skipped),
        "skipped_by_kind": dict(sorted(by_kind.items())),
        "skeleton": {
            "unit": plan.skeleton_unit,
            "axes": list(plan.skeleton_axes),
            "scale": scale,
            "offset": offset.tolist(),
            "valid_min": low.tolist(),
            "valid_max": high.tolist(),
            "padding": 0.0,
            "margin": SKELETON_MARGIN,
            "rule": f"per axis, from the {BOX_QUANTILE:g} quantile of the clips' lowest valid coordinates to the "
                    f"{1 - BOX_QUANTILE:g} quantile of their highest, into [margin, 1 - margin] with one scale "
                    f"({plan.skeleton_unit} per unit) for all axes",
            "clipped_coordinates": clipped,
            "joint_bound": bound,
            "dropped_joints": {"count": sum(dropped.values()), "by_sample": dict(sorted(dropped.items()))},
            "layout": "C,T,V,M",
            "map": "value = (coordinate - offset[axis]) / scale; physical = value * scale + offset[axis]; "
                   "valid joints in [margin, 1 - margin], 0.0 where nobody is",
        },
        "fingerprint": fingerprint,
        **plan.info,
    }


def _fingerprint_rows(files: Mapping[str, RowFile], count: int) -> str:
    """Same digest as :func:`mmrobust.datasets.base.fingerprint_arrays` over the first ``count`` rows,
    read in bounded chunks."""
    digest = hashlib.sha256()
    for name in sorted(files):
        file = files[name]
        digest.update(f"{name}:{file.dtype.str}:{(count, *file.shape[1:])};".encode())
        for rows in _rows(file.shape, file.dtype, count):
            digest.update(file.read(rows))
    return digest.hexdigest()
