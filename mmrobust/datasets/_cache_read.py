"""Reading a prepared-dataset cache: finding it, mapping its arrays, cutting a split.

:func:`find_prepared` locates the finished cache for a request (or says which
``mmrobust prepare`` command makes it), :func:`open_prepared` memory-maps its
arrays, and :func:`build_bundle` cuts them into the train and test sets of a
protocol without copying (:func:`select_rows`). The layout is described in
:mod:`mmrobust.datasets._cache_write`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrobust.datasets._cache_write import cache_directory, prepare_command, prepare_from_root, read_json
from mmrobust.datasets._plan import FORMAT_VERSION, PreparePlan
from mmrobust.datasets.base import (DataRequest, Dataset, DatasetBundle, Modality, Split, cache_root,
                                    describe_modalities)


class IndexedRows:
    """Rows ``indices`` of a (memory-mapped) array, read only when indexed.

    Behaves like the array ``base[indices]`` for ``len``, ``shape``, ``dtype``
    and indexing along the first axis, without copying the data up front.
    """

    def __init__(self, base: np.ndarray, indices: np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            return self[first][(slice(None), *rest) if not np.isscalar(first) else rest]
        rows = self.indices[key]
        if np.ndim(rows) == 0:
            return np.asarray(self.base[int(rows)])
        order = np.argsort(rows, kind="stable")  # read the file front to back
        out = np.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"IndexedRows(shape={self.shape}, dtype={self.dtype})"


def select_rows(array: np.ndarray, indices: np.ndarray):
    """``array[indices]`` without copying: a slice when the rows are contiguous, else :class:`IndexedRows`."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices))):
        return array[indices[0]:indices[0] + len(indices)]
    return IndexedRows(array, indices)


#: What each cache format changed, for the message that says why an older cache is not reused.
FORMAT_CHANGES = {
    2: ("person order changed, two-person NTU RGB+D clips now rank their bodies as PYSKL does; iMiGUE reads the "
        "distributed layouts, samples MiGA arrays before their zero padding and scales the crop to the video"),
}


