"""``stripes``: moving stripes in three modalities, generated in memory.

Each clip belongs to one of three classes, told apart by the direction its
stripes move (left, right, still) in an RGB video, a depth video and the
joints of a skeleton; every sample adds its own phase and noise. It has no
release to prepare and nothing to download, so it loads in milliseconds: a
dataset to try a contribution on. The depth video is a third modality, coded
``D``, built with the RGB branch's backbone (``like="rgb"``): it gets its
attack targets (D, RSD, ...) and table columns without any change elsewhere.

Example::

    mmrobust run --dataset stripes --defense none --epochs 2
"""

from __future__ import annotations

import click
import numpy as np

from mmrobust.datasets.base import (RGB, SKELETON, DataRequest, Dataset, DatasetBundle, Modality, Split,
                                    describe_modalities, fingerprint_arrays)

DEPTH = Modality("depth", "D", "depth video", like="rgb")
CLASSES = ("left", "right", "still")
VELOCITY = (-1.0, 1.0, 0.0)  # stripe periods per clip, per class
JOINTS, PERSONS = 5, 1
SIZES = {"train": 36, "test": 18}


def _stripes(rng: np.random.Generator, label: int, frames: int, size: int, channels: int) -> np.ndarray:
    """(channels, frames, size, size) uint8: a sinusoid across the width that drifts with the class's velocity."""
    t = np.arange(frames)[:, None, None] / max(frames, 1)
    x = np.arange(size)[None, None, :] / size
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * (3 * x - VELOCITY[label] * t) + phase)
    video = np.broadcast_to(wave, (frames, size, size))[None].repeat(channels, axis=0)
    video = video + rng.normal(0, 0.05, video.shape)
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def _skeleton(rng: np.random.Generator, label: int, frames: int) -> np.ndarray:
    """(3, frames, JOINTS, PERSONS) float32 in [0, 1]: joints on a line, sliding with the class's velocity."""
    t = np.arange(frames)[:, None] / max(frames, 1)
    base = np.linspace(0.3, 0.7, JOINTS)[None, :]
    x = base + 0.15 * VELOCITY[label] * t + rng.normal(0, 0.01, (frames, JOINTS))
    y = np.broadcast_to(base, (frames, JOINTS)) + rng.normal(0, 0.01, (frames, JOINTS))
    z = np.full((frames, JOINTS), 0.5)
    return np.clip(np.stack([x, y, z])[..., None], 0.01, 0.99).astype(np.float32)


class Stripes(Dataset):
    """Three classes of moving stripes in RGB, depth and skeleton; 36 training and 18 test clips."""

    modalities = (RGB, SKELETON, DEPTH)

    def load(self, request: DataRequest) -> DatasetBundle:
        if request.split not in (None, "random"):
            raise ValueError(f"stripes has one split, 'random'; got {request.split!r}")
        rng = np.random.default_rng(request.seed)
        splits = {}
        for part, count in SIZES.items():
            labels = np.arange(count) % len(CLASSES)
            splits[part] = Split({
                "rgb": np.stack([_stripes(rng, k, request.rgb_frames, request.rgb_size, 3) for k in labels]),
                "skeleton": np.stack([_skeleton(rng, k, request.skeleton_frames) for k in labels]),
                "depth": np.stack([_stripes(rng, k, request.rgb_frames, request.rgb_size, 1) for k in labels]),
                "label": labels.astype(np.int64)})
        arrays = {f"{part}/{name}": array for part, split in splits.items() for name, array in split.arrays.items()}
        return DatasetBundle(name="stripes", train=splits["train"], test=splits["test"], num_classes=len(CLASSES),
                             class_names=CLASSES, skeleton_scale=1.0, skeleton_unit="m",
                             fingerprint=fingerprint_arrays(arrays), default_epochs=3, split="random",
                             modality_info=describe_modalities(self.modalities, ("rgb", "skeleton", "depth")))


@click.command(name="stripes-info")
@click.option("--seed", default=0, show_default=True, type=int)
def info_command(seed: int) -> None:
    """Print the stripes dataset's classes, modalities and shapes (tiny preset sizes)."""
    bundle = Stripes().load(DataRequest(seed=seed, progress=False))
    click.echo(f"classes: {', '.join(bundle.class_names)}")
    for name, modality in bundle.modality_info.items():
        click.echo(f"{modality.code} {name} ({modality.display}): {bundle.input_shape(name)}")
