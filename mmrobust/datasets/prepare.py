"""``prepare``: turn a dataset's raw release into the cache its loader reads.

Datasets whose release must be converted first (``ntu60``, ``imigue``)
override :meth:`mmrobust.datasets.base.Dataset.prepare`; :func:`prepare` finds
the dataset by name. The conversion streams the release into memory-mapped
arrays with a progress bar, in bounded memory, optionally in parallel, and
resumes where a killed run stopped (see :mod:`mmrobust.datasets._cache_write`).

Example::

    from mmrobust.datasets.base import DataRequest
    from mmrobust.datasets.prepare import prepare

    manifest = prepare("ntu60", "/data/ntu", DataRequest(rgb_size=112), workers=8)
    manifest["splits"]["xsub"]["train"]["count"]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..registry import DATASETS
from .base import DataRequest

__all__ = ["prepare", "preparable"]


def preparable() -> list[str]:
    """Names of the registered datasets that have a prepare step."""
    return [name for name, dataset in DATASETS.items() if dataset.has_prepare()]


def prepare(name: str, root: str | os.PathLike, request: DataRequest | None = None, *, workers: int = 1,
            strict: bool = False) -> dict[str, Any]:
    """Prepare dataset ``name`` from the raw release at ``root``; return the cache manifest.

    Args:
        name: registered dataset name.
        root: the release as its archives extract.
        request: sizes (``rgb_frames``, ``rgb_size``, ``skeleton_frames``),
            ``cache_dir`` and ``progress``; its ``root`` is replaced by ``root``.
        workers: processes decoding samples in parallel (results are identical
            for any number).
        strict: raise at the first unusable sample instead of skipping and
            counting it.

    Returns:
        The manifest: sample counts per split and class, skipped samples with
        reasons, skeleton normalisation, class mapping, fingerprint.

    Raises:
        ValueError: the dataset has no prepare step, ``workers`` < 1, or (with
            ``strict``) a malformed sample.
        FileNotFoundError: ``root`` lacks the layout the dataset expects.
    """
    dataset = DATASETS.get(name)
    if not dataset.has_prepare():
        raise ValueError(f"dataset {name!r} has no prepare step; datasets that have one: "
                         f"{', '.join(preparable()) or 'none'}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    request = dataclasses.replace(request or DataRequest(), root=os.fspath(root))
    return dataset().prepare(request, workers=workers, strict=strict)
