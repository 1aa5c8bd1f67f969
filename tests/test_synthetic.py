"""The embedded synthetic dataset: deterministic, well-formed, cached safely."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmrobust.cli import cli
from mmrobust.datasets import synthetic
from mmrobust.datasets.base import DataRequest, fingerprint_arrays
from mmrobust.datasets.synthetic import (
    CLASSES,
    JOINTS,
    PARENTS,
    SKELETON_ORIGIN,
    SKELETON_SCALE,
    SyntheticSpec,
    generate,
)
from mmrobust.registry import DATASETS

SMALL = SyntheticSpec(train_subjects=2, test_subjects=1, train_repeats=1, test_repeats=1)
K = len(CLASSES)


def _fingerprint(splits) -> str:
    return fingerprint_arrays({f"{s}/{k}": v for s, a in splits.items() for k, v in a.items()})


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


@pytest.fixture(scope="module")
def bundle():
    """The default synthetic dataset, from the session cache."""
    return DATASETS.get("synthetic")().load(DataRequest(progress=False))


# -- determinism --------------------------------------------------------------------------

def test_same_seed_gives_identical_arrays(small):
    again = generate(SMALL)
    for split in ("train", "test"):
        assert small[split].keys() == again[split].keys()
        for name in small[split]:
            np.testing.assert_array_equal(small[split][name], again[split][name], err_msg=f"{split}/{name}")
    assert _fingerprint(small) == _fingerprint(again)


def test_different_seed_gives_different_data(small):
    other = generate(SyntheticSpec(**{**SMALL.__dict__, "seed": 1}))
    assert _fingerprint(other) != _fingerprint(small)
    for name in ("rgb", "skeleton"):
        assert not np.array_equal(other["train"][name], small["train"][name])


def test_spec_key_changes_with_every_field():
    base = SyntheticSpec()
    keys = {base.key()}
    for field, value in [("seed", 1), ("train_subjects", 3), ("test_subjects", 2), ("train_repeats", 2),
                         ("test_repeats", 2), ("skeleton_frames", 16), ("rgb_frames", 4), ("rgb_size", 16)]:
        keys.add(SyntheticSpec(**{**base.__dict__, field: value}).key())
    assert len(keys) == 9


# -- content --------------------------------------------------------------------------------

def test_train_and_test_subjects_are_disjoint(small):
    train, test = set(small["train"]["subject"].tolist()), set(small["test"]["subject"].tolist())
    assert len(train) == SMALL.train_subjects and len(test) == SMALL.test_subjects
    assert train.isdisjoint(test)


def test_every_class_is_in_both_splits(small, bundle):
    for splits in (small, {"train": bundle.train.arrays, "test": bundle.test.arrays}):
        for split in ("train", "test"):
            assert set(np.asarray(splits[split]["label"]).tolist()) == set(range(K)), split


def test_shapes_dtypes_and_ranges(small):
    for split, subjects, repeats in (("train", 2, 1), ("test", 1, 1)):
        arrays = small[split]
        n = subjects * repeats * K
        assert arrays["rgb"].shape == (n, 3, SMALL.rgb_frames, SMALL.rgb_size, SMALL.rgb_size)
        assert arrays["rgb"].dtype == np.uint8
        assert arrays["skeleton"].shape == (n, 3, SMALL.skeleton_frames, len(JOINTS), 1)
        assert arrays["skeleton"].dtype == np.float32
        assert arrays["skeleton"].min() >= 0.0 and arrays["skeleton"].max() <= 1.0
        assert arrays["label"].shape == (n,) and arrays["label"].dtype == np.int64
        assert arrays["rgb"].std() > 10  # not a blank video
        assert arrays["skeleton"].std() > 0.01


def test_bundle_batches_are_float_in_unit_range(bundle):
    assert bundle.modalities == ("rgb", "skeleton")
    assert bundle.num_classes == K and bundle.class_names == CLASSES
    assert bundle.input_shape("rgb") == (3, 8, 64, 64)
    assert bundle.input_shape("skeleton") == (3, 32, 25, 1)
    batch = bundle.test.batch(range(5))
    assert set(batch) == {"rgb", "skeleton", "label"}
    for name in ("rgb", "skeleton"):
        assert batch[name].dtype.is_floating_point
        assert 0.0 <= float(batch[name].min()) and float(batch[name].max()) <= 1.0
    assert float(batch["rgb"].max()) > 0.5  # uint8 was divided by 255, not left at 0..255 or 0..1/255


def _metres(skeleton: np.ndarray) -> np.ndarray:
    """(N, 3, T, V, 1) in [0, 1] -> (N, T, V, 3) camera-space metres, by the documented map."""
    return (np.moveaxis(skeleton[..., 0], 1, -1) - 0.5) * SKELETON_SCALE + SKELETON_ORIGIN


def test_skeleton_maps_back_to_metres_with_one_scale_for_all_axes(small, bundle):
    assert bundle.skeleton_scale == SKELETON_SCALE and bundle.skeleton_unit == "m"
    arrays = small["train"]
    joints = _metres(arrays["skeleton"])
    hip, knee = JOINTS.index("hip_left"), JOINTS.index("knee_left")
    assert PARENTS[knee] == hip
    # A thigh keeps its length whichever way it points: squats and steps swing it into
    # depth (z), kicks sideways (x). Median over frames ignores mis-tracked joints; the
    # mean over a subject's clips of one kind averages out the tracking jitter (4 cm).
    thigh = np.median(np.linalg.norm(joints[:, :, knee] - joints[:, :, hip], axis=-1), axis=1)  # per clip
    label = arrays["label"]
    into_depth = np.isin(label, [CLASSES.index(c) for c in ("squat", "step forward", "step back")])
    sideways = np.isin(label, [CLASSES.index(c) for c in ("side kick", "jumping jacks")])
    for subject in np.unique(arrays["subject"]):
        mine = arrays["subject"] == subject
        lengths = thigh[mine]
        assert 0.3 < lengths.mean() < 0.55, lengths.mean()   # a thigh in metres: 0.245 x 1.5-1.95 m
        assert lengths.max() - lengths.min() < 0.1, lengths    # same person, every action
        for kind in (into_depth, sideways):
            assert abs(thigh[mine & kind].mean() - thigh[mine & ~into_depth & ~sideways].mean()) < 0.02
    depth = joints[..., 2]
    assert 2.4 < np.median(depth) < 4.0  # standing 2.9-3.5 m from the camera


# -- cache ----------------------------------------------------------------------------------

def test_second_load_reuses_the_cache(bundle, monkeypatch):
    def no_generation(spec):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    again = DATASETS.get("synthetic")().load(DataRequest(progress=False))
    assert again.fingerprint == bundle.fingerprint
    np.testing.assert_array_equal(again.test.arrays["rgb"], bundle.test.arrays["rgb"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped-byte", "empty"])
def test_a_damaged_cache_is_regenerated_not_trusted(bundle, tmp_path, monkeypatch, caplog, damage):
    cached = DATASETS.get("synthetic")().load(DataRequest(progress=False)).info["cache"]
    original = Path(cached).read_bytes()
    cache_dir = tmp_path / "cache"
    path = cache_dir / "synthetic" / Path(cached).name
    path.parent.mkdir(parents=True)
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip file" * 100)
    elif damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "flipped-byte":
        middle = len(original) // 2
        path.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1:])
    else:
        path.write_bytes(b"")

    calls = []
    real_generate = synthetic.generate

    def small_generate(spec):  # regenerate a small spec: what matters is *that* it regenerates
        calls.append(spec)
        return real_generate(SyntheticSpec(**{**SMALL.__dict__, "seed": spec.seed}))

    monkeypatch.setattr(synthetic, "generate", small_generate)
    with caplog.at_level(logging.WARNING, logger="mmrobust.datasets.synthetic"):
        data = DATASETS.get("synthetic")().load(DataRequest(cache_dir=str(cache_dir), progress=False))

    assert len(calls) == 1
    assert len(data.train) == SMALL.train_subjects * SMALL.train_repeats * K
    assert data.fingerprint != bundle.fingerprint
    assert any("regenerating" in r.getMessage() for r in caplog.records)
    # The rewritten cache is whole: the next load reads it without generating.
    data_again = DATASETS.get("synthetic")().load(DataRequest(cache_dir=str(cache_dir), progress=False))
    assert len(calls) == 1
    assert data_again.fingerprint == data.fingerprint
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


# -- inspect ----------------------------------------------------------------------------------

def test_inspect_writes_a_png(tmp_path, bundle):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["inspect", "--dataset", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000  # 18 rows of frames, not an empty canvas
    assert str(out) in result.output