def _older_caches(dataset: str, request: DataRequest, root: str | None = None) -> list[tuple[Path, int, str]]:
    """Finished caches of ``dataset`` at the request's sizes (prepared from ``root``, if given) that an
    older :data:`FORMAT_VERSION` wrote: ``(directory, version, root)``."""
    sizes = {f: getattr(request, f) for f in ("rgb_frames", "rgb_size", "skeleton_frames")}
    older = []
    for manifest_path in sorted((cache_root(request.cache_dir) / dataset).glob("*/manifest.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            key = read_json(manifest_path)["key"]
            version = key.get("format_version")
            if isinstance(version, int) and version < FORMAT_VERSION and (root is None or key["root"] == root) \
                    and all(key.get(f) == v for f, v in sizes.items()):
                older.append((manifest_path.parent, version, key["root"]))
    return older


def _older_format(dataset: str, where: str, older: list[tuple[Path, int, str]], command: str) -> str:
    """Why the caches ``older`` are not reused, and the command that prepares the current format."""
    since = min(version for _, version, _ in older)
    changes = "; ".join(f"version {version}: {FORMAT_CHANGES.get(version, 'changed')}"
                        for version in range(since + 1, FORMAT_VERSION + 1))
    directories = ", ".join(str(directory) for directory, _, _ in older)
    return (f"the cache of {dataset}{where} ({directories}) was prepared by an older format, version {since}, and "
            f"is not reused ({changes}); run: {command} (then delete the old cache)")


def _failure(progress_path: Path) -> str | None:
    """Why the last prepare failed, as it recorded it (None: it was interrupted, or the file is unreadable)."""
    try:
        failed = read_json(progress_path).get("failed")
    except (OSError, ValueError, AttributeError):
        return None
    return failed if isinstance(failed, str) else None


def find_prepared(dataset: str, request: DataRequest) -> Path:
    """The directory of a finished cache for ``request``.

    With ``request.root`` the cache prepared from that root at the request's
    sizes; without, the only finished cache of ``dataset`` at those sizes.

    Raises:
        FileNotFoundError: none (or several, without a root); the message gives
            the ``mmrobust prepare`` command to run.
    """
    if request.root:
        directory = cache_directory(dataset, request.root, request)
        if (directory / "manifest.json").is_file():
            return directory
        command = prepare_command(dataset, request, os.path.realpath(os.fspath(request.root)))
        if (directory / "progress.json").is_file():
            failed = _failure(directory / "progress.json")
            if failed:
                raise FileNotFoundError(f"the last prepare of {dataset} from {request.root} failed ({directory}): "
                                        f"{failed}; fix that and run: {command}")
            raise FileNotFoundError(f"preparing {dataset} from {request.root} was interrupted ({directory}); "
                                    f"resume it with: {command}")
        older = _older_caches(dataset, request, os.path.realpath(os.path.expanduser(os.fspath(request.root))))
        if older:
            raise FileNotFoundError(_older_format(dataset, f" from {request.root}", older, command))
        raise FileNotFoundError(f"{dataset} has not been prepared from {request.root} at these sizes "
                                f"(looked in {directory}); run: {command}")
    sizes = {f: getattr(request, f) for f in ("rgb_frames", "rgb_size", "skeleton_frames")}
    found = []
    base = cache_root(request.cache_dir) / dataset
    if base.is_dir():
        for manifest_path in sorted(base.glob("*/manifest.json")):
            with contextlib.suppress(OSError, ValueError):
                key = read_json(manifest_path)["key"]
                if all(key.get(f) == v for f, v in sizes.items()) and key.get("format_version") == FORMAT_VERSION:
                    found.append((manifest_path.parent, key["root"]))
    if len(found) == 1:
        return found[0][0]
    command = prepare_command(dataset, request)
    if not found:
        older = _older_caches(dataset, request)
        if older:
            roots = {root for _, _, root in older}
            if len(roots) == 1:
                command = prepare_command(dataset, request, roots.pop())
            raise FileNotFoundError(_older_format(dataset, "", older, command))
        raise FileNotFoundError(f"{dataset} has not been prepared at these sizes (looked in {base}); "
                                f"run: {command}")
    roots = ", ".join(root for _, root in found)
    raise FileNotFoundError(f"{dataset} was prepared from several roots ({roots}); choose one with --root")


def open_prepared(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the memory-mapped arrays (first ``num_samples`` rows) of a finished cache."""
    manifest = read_json(directory / "manifest.json")
    count = manifest["num_samples"]
    arrays = {}
    for name, entry in manifest["arrays"].items():
        path = directory / entry["file"]
        array = np.load(path, mmap_mode="r")
        if array.shape[1:] != tuple(entry["shape"][1:]) or len(array) < count:
            raise ValueError(f"{path}: shape {array.shape} does not match the manifest ({entry['shape']}); "
                             "prepare again")
        arrays[name] = array[:count]
    return manifest, arrays


def build_bundle(dataset: str, request: DataRequest, split: str, splits: Sequence[str], default_epochs: int,
                 split_masks: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]], *,
                 modalities: Sequence[Modality]) -> DatasetBundle:
    """Open the prepared cache for ``request`` and cut it into the ``split`` protocol's train and test sets.

    Args:
        dataset: registry name (the cache's folder).
        request: what to open (root, sizes, cache_dir).
        split: the protocol asked for; one of ``splits`` that this cache offers.
        splits: every protocol the dataset knows.
        default_epochs: the dataset recipe's training length.
        split_masks: ``(metadata arrays) -> {protocol: bool mask of training samples}``.
        modalities: the dataset's declared modalities; those in the cache
            describe the bundle's (``DatasetBundle.modality_info``).
    """
    directory = find_prepared(dataset, request)
    manifest, arrays = open_prepared(directory)
    available = [s for s in splits if s in manifest["splits"]]
    if split not in available:
        raise ValueError(f"{dataset} prepared from {manifest['root']} offers splits {available}, not {split!r}")
    small = {name: np.asarray(array) for name, array in arrays.items() if name not in ("rgb", "skeleton")}
    is_train = np.asarray(split_masks(small)[split], dtype=bool)

    def subset(mask: np.ndarray) -> Split:
        indices = np.flatnonzero(mask)
        parts = {name: select_rows(arrays[name], indices) for name in manifest["modalities"]}
        parts["label"] = small["label"][indices].astype(np.int64)
        return Split(parts)

    fingerprint = hashlib.sha256(f"{manifest['fingerprint']}:{split}".encode()).hexdigest()
    info = {key: manifest[key] for key in ("source", "root", "skipped_count", "skeleton", "num_samples")}
    info.update(cache_dir=str(directory), cache_fingerprint=manifest["fingerprint"],
                names={"train": small["name"][is_train].tolist(), "test": small["name"][~is_train].tolist()})
    return DatasetBundle(
        name=dataset, train=subset(is_train), test=subset(~is_train),
        num_classes=manifest["num_classes"], class_names=tuple(manifest["class_names"]),
        skeleton_scale=float(manifest["skeleton"]["scale"]), skeleton_unit=manifest["skeleton"]["unit"],
        fingerprint=fingerprint, default_epochs=default_epochs, split=split, info=info,
        modality_info=describe_modalities(modalities, manifest["modalities"]),
    )


class PreparedRelease(Dataset):
    """A dataset read from a raw release through the prepared cache: ``prepare`` plans and writes it,
    ``load`` cuts it by split protocol.

    Subclasses set :attr:`name`, :attr:`splits`, :attr:`default_epochs`,
    :attr:`release` (what the root must hold, for messages) and implement
    :meth:`plan` and :meth:`split_masks` (and :meth:`default_split` if it
    depends on what was prepared).
    """

    name: str = ""
    splits: tuple[str, ...] = ()
    default_epochs: int = 1
    release: str = "release"

    def plan(self, root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
        """Scan ``root`` and list the work: one task per usable sample, skips with reasons."""
        raise NotImplementedError

    def split_masks(self, arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """``{protocol: bool mask of training samples}`` from the per-sample metadata arrays."""
        raise NotImplementedError

    def default_split(self, request: DataRequest) -> str:
        """The protocol a request without ``split`` gets."""
        return self.splits[0]

    def load(self, request: DataRequest) -> DatasetBundle:
        """The prepared cache for ``request.root``, cut by ``request.split``.

        Raises:
            FileNotFoundError: nothing prepared for this root and these sizes; the
                message gives the ``mmrobust prepare`` command.
            ValueError: an unknown split, or one the prepared release lacks.
        """
        if request.split is not None and request.split not in self.splits:
            raise ValueError(f"unknown {self.name} split {request.split!r}; choose one of {', '.join(self.splits)}")
        split = request.split or self.default_split(request)
        return build_bundle(self.name, request, split, self.splits, self.default_epochs, self.split_masks,
                            modalities=self.modalities)

    def prepare(self, request: DataRequest, *, workers: int = 1, strict: bool = False) -> dict[str, Any]:
        """Convert the release at ``request.root`` into the cache (see :meth:`Dataset.prepare`).

        Raises:
            FileNotFoundError: the root lacks the expected layout (or, with
                ``strict``, a sample's file is missing).
            ValueError: with ``strict``, a malformed sample; always, when no
                sample is usable.
        """
        return prepare_from_root(self.name, request, self.plan, workers=workers, strict=strict,
                                 release=self.release)
