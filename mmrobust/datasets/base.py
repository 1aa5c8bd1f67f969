"""What every dataset hands to training and evaluation.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    """

    split: str | None = None
    root: str | None = None
    cache_dir: str | None = None
    seed: int = 0
    rgb_frames: int = 8
    rgb_size: int = 64
    skeleton_frames: int = 32
    progress: bool = True


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

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.train.modalities

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Per-sample shape of a modality, e.g. (3, T, H, W) for RGB."""
        return tuple(self.train.arrays[modality].shape[1:])


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
