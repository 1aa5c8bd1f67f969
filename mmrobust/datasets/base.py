"""The dataset contract: what a dataset is asked for and what it hands to training and evaluation.

A registered dataset is a :class:`Dataset` subclass; given a
:class:`DataRequest` it loads a :class:`DatasetBundle` (train and test
:class:`Split` plus what describes them, including each :class:`Modality`).
Arrays stay in their compact stored form (uint8 video, memory-mapped if
large); :meth:`Split.batch` turns a set of indices into the batch dict of
float tensors, so no dataset needs a DataLoader of its own.

Batch conventions:
    ``rgb``: float (B, 3, T, H, W) in [0, 1].
    ``skeleton``: float (B, C, T, V, M) in [0, 1], after one affine map with a
    single scale for all axes (``DatasetBundle.skeleton_scale`` units per 1.0).
    ``label``: int64 (B,).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class DataRequest:
    """What a caller asks of a dataset.

    Attributes:
        split: dataset-specific protocol ("xsub", "xview"); None = the default.
        root: folder holding the raw release (real datasets only).
        cache_dir: where prepared or generated data is kept; None = user cache.
        seed: generator seed (synthetic data only).
        rgb_frames, rgb_size, skeleton_frames: input sizes the model preset wants.
        progress: show progress bars.
        preset: the model preset these sizes come from (set by
            :meth:`mmrobust.presets.Preset.data_request`); names them in
            messages, never part of a cache key.
        replace: ``prepare`` only: prepare again over a complete cache whose
            release has changed (without it, such a cache is left as it is).
    """

    split: str | None = None
    root: str | None = None
    cache_dir: str | None = None
    seed: int = 0
    rgb_frames: int = 8
    rgb_size: int = 64
    skeleton_frames: int = 32
    progress: bool = True
    preset: str | None = None
    replace: bool = False


@dataclass(frozen=True)
class Modality:
    """What a dataset declares about one of its modalities.

    Attributes:
        name: key in batches and splits, e.g. "rgb".
        code: short code used in attack targets and table columns, e.g. "R".
        display: human name, e.g. "RGB video".
        like: the modality whose backbone a model preset builds for this one
            (a depth video is built like ``"rgb"``); None: its own name.
        padding: the entries of a batch tensor that hold no input (a bool mask
            broadcastable to it), which attacks may not perturb; None: every
            entry is an input. Its docstring's first line says what is masked
            (stored in result records).
    """

    name: str
    code: str
    display: str
    like: str | None = None
    padding: Callable[[torch.Tensor], torch.Tensor] | None = None


def absent_people(skeleton: torch.Tensor) -> torch.Tensor:
    """Person slots of a frame that hold nobody: all coordinates of all joints exactly 0.

    (B, C, T, V, M) -> (B, 1, T, 1, M). An NTU clip with one actor stores zeros
    for the second, and a frame where a person is not tracked is zero as well;
    perturbing those would conjure a body that the sensor never saw.
    """
    return (skeleton == 0).all(dim=3, keepdim=True).all(dim=1, keepdim=True)


RGB = Modality("rgb", "R", "RGB video")
SKELETON = Modality("skeleton", "S", "skeleton", padding=absent_people)


def describe_modalities(declared: Iterable[Modality], names: Iterable[str]) -> dict[str, Modality]:
    """The declared descriptions of the modalities ``names``, by name, in that order (undeclared ones left out)."""
    by_name = {modality.name: modality for modality in declared}
    return {name: by_name[name] for name in names if name in by_name}


@dataclass
class Split:
    """One split held as arrays of equal length N.

    ``arrays`` maps each modality to its stored array ((N, 3, T, H, W) uint8 for
    RGB, (N, C, T, V, M) float for skeletons) and ``"label"`` to (N,) ints.
    """

    arrays: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"split arrays differ in length: {lengths}")
        if "label" not in self.arrays:
            raise ValueError("a split needs a 'label' array")

    def __len__(self) -> int:
        return len(self.arrays["label"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(k for k in self.arrays if k != "label")

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.arrays["label"])

    def take(self, indices: Sequence[int] | np.ndarray) -> Split:
        """A new split holding only ``indices`` (copied into memory)."""
        index = np.asarray(indices)
        return Split({name: np.asarray(array[index]) for name, array in self.arrays.items()})

    def batch(self, indices: Sequence[int] | np.ndarray, modalities: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The batch dict for ``indices`` (float tensors in [0, 1] + labels)."""
        index = np.asarray(indices)
        out: dict[str, torch.Tensor] = {}
        for name in (*(modalities or self.modalities), "label"):
            values = np.asarray(self.arrays[name][index])
            tensor = torch.from_numpy(np.ascontiguousarray(values))
            if name == "label":
                out[name] = tensor.long()
            elif tensor.dtype == torch.uint8:
                out[name] = tensor.float().div_(255.0)
            else:
                out[name] = tensor.float()
        return out

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                modalities: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate over the split in batches; shuffled with ``generator`` if asked."""
        n = len(self)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start:start + batch_size], modalities)


@dataclass
class DatasetBundle:
    """A loaded dataset: train and test splits plus what describes them.

    Attributes:
        skeleton_scale: physical size of 1.0 in skeleton coordinates.
        skeleton_unit: "m" for 3-D joints in metres, "px" for 2-D pose.
        fingerprint: hex digest identifying the exact data.
        default_epochs: the training length the dataset's recipe uses.
        info: provenance as plain JSON values (cache, spec, per-split sample names, ...).
        modality_info: the dataset's :class:`Modality` for each modality in
            the splits (see :attr:`codes`).
        train_subjects: the subject (performer) of each training sample,
            where the dataset knows it; a held-out part of the training data
            (``RunConfig.holdout``) is then whole subjects.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    skeleton_scale: float
    skeleton_unit: str
    fingerprint: str
    default_epochs: int
    split: str | None = None
    info: dict = field(default_factory=dict)
    # Optional: pixel coordinates (F, V, 2) of a clip's joints in its RGB frames,
    # given ("train" | "test", index); used to overlay skeletons on video.
    joints_in_frames: Callable[[str, int], np.ndarray] | None = None
    # The dataset's description of each modality in the splits, by name.
    modality_info: dict[str, Modality] = field(default_factory=dict)
    train_subjects: np.ndarray | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.train.modalities

    @property
    def codes(self) -> dict[str, str]:
        """Modality name -> short code ("rgb" -> "R"); an undeclared modality's is its first letter upper-cased."""
        return {name: self.modality_info[name].code if name in self.modality_info else name[:1].upper()
                for name in self.modalities}

    @property
    def padding(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Modality name -> its padding rule, for the modalities that declare one (:attr:`Modality.padding`)."""
        return {name: info.padding for name, info in self.modality_info.items()
                if name in self.modalities and info.padding is not None}

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Per-sample shape of a modality, e.g. (3, T, H, W) for RGB."""
        return tuple(self.train.arrays[modality].shape[1:])


class Dataset:
    """Base class of every registered dataset: one module per dataset, one subclass of this, registered.

    A dataset declares its :attr:`modalities` and implements :meth:`load`. One
    whose raw release must be converted first also implements :meth:`prepare`
    (``mmrobust prepare`` runs it) and :meth:`example` (a tiny release in the
    real file format, for the tests). The registry holds the class; callers
    write ``DATASETS.get(name)().load(request)``.

    What :meth:`load` returns, checked for every registered dataset by
    ``tests/test_contract_datasets.py``:

    - non-empty ``train`` and ``test`` splits holding ``"label"`` (ints in
      ``[0, num_classes)``) and one array per modality, uint8 or float, whose
      batches lie in [0, 1]: RGB (N, 3, T, H, W), skeletons (N, C, T, V, M);
    - no sample in both splits;
    - ``class_names``, one per class;
    - ``modality_info`` from :attr:`modalities` (see :func:`describe_modalities`);
    - ``fingerprint``, the SHA-256 hex digest of the exact data, equal for
      every load of the same request (:func:`fingerprint_arrays`).

    A dataset prepared through the shared cache
    (:func:`mmrobust.datasets._cache_write.prepare_from_root`) has its worker
    return, besides ``skeleton`` and ``label``, a string array ``"name"``: each
    sample's name in the release, listed per split in ``info["names"]``.

    Example::

        import numpy as np

        from mmrobust.datasets.base import (RGB, DataRequest, Dataset, DatasetBundle, Split,
                                            describe_modalities, fingerprint_arrays)
        from mmrobust.registry import register_dataset

        @register_dataset("noise")
        class Noise(Dataset):  # uniform noise clips in two classes: nothing to learn
            modalities = (RGB,)

            def load(self, request: DataRequest) -> DatasetBundle:
                rng = np.random.default_rng(request.seed)
                shape = (3, request.rgb_frames, request.rgb_size, request.rgb_size)
                train, test = (Split({"rgb": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                                      "label": np.arange(n) % 2}) for n in (8, 4))
                arrays = {f"{part}/{name}": array for part, split in (("train", train), ("test", test))
                          for name, array in split.arrays.items()}
                return DatasetBundle(
                    name="noise", train=train, test=test, num_classes=2, class_names=("even", "odd"),
                    skeleton_scale=1.0, skeleton_unit="m", fingerprint=fingerprint_arrays(arrays),
                    default_epochs=1, modality_info=describe_modalities(self.modalities, ["rgb"]))

        bundle = Noise().load(DataRequest(rgb_frames=4, rgb_size=16))
    """

    #: Every modality the dataset can provide (a bundle may hold fewer, e.g. a skeleton-only release).
    modalities: ClassVar[tuple[Modality, ...]] = ()

    def load(self, request: DataRequest) -> DatasetBundle:
        """The train and test splits ``request`` asks for."""
        raise NotImplementedError

    def prepare(self, request: DataRequest, *, workers: int = 1, strict: bool = False) -> dict[str, Any]:
        """Convert the raw release under ``request.root`` into what :meth:`load` reads; return its manifest.

        Only datasets with a raw release override this (see :meth:`has_prepare`).
        Preparing what is already prepared returns the same manifest at once;
        a killed prepare resumes.

        Args:
            request: ``root`` (required), sizes, ``cache_dir`` and ``progress``.
            workers: processes decoding samples in parallel (the result is the
                same for any number).
            strict: raise at the first unusable sample instead of skipping and
                counting it.

        Returns:
            The manifest: sample counts per split (``manifest["splits"][split]
            ["train" | "test"]["count"]``) and class, skipped samples with
            reasons, fingerprint.
        """
        raise ValueError(f"dataset {type(self).__name__} has no prepare step")

    @classmethod
    def has_prepare(cls) -> bool:
        """Whether the dataset overrides :meth:`prepare`."""
        return cls.prepare is not Dataset.prepare

    def example(self, directory: Path) -> DataRequest:
        """A request that loads a tiny instance of this dataset, written under ``directory``.

        Used by the contract tests. Datasets that need a release write a few
        samples of it there in the exact real file format and prepare them.
        """
        return DataRequest(cache_dir=str(directory), rgb_frames=4, rgb_size=16, skeleton_frames=8, progress=False)


def fingerprint_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in key order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where datasets keep caches: ``cache_dir``, else ``$MMROBUST_CACHE``, else
    ``$XDG_CACHE_HOME/mmrobust`` (``~/.cache/mmrobust``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("MMROBUST_CACHE"):
        return Path(os.environ["MMROBUST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmrobust"
