"""NTU RGB+D 60 and iMiGUE: parsing, prepare, load, bad input, resume.

The real releases cannot be downloaded here, so small files are written in
their exact formats: ``.skeleton`` text and ``_rgb.avi`` video, OpenPose JSON
and the iMiGUE label CSV by the writers of the format modules (which the
datasets' ``example`` uses too), PYSKL's pickle and the MiGA challenge arrays
by the writers below. Miniature release trees built from them go through
``prepare`` and ``load`` end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mmrobust.datasets import _cache_read, _cache_write, _imigue_format, _ntu_format, _plan, _video
from mmrobust.datasets import imigue as imigue_module
from mmrobust.datasets import ntu60 as ntu_module
from mmrobust.datasets._imigue_format import (
    example_pose,
    label_row,
    openpose_json,
    write_example_video,
    write_label_csv,
)
from mmrobust.datasets._ntu_format import body_record, example_motion, write_example_sample, write_skeleton
from mmrobust.datasets._video import write_video
from mmrobust.datasets.base import DataRequest, cache_root, fingerprint_arrays
from mmrobust.datasets.prepare import prepare
from mmrobust.presets import get_preset
from mmrobust.registry import DATASETS

SIZES = {"rgb_frames": 4, "rgb_size": 16, "skeleton_frames": 8}


# -- writers of the formats no example uses (PYSKL, MiGA challenge) -----------

def write_pyskl(path: Path, annotations: list[dict], split: dict) -> Path:
    with open(path, "wb") as stream:
        pickle.dump({"split": split, "annotations": annotations}, stream)
    return path


def write_challenge(root: Path, part: str, data: np.ndarray, names: list[str], labels: list[int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"{part}_data.npy", data)
    with open(root / f"{part}_label.pkl", "wb") as stream:
        pickle.dump((names, labels), stream)


# -- a miniature NTU release ---------------------------------------------------

NTU_GOOD = ["S001C001P001R001A001", "S001C002P003R001A002", "S001C003P002R002A003", "S002C001P004R001A050",
            "S002C002P007R002A058", "S003C003P008R001A010"]


def make_ntu_tree(root: Path, names=NTU_GOOD) -> Path:
    for i, name in enumerate(names):
        two = _ntu_format.SampleName.parse(name).action >= 50
        write_example_sample(root, name, people=2 if two else 1, seed=10 * i, codec="mjpeg" if i % 2 else "mpeg4")
    return root


def ntu_request(tmp_path: Path, root: Path, **kwargs) -> DataRequest:
    return DataRequest(root=str(root), cache_dir=str(tmp_path / "cache"), progress=False, **{**SIZES, **kwargs})


# -- the .skeleton format --------------------------------------------------------

REAL_JOINT = [0.2181153, 0.1725972, 3.785547, 277.419, 191.8218, 1036.233, 519.1677,
              -0.2059419, 0.05349901, 0.9692109, -0.1239193, 2]


def two_body_file(tmp_path: Path, newline: str = "\n") -> tuple[Path, list[list[dict]]]:
    """Three frames: two bodies, none, one body; joint 1 of the first body is a line from a real file."""
    rng = np.random.default_rng(3)
    first = body_record(72057594037931101, rng.uniform(-1, 1, (25, 3)), rng.uniform(0, 1900, (25, 2)),
                        orientation=rng.uniform(-1, 1, (25, 4)), tracking=rng.integers(0, 3, 25))
    first["joints"][0] = REAL_JOINT
    second = body_record(72057594037931102, rng.uniform(-1, 1, (25, 3)), rng.uniform(0, 1900, (25, 2)),
                         fields=(3, 0, 2, 1, 3, 1, -0.1234567, 0.5, 1))
    later = body_record(72057594037931101, rng.uniform(-1, 1, (25, 3)), rng.uniform(0, 1900, (25, 2)))
    frames = [[first, second], [], [later]]
    return write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", frames, newline), frames


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_skeleton_file_parses_every_field_exactly(tmp_path, newline):
    path, written = two_body_file(tmp_path, newline)
    sequence = _ntu_format.read_skeleton(path)
    assert sequence.num_frames == 3
    assert [len(bodies) for bodies in sequence.frames] == [2, 0, 1]
    body = sequence.frames[0][0]
    assert (body.body_id, body.clipped_edges, body.hand_left_confidence, body.hand_left_state,
            body.hand_right_confidence, body.hand_right_state, body.is_restricted, body.lean_x, body.lean_y,
            body.tracking_state) == (72057594037931101, 0, 1, 1, 1, 1, 0, 0.02764709, 0.05745083, 2)
    other = sequence.frames[0][1]
    assert (other.body_id, other.clipped_edges, other.hand_left_confidence, other.hand_left_state,
            other.hand_right_confidence, other.hand_right_state, other.is_restricted, other.lean_x, other.lean_y,
            other.tracking_state) == (72057594037931102, 3, 0, 2, 1, 3, 1, -0.1234567, 0.5, 1)
    assert body.joints[0].tolist() == REAL_JOINT
    assert body.xyz[0].tolist() == [0.2181153, 0.1725972, 3.785547]
    assert body.depth_xy[0].tolist() == [277.419, 191.8218]
    assert body.color_xy[0].tolist() == [1036.233, 519.1677]
    assert body.orientation[0].tolist() == [-0.2059419, 0.05349901, 0.9692109, -0.1239193]
    assert body.joint_tracking_state[0] == 2
    for parsed, expected in [(body, written[0][0]), (other, written[0][1]), (sequence.frames[2][0], written[2][0])]:
        np.testing.assert_array_equal(parsed.joints, expected["joints"])  # all 12 fields of all 25 joints
    np.testing.assert_array_equal(body.joint_tracking_state, written[0][0]["joints"][:, 11].astype(int))


def test_sample_names_parse_into_their_parts():
    name = _ntu_format.SampleName.parse("S017C003P020R001A059")
    assert (name.setup, name.camera, name.performer, name.replication, name.action) == (17, 3, 20, 1, 59)
    assert str(name) == "S017C003P020R001A059"
    with pytest.raises(ValueError, match="SsssCcccPpppRrrrAaaa"):
        _ntu_format.SampleName.parse("S17C3P20R1A59")


def test_main_bodies_are_the_two_that_move_most():
    still = np.zeros((25, 3)) + [0, 0, 3]
    frames = []
    for f in range(6):
        frames.append((
            _ntu_format.BodyFrame(1, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 2, np.hstack([still, np.zeros((25, 9))])),
            _ntu_format.BodyFrame(2, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 2, np.hstack([still + 0.3 * f, np.zeros((25, 9))])),
            _ntu_format.BodyFrame(3, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 2,
                                  np.hstack([still + 0.1 * (f % 2), np.zeros((25, 9))])),
        ))
    tracks = _ntu_format.main_bodies(_ntu_format.SkeletonSequence("x", tuple(frames)))
    assert [t.body_id for t in tracks] == [2, 3]
    expected = float(np.stack([still + 0.3 * f for f in range(6)]).var(axis=0).sum())
    assert tracks[0].motion == pytest.approx(expected)
    assert tracks[0].frames.tolist() == list(range(6))


def _corrupt(text: str, how: str) -> str:
    lines = text.split("\n")
    if how == "truncated":
        return "\n".join(lines[:40])
    if how == "joint-count":
        lines[3] = "24"
        return "\n".join(lines)
    if how == "non-numeric":
        lines[10] = lines[10].replace(lines[10].split()[2], "abc", 1)
        return "\n".join(lines)
    if how == "short-joint":
        lines[10] = " ".join(lines[10].split()[:11])
        return "\n".join(lines)
    if how == "nan":
        fields = lines[10].split()
        fields[1] = "nan"
        lines[10] = " ".join(fields)
        return "\n".join(lines)
    if how == "infinite-colour":
        fields = lines[10].split()
        fields[5] = "-Infinity"
        lines[10] = " ".join(fields)
        return "\n".join(lines)
    if how == "trailing":
        return text + "1\n"
    raise AssertionError(how)


@pytest.mark.parametrize("how, kind, message", [
    ("truncated", "malformed", r"\.skeleton:40: file ends inside frame 1, body 2 after 9 of 25 joints"),
    ("joint-count", "malformed", r"\.skeleton:4: frame 1, body 1: 24 joints, expected 25"),
    ("non-numeric", "malformed", r"\.skeleton:11: frame 1, body 1, joint 7: z: 'abc' is not a number"),
    ("short-joint", "malformed", r"\.skeleton:11: frame 1, body 1, joint 7: expected 12 fields, found 11"),
    ("nan", "nan", r"\.skeleton:11: frame 1, body 1, joint 7: y is not finite"),
    ("trailing", "malformed", r"unexpected data after the 3 frames"),
])
def test_malformed_skeleton_files_name_file_line_and_fault(tmp_path, how, kind, message):
    path, _ = two_body_file(tmp_path)
    path.write_text(_corrupt(path.read_text(), how))
    with pytest.raises(_plan.SampleError, match=message) as caught:
        _ntu_format.read_skeleton(path)
    assert caught.value.kind == kind
    assert str(path) in str(caught.value)


def test_non_finite_colour_position_only_leaves_the_crop(tmp_path):
    path, _ = two_body_file(tmp_path)
    path.write_text(_corrupt(path.read_text(), "infinite-colour"))
    body = _ntu_format.read_skeleton(path).frames[0][0]
    assert body.color_xy[6, 0] == -np.inf
    assert _video.person_box(body.color_xy / 20, 96, 54)[2] > 0


def test_missing_skeleton_list_is_the_official_302():
    names = _ntu_format.missing_skeleton_names()
    assert len(names) == 302
    assert {"S001C002P005R002A008", "S009C002P015R002A050", "S017C003P020R001A059"} <= names
    assert all(1 <= _ntu_format.SampleName.parse(n).setup <= 17 for n in names)


def test_split_definitions_are_the_official_lists():
    assert ntu_module.XSUB_TRAIN_SUBJECTS == (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
    assert ntu_module.XVIEW_TRAIN_CAMERAS == (2, 3)
    performers = np.arange(1, 41)
    masks = ntu_module._split_masks({"performer": performers, "camera": np.array([1, 2, 3] * 13 + [1])})
    assert masks["xsub"].sum() == 20 and set(performers[~masks["xsub"]]) == set(range(1, 41)) - set(
        ntu_module.XSUB_TRAIN_SUBJECTS)
    assert masks["xview"].tolist()[:3] == [False, True, True]
    assert len(imigue_module.XSUB_TRAIN_SUBJECTS) == 37
    assert imigue_module.XSUB_TRAIN_SUBJECTS == (2, 4, 5, 6, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 23, 25, 28,
                                                 29, 30, 31, 35, 36, 38, 39, 41, 42, 43, 44, 46, 47, 48, 52, 53, 59,
                                                 61, 62)
    subjects = np.arange(1, 73)
    test_subjects = subjects[~imigue_module._split_masks({"subject": subjects})["xsub"]]
    assert len(test_subjects) == 35


# -- sampling, cropping, decoding ----------------------------------------------

def test_uniform_sampling_takes_segment_centres():
    assert _video.uniform_indices(10, 4).tolist() == [1, 3, 6, 8]
    assert _video.uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert _video.uniform_indices(1, 2).tolist() == [0, 0]


def test_person_box_is_square_enlarged_and_falls_back_to_the_frame():
    points = np.array([[100, 200], [140, 300], [0, 0], [np.nan, 5], [5000, 10]])  # last three invalid
    x0, y0, side = _video.person_box(points, 640, 480)
    assert (x0, y0, side) == (58, 188, 125)  # 100 px of height, half-sides +25 %, centred on (120, 250)
    assert _video.person_box(np.array([[100, 100], [105, 108]]), 640, 480) == (0, -80, 640)  # under 10 px
    assert _video.person_box(np.zeros((0, 2)), 640, 480) == (0, -80, 640)


def test_crop_pads_black_outside_the_frame():
    frame = np.full((20, 30, 3), 200, dtype=np.uint8)
    crop = _video.crop_square(frame, (20, -10, 20), 20)
    assert crop[:10].max() == 0 and crop[:, 10:].max() == 0
    assert (crop[10:, :10] == 200).all()


@pytest.mark.parametrize("codec, suffix", [("mpeg4", ".avi"), ("mjpeg", ".avi"), ("mpeg4", ".mp4")])
def test_read_clip_returns_the_asked_frames(tmp_path, codec, suffix):
    frames = np.zeros((150, 32, 48, 3), dtype=np.uint8)
    for f in range(150):
        frames[f, :, :, 0] = f  # frame number in the red channel
    path = write_video(tmp_path / f"v{suffix}", frames, codec=codec, fps=25)
    wanted = [120, 3, 140, 3, 149, 170]  # out of order, repeated, past the end
    clip = _video.read_clip(str(path), wanted, lambda w, h: (0, 0, 32), 8)
    assert clip.shape == (6, 8, 8, 3)
    red = clip[..., 0].astype(float).mean(axis=(1, 2))
    np.testing.assert_allclose(red, [120, 3, 140, 3, 149, 149], atol=3)


def test_undecodable_video_is_a_sample_error(tmp_path):
    path = tmp_path / "broken_rgb.avi"
    path.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + os.urandom(2000))
    with pytest.raises(_plan.SampleError, match="broken_rgb.avi: video does not decode") as caught:
        _video.read_clip(str(path), [0, 1], lambda w, h: (0, 0, 8), 8)
    assert caught.value.kind == "video"


# -- NTU end to end --------------------------------------------------------------

def make_bad_ntu_samples(root: Path) -> dict[str, str]:
    """Add one sample per kind of bad input; return name -> expected skip kind."""
    write_example_sample(root, "S004C001P001R001A005", seed=1)
    path = root / "nturgb+d_skeletons" / "S004C001P001R001A005.skeleton"
    path.write_text(_corrupt(path.read_text(), "joint-count"))
    write_example_sample(root, "S004C002P002R001A006", seed=2)
    (root / "nturgb+d_rgb" / "S004C002P002R001A006_rgb.avi").write_bytes(b"RIFF" + bytes(3000))
    write_example_sample(root, "S004C003P004R001A007", empty_frames=range(12), seed=3)
    write_example_sample(root, "S005C001P005R001A008", seed=4)
    path = root / "nturgb+d_skeletons" / "S005C001P005R001A008.skeleton"
    path.write_text(_corrupt(path.read_text(), "nan"))
    write_example_sample(root, "S005C002P008R001A061", seed=5)
    write_example_sample(root, "S005C003P009R001A009", seed=6)
    (root / "nturgb+d_rgb" / "S005C003P009R001A009_rgb.avi").unlink()
    write_example_sample(root, "S018C001P001R001A001", seed=7)
    write_skeleton(root / "nturgb+d_skeletons" / "notes.skeleton", [[]])
    write_example_sample(root, "S001C002P005R002A008", seed=8)  # on the official missing-skeleton list
    return {"S004C001P001R001A005": "malformed", "S004C002P002R001A006": "video", "S004C003P004R001A007": "no-bodies",
            "S005C001P005R001A008": "nan", "S005C002P008R001A061": "label", "S005C003P009R001A009": "missing",
            "S018C001P001R001A001": "name", "notes": "name"}


@pytest.fixture(scope="module")
def ntu_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("ntu") / "release"
    make_ntu_tree(root)
    write_example_sample(root, "S003C001P009R002A020", empty_frames=(0, 5, 6, 7), seed=99)  # gaps inside the clip
    bad = make_bad_ntu_samples(root)
    return root, bad


def test_ntu_prepare_then_load(tmp_path, ntu_release):
    root, bad = ntu_release
    request = ntu_request(tmp_path, root)
    manifest = prepare("ntu60", root, request)

    good = sorted(NTU_GOOD + ["S003C001P009R002A020"])
    assert manifest["num_samples"] == len(good)
    assert manifest["skipped_count"] == len(bad)
    assert {s["name"]: s["kind"] for s in manifest["skipped"]} == bad
    for skip in manifest["skipped"]:
        assert skip["path"] and skip["reason"]
    assert next(s for s in manifest["skipped"] if s["kind"] == "video")["path"].endswith("S004C002P002R001A006_rgb.avi")
    assert manifest["skipped_by_kind"] == {"label": 1, "malformed": 1, "missing": 1, "name": 2, "nan": 1,
                                           "no-bodies": 1, "video": 1}
    assert manifest["excluded_missing_skeletons"] == ["S001C002P005R002A008"]
    assert manifest["class_mapping"]["A001"] == 0 and manifest["class_mapping"]["A060"] == 59
    assert sum(manifest["per_class"]) == len(good)
    xsub = manifest["splits"]["xsub"]
    assert xsub["train"]["count"] + xsub["test"]["count"] == len(good)
    assert manifest["skeleton"]["unit"] == "m" and manifest["skeleton"]["padding"] == 0.0

    bundle = DATASETS.get("ntu60")().load(request)
    assert (bundle.num_classes, bundle.split, bundle.skeleton_unit, bundle.default_epochs) == (60, "xsub", "m", 80)
    assert bundle.skeleton_scale == manifest["skeleton"]["scale"]
    assert bundle.class_names[0] == "drink water"
    json.dumps(bundle.info)  # provenance-ready: plain JSON values
    assert bundle.input_shape("rgb") == (3, 4, 16, 16)
    assert bundle.input_shape("skeleton") == (3, 8, 25, 2)
    names = {part: bundle.info["names"][part] for part in ("train", "test")}
    assert sorted(names["train"] + names["test"]) == good
    for name in names["train"]:
        assert _ntu_format.SampleName.parse(name).performer in ntu_module.XSUB_TRAIN_SUBJECTS
    for name in names["test"]:
        assert _ntu_format.SampleName.parse(name).performer not in ntu_module.XSUB_TRAIN_SUBJECTS
    assert len(names["train"]) == xsub["train"]["count"]

    batch = bundle.train.batch(np.arange(len(bundle.train)))
    assert batch["rgb"].dtype.is_floating_point and 0 <= batch["rgb"].min() and batch["rgb"].max() <= 1
    assert 0 <= batch["skeleton"].min() and batch["skeleton"].max() <= 1
    expected_labels = [_ntu_format.SampleName.parse(n).action - 1 for n in names["train"]]
    assert batch["label"].tolist() == expected_labels
    # The crop is centred on the person (painted bright); the border is background or padding.
    centre = batch["rgb"][:, :, :, 6:10, 6:10].mean().item()
    assert centre > 0.75 and batch["rgb"][:, :, :, 0, :].mean().item() < 0.35

    view = DATASETS.get("ntu60")().load(ntu_request(tmp_path, root, split="xview"))
    for name in view.info["names"]["test"]:
        assert _ntu_format.SampleName.parse(name).camera == 1
    for name in view.info["names"]["train"]:
        assert _ntu_format.SampleName.parse(name).camera in (2, 3)

    directory = _cache_write.cache_directory("ntu60", root, request)
    _, arrays = _cache_read.open_prepared(directory)
    assert manifest["fingerprint"] == fingerprint_arrays(arrays)
    assert not (directory / "progress.json").exists() and not (directory / "skeleton.raw.npy").exists()


def test_ntu_skeleton_values_map_back_to_metres(tmp_path, ntu_release):
    root, _ = ntu_release
    request = ntu_request(tmp_path, root)
    prepare("ntu60", root, request)
    bundle = DATASETS.get("ntu60")().load(request)
    name = "S003C001P009R002A020"  # one person, no body in frames 0, 5, 6, 7
    part = "train" if name in bundle.info["names"]["train"] else "test"
    index = bundle.info["names"][part].index(name)
    values = getattr(bundle, part).batch([index])["skeleton"][0].numpy()  # (3, 8, 25, 2)
    sequence = _ntu_format.read_skeleton(root / "nturgb+d_skeletons" / f"{name}.skeleton")
    frames = 1 + _video.uniform_indices(11, 8)  # frames 1..11 lie between the first and last body
    assert {5, 6, 7} & set(frames.tolist())
    offset = np.array(bundle.info["skeleton"]["offset"])[:, None]
    for step, frame in enumerate(frames):
        bodies = sequence.frames[frame]
        if not bodies:
            assert (values[:, step] == 0).all()  # a frame without a body is padding
            continue
        physical = values[:, step, :, 0] * bundle.skeleton_scale + offset
        np.testing.assert_allclose(physical.T, bodies[0].xyz, atol=1e-5)
    assert (values[..., 1] == 0).all()  # no second person: padding


def test_two_person_clip_keeps_both_most_moving_first(tmp_path):
    root = tmp_path / "ntu"
    write_example_sample(root, "S001C001P001R001A050", people=2, seed=5)
    request = ntu_request(tmp_path, root)
    prepare("ntu60", root, request)
    bundle = DATASETS.get("ntu60")().load(request)
    skeleton = bundle.train.batch([0])["skeleton"][0].numpy()
    assert (skeleton[..., 0] > 0).all() and (skeleton[..., 1] > 0).all()
    sequence = _ntu_format.read_skeleton(root / "nturgb+d_skeletons" / "S001C001P001R001A050.skeleton")
    first = _ntu_format.main_bodies(sequence)[0]
    assert first.body_id == 72057594037931101  # the first person waves with twice the amplitude
    physical = skeleton[:, 0, :, 0].T * bundle.skeleton_scale + np.array(bundle.info["skeleton"]["offset"])
    np.testing.assert_allclose(physical, sequence.frames[1][0].xyz, atol=1e-5)


def test_strict_prepare_raises_with_the_path(tmp_path):
    root = tmp_path / "ntu"
    make_ntu_tree(root, NTU_GOOD[:2])
    write_example_sample(root, "S004C001P001R001A005", seed=1)
    path = root / "nturgb+d_skeletons" / "S004C001P001R001A005.skeleton"
    path.write_text(_corrupt(path.read_text(), "short-joint"))
    with pytest.raises(ValueError, match=r"S004C001P001R001A005\.skeleton:\d+: .*expected 12 fields, found 11"):
        prepare("ntu60", root, ntu_request(tmp_path, root), strict=True)
    path.unlink()
    (root / "nturgb+d_rgb" / f"{NTU_GOOD[1]}_rgb.avi").unlink()
    with pytest.raises(FileNotFoundError, match=f"{NTU_GOOD[1]}_rgb.avi: RGB video not found"):
        prepare("ntu60", root, ntu_request(tmp_path, root), strict=True)
    manifest = prepare("ntu60", root, ntu_request(tmp_path, root))  # not strict: skipped and counted
    assert manifest["num_samples"] == 1 and manifest["skipped_by_kind"] == {"missing": 1}


def test_root_without_the_release_layout_is_explained(tmp_path):
    request = ntu_request(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expected nturgb\+d_skeletons/ and nturgb\+d_rgb/"):
        prepare("ntu60", tmp_path, request)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        prepare("ntu60", tmp_path / "absent", request)
    (tmp_path / "nturgb+d_skeletons").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nturgb\+d_rgb: folder not found"):
        prepare("ntu60", tmp_path, request)
    (tmp_path / "nturgb+d_rgb").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nturgb\+d_skeletons: no \.skeleton files"):
        prepare("ntu60", tmp_path, request)
    write_skeleton(tmp_path / "nturgb+d_skeletons" / "S001C001P001R001A001.skeleton", [[], []])
    write_video(tmp_path / "nturgb+d_rgb" / "S001C001P001R001A001_rgb.avi", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"no usable ntu60 sample \(1 skipped, e\.g\. .*none of the 2 frames"):
        prepare("ntu60", tmp_path, request)


def test_load_before_prepare_names_the_command(tmp_path):
    root = tmp_path / "ntu"
    root.mkdir()
    request = ntu_request(tmp_path, root)
    with pytest.raises(FileNotFoundError) as caught:
        DATASETS.get("ntu60")().load(request)
    message = str(caught.value)
    assert (f"mmrobust prepare --dataset ntu60 --root {root.resolve()} --rgb-frames 4 --rgb-size 16 "
            f"--skeleton-frames 8 --data-dir {tmp_path / 'cache'}") in message
    tiny = get_preset("tiny").data_request(root=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=f"run: mmrobust prepare --dataset imigue --root {root.resolve()} "
                                                "--preset tiny --data-dir"):
        DATASETS.get("imigue")().load(tiny)
    with pytest.raises(ValueError, match="unknown ntu60 split 'xset'"):
        DATASETS.get("ntu60")().load(ntu_request(tmp_path, root, split="xset"))
    with pytest.raises(ValueError, match="'synthetic' has no prepare step"):
        prepare("synthetic", root)


def test_the_named_prepare_command_runs_and_makes_what_load_wanted(tmp_path):
    import shlex

    from click.testing import CliRunner

    from mmrobust.cli import cli

    root = tmp_path / "ntu"
    for seed, name in enumerate(ntu_module.EXAMPLE_SAMPLES):
        write_example_sample(root, name, people=1, seed=seed)
    request = ntu_request(tmp_path, root)  # sizes of no preset
    with pytest.raises(FileNotFoundError) as caught:
        DATASETS.get("ntu60")().load(request)
    command = str(caught.value).split("run: ", 1)[1].split(";")[0].strip()
    words = shlex.split(command)
    assert words[:2] == ["mmrobust", "prepare"] and "--rgb-frames" in words
    result = CliRunner().invoke(cli, [*words[1:], "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(DATASETS.get("ntu60")().load(request).train) > 0


def test_prepare_twice_reuses_the_cache(tmp_path, monkeypatch):
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:2])
    request = ntu_request(tmp_path, root)
    first = prepare("ntu60", root, request)

    @functools.wraps(_ntu_format.build_raw_sample)
    def never(task, config):
        raise AssertionError("prepared samples were decoded again")

    monkeypatch.setattr(_ntu_format, "build_raw_sample", never)
    assert prepare("ntu60", root, request) == first
    # Found without naming the root when only one cache has these sizes.
    bundle = DATASETS.get("ntu60")().load(DataRequest(cache_dir=request.cache_dir, progress=False, **SIZES))
    assert len(bundle.train) + len(bundle.test) == 2


# -- resuming --------------------------------------------------------------------

def _all_arrays(tmp_path: Path, root: Path) -> dict[str, np.ndarray]:
    _, arrays = _cache_read.open_prepared(_cache_write.cache_directory("ntu60", root, ntu_request(tmp_path, root)))
    return {name: np.array(array) for name, array in arrays.items()}


def test_killed_prepare_resumes_to_identical_arrays(tmp_path, monkeypatch, ntu_release):
    root, _ = ntu_release
    uninterrupted = prepare("ntu60", root, ntu_request(tmp_path / "a", root))
    monkeypatch.setattr(_cache_write, "COMMIT_SECONDS", 0.0)
    real = _ntu_format.build_raw_sample
    calls: list[str] = []

    @functools.wraps(real)
    def dies_after_three(task, config):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task["name"])
        return real(task, config)

    monkeypatch.setattr(_ntu_format, "build_raw_sample", dies_after_three)
    request = ntu_request(tmp_path / "b", root)
    with pytest.raises(KeyboardInterrupt):
        prepare("ntu60", root, request)
    directory = _cache_write.cache_directory("ntu60", root, request)
    assert _cache_write.read_json(directory / "progress.json")["next"] == 3
    assert not (directory / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="was interrupted"):
        DATASETS.get("ntu60")().load(request)

    @functools.wraps(real)
    def counting(task, config):
        calls.append(task["name"])
        return real(task, config)

    monkeypatch.setattr(_ntu_format, "build_raw_sample", counting)
    resumed = prepare("ntu60", root, request)
    assert len(calls) == uninterrupted["num_planned"]  # each sample decoded once in all
    assert resumed == uninterrupted
    a, b = _all_arrays(tmp_path / "a", root), _all_arrays(tmp_path / "b", root)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkilled_prepare_resumes(tmp_path, ntu_release):
    root, _ = ntu_release
    uninterrupted = prepare("ntu60", root, ntu_request(tmp_path / "a", root))
    request = ntu_request(tmp_path / "b", root)
    script = textwrap.dedent(f"""
        import functools, time
        from mmrobust.datasets import _cache_write, _ntu_format
        from mmrobust.datasets.base import DataRequest
        from mmrobust.datasets.prepare import prepare
        _cache_write.COMMIT_SECONDS = 0.0
        real = _ntu_format.build_raw_sample

        @functools.wraps(real)
        def slow(task, config):
            time.sleep(0.25)
            return real(task, config)

        _ntu_format.build_raw_sample = slow
        prepare("ntu60", {str(root)!r}, DataRequest(**{dict(request.__dict__)!r}))
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    progress = _cache_write.cache_directory("ntu60", root, request) / "progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if progress.exists() and _cache_write.read_json(progress)["next"] >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 2 <= _cache_write.read_json(progress)["next"] < uninterrupted["num_planned"]
    assert prepare("ntu60", root, request) == uninterrupted
    a, b = _all_arrays(tmp_path / "a", root), _all_arrays(tmp_path / "b", root)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_parallel_workers_write_the_same_cache(tmp_path, ntu_release):
    root, _ = ntu_release
    one = prepare("ntu60", root, ntu_request(tmp_path / "a", root), workers=1)
    two = prepare("ntu60", root, ntu_request(tmp_path / "b", root), workers=2)
    assert one == two


# -- PYSKL pickle ----------------------------------------------------------------

def pyskl_annotation(name: str, persons: int, frames: int, seed: int, label: int | None = None) -> dict:
    keypoint = np.stack([example_motion(seed + p, frames, shift=0.5 * p) for p in range(persons)]).astype(np.float16)
    keypoint[:, 0] = 0  # an all-zero leading frame, as PYSKL trims only sometimes
    parsed = _ntu_format.SampleName.parse(name)
    return {"frame_dir": name, "label": parsed.action - 1 if label is None else label,
            "img_shape": (1080, 1920), "original_shape": (1080, 1920), "total_frames": frames, "keypoint": keypoint}


def test_pyskl_pickle_is_a_skeleton_source(tmp_path):
    names = ["S001C001P001R001A001", "S001C002P003R001A051", "S002C003P002R002A010"]
    annotations = [pyskl_annotation(n, 2 if "A051" in n else 1, 20, i) for i, n in enumerate(names)]
    annotations.append(pyskl_annotation("S003C001P001R001A004", 1, 20, 7, label=9))  # label contradicts A004
    annotations.append(pyskl_annotation("S001C002P005R002A008", 1, 20, 8))  # official missing list
    split = {"xsub_train": ["S001C001P001R001A001", "S002C003P002R002A010"], "xsub_val": ["S001C002P003R001A051"],
             "xview_train": ["S001C002P003R001A051", "S002C003P002R002A010"], "xview_val": ["S001C001P001R001A001"]}
    path = write_pyskl(tmp_path / "ntu60_3danno.pkl", annotations, split)
    request = ntu_request(tmp_path, path)
    manifest = prepare("ntu60", path, request)
    assert manifest["source"] == "pyskl" and manifest["num_samples"] == 3
    assert manifest["modalities"] == ["skeleton"]
    assert [(s["kind"], s["name"]) for s in manifest["skipped"]] == [("label", "S003C001P001R001A004")]
    assert "contradicts the name's action A004" in manifest["skipped"][0]["reason"]
    assert manifest["excluded_missing_skeletons"] == ["S001C002P005R002A008"]
    assert manifest["pyskl_split_disagreements"] == {"xsub": 0, "xview": 0}

    bundle = DATASETS.get("ntu60")().load(request)
    assert bundle.modalities == ("skeleton",)
    assert bundle.info["names"]["train"] == ["S001C001P001R001A001", "S002C003P002R002A010"]
    index = bundle.info["names"]["test"].index("S001C002P003R001A051")
    skeleton = bundle.test.batch([index])["skeleton"][0].numpy()
    frames = 1 + _video.uniform_indices(19, 8)  # frame 0 is all zeros: outside the span
    offset = np.array(bundle.info["skeleton"]["offset"])
    for person in (0, 1):
        physical = skeleton[:, :, :, person].transpose(1, 2, 0) * bundle.skeleton_scale + offset
        np.testing.assert_allclose(physical, annotations[1]["keypoint"][person, frames].astype(np.float64), atol=1e-5)


def test_pyskl_pickles_written_by_numpy_1_load(tmp_path):
    annotation = pyskl_annotation("S001C001P001R001A001", 1, 6, 0)
    data = pickle.dumps({"split": {}, "annotations": [annotation]}, protocol=2)
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    _, annotations = _ntu_format.read_pyskl(path)
    np.testing.assert_array_equal(annotations[0]["keypoint"], annotation["keypoint"])


def test_pyskl_layouts_other_than_documented_are_rejected(tmp_path):
    flat = tmp_path / "flat.pkl"
    with open(flat, "wb") as stream:
        pickle.dump([{"frame_dir": "S001C001P001R001A001", "label": 0,
                      "keypoint": np.zeros((3, 300, 25, 2), np.float32)}], stream)
    with pytest.raises(ValueError, match=r"flat\.pkl: expected PYSKL's dict with 'split' and 'annotations'"):
        prepare("ntu60", flat, ntu_request(tmp_path, flat))
    ctvm = write_pyskl(tmp_path / "ctvm.pkl", [{"frame_dir": "S001C001P001R001A001", "label": 0,
                                                "keypoint": np.zeros((3, 300, 25, 2), np.float32)}], {})
    with pytest.raises(ValueError, match=r"ctvm\.pkl: annotation 'keypoint' must be a float array \(M, T, 25, 3\)"):
        prepare("ntu60", ctvm, ntu_request(tmp_path, ctvm))
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(ValueError, match=r"hostile\.pkl: not a readable data pickle .*refusing to load os\.system"):
        prepare("ntu60", hostile, ntu_request(tmp_path, hostile))


# -- iMiGUE ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imigue_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("imigue") / "release"
    write_example_video(root, 101, seed=1)
    write_example_video(root, 102, seed=2)
    write_example_video(root, 103, seed=3, json_frames=False)
    write_example_video(root, 104, seed=4, video_file=False)
    # clip 102_3 reads frame 91, which is corrupt; clip 102_4 has nobody in 110-120
    (root / "Data/skeleton/raw/102/102_000000000091_keypoints.json").write_text("{not json")
    for f in range(108, 123):
        (root / f"Data/skeleton/raw/102/102_{f:012d}_keypoints.json").write_text(openpose_json([]))
    rows = [label_row(101, 1, 10, 40, 5, 2), label_row(101, 2, 150, 190, 99, 2), label_row(102, 1, 0, 30, 31, 1),
            label_row(102, 2, 40, 70, 12, 1), label_row(101, 3, 50, 60, 50, 2), label_row(103, 1, 5, 20, 3, 3),
            label_row(104, 1, 5, 20, 3, 4), label_row(102, 3, 85, 95, 7, 1), label_row(102, 4, 110, 120, 7, 1),
            label_row(101, 1, 10, 40, 5, 2), {**label_row(101, 9, 0, 5, 1, 2), "start_frame": "x"}]
    write_label_csv(root / "Label" / "labels_20200831.csv", rows)
    return root


def test_openpose_frame_parses_exactly(tmp_path):
    first, second = example_pose(0, 1), example_pose(3, 2)
    first[:, 2] = np.round(first[:, 2] / 2, 3)  # the second person is the more confident one
    path = tmp_path / "7_000000000003_keypoints.json"
    path.write_text(openpose_json([first, second]))
    assert _imigue_format.openpose_path(tmp_path, 7, 3) == path
    poses = _imigue_format.read_openpose_frame(path)
    assert poses.shape == (2, 25, 3)
    np.testing.assert_array_equal(poses[0], first)
    np.testing.assert_array_equal(poses[1], second)
    np.testing.assert_array_equal(_imigue_format.main_person(poses), second)
    path.write_text(openpose_json([]))
    assert _imigue_format.read_openpose_frame(path).shape == (0, 25, 3)


@pytest.mark.parametrize("content, kind, message", [
    ('{"version":1.3,"people":[{"pose_keypoints_2d":[1,2,3]}]}', "malformed", "has 3 values, expected 75"),
    ('{"version":1.3,"people":[{"pose_keypoints_2d":[' + ",".join(["NaN"] * 75) + ']}]}', "nan", "NaN"),
    ('{"version":1.3}', "malformed", "'people' list"),
    ("{not json", "malformed", "not valid JSON"),
])
def test_bad_openpose_frames_are_sample_errors(tmp_path, content, kind, message):
    path = tmp_path / "1_000000000000_keypoints.json"
    path.write_text(content)
    with pytest.raises(_plan.SampleError, match=message) as caught:
        _imigue_format.read_openpose_frame(path)
    assert caught.value.kind == kind and caught.value.path == str(path)
    with pytest.raises(_plan.SampleError, match="not found") as caught:
        _imigue_format.read_openpose_frame(tmp_path / "absent.json")
    assert caught.value.kind == "missing"


def test_label_csv_rows_and_columns(tmp_path):
    path = write_label_csv(tmp_path / "labels.csv", [label_row(371, 1, 171, 246, 20, 1),
                                                     {**label_row(371, 2, 247, 318, 18, 1), "class": "x"}])
    rows, errors = _imigue_format.read_label_csv(path)
    assert rows == [_imigue_format.ClipRow(371, 1, 171, 246, 20, 1, 2)]
    assert len(errors) == 1 and errors[0].path == f"{path}:3" and "class 'x' is not an integer" in errors[0].reason
    path.write_text("video_id,label_id,start_frame\n1,2,3\n")
    with pytest.raises(ValueError, match=r"labels\.csv: label CSV lacks column\(s\) start_time, end_time"):
        _imigue_format.read_label_csv(path)
    assert _imigue_format.CODE_TO_LABEL[1] == 0 and _imigue_format.CODE_TO_LABEL[31] == 30
    assert _imigue_format.CODE_TO_LABEL[99] == 31 and _imigue_format.NUM_CLASSES == 32


def test_imigue_prepare_then_load(tmp_path, imigue_release):
    root = imigue_release
    request = ntu_request(tmp_path, root)
    manifest = prepare("imigue", root, request)
    assert manifest["source"] == "raw" and manifest["num_samples"] == 4
    assert {s["name"]: s["kind"] for s in manifest["skipped"]} == {
        "csv line 12": "malformed", "101_3": "label", "103_1": "missing", "104_1": "missing", "102_3": "malformed",
        "102_4": "no-bodies", "101_1": "duplicate"}
    corrupt = next(s for s in manifest["skipped"] if s["name"] == "102_3")
    assert corrupt["path"].endswith("102_000000000091_keypoints.json")
    assert manifest["class_mapping"]["99"] == 31 and manifest["class_mapping"]["1"] == 0
    assert manifest["splits"]["xsub"]["train"]["count"] == 2 and manifest["splits"]["xsub"]["test"]["count"] == 2
    assert manifest["per_class"][4] == 1 and manifest["per_class"][31] == 1
    assert manifest["skeleton"]["unit"] == "px"

    bundle = DATASETS.get("imigue")().load(request)
    assert (bundle.split, bundle.num_classes, bundle.skeleton_unit, bundle.default_epochs) == ("xsub", 32, "px", 40)
    assert bundle.class_names[31] == "99"
    assert bundle.input_shape("skeleton") == (2, 8, 25, 1) and bundle.input_shape("rgb") == (3, 4, 16, 16)
    assert bundle.info["names"]["train"] == ["101_1", "101_2"]
    assert bundle.info["names"]["test"] == ["102_1", "102_2"]
    batch = bundle.train.batch([0, 1])
    assert batch["label"].tolist() == [4, 31]
    skeleton = batch["skeleton"].numpy()
    assert (skeleton[:, :, :, 19:] == 0).all()  # undetected joints are padding
    assert (skeleton[:, :, :, :19] > 0).all() and skeleton.max() < 1
    frames = 150 + _video.uniform_indices(41, 8)  # clip 101_2 starts at frame 150 (decoded after a seek)
    offset = np.array(bundle.info["skeleton"]["offset"])
    for step, frame in enumerate(frames):
        physical = skeleton[1, :, step, :19, 0].T * bundle.skeleton_scale + offset
        np.testing.assert_allclose(physical, example_pose(frame, 1)[:19, :2], atol=1e-4)  # the confident person
    centre = batch["rgb"][:, :, :, 6:10, 6:10].mean().item()
    assert centre > 0.7 and batch["rgb"][:, :, :, 0, :].mean().item() < 0.3


def test_imigue_layout_errors(tmp_path, imigue_release):
    request = ntu_request(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="no label CSV"):
        prepare("imigue", tmp_path, request)
    write_label_csv(tmp_path / "labels.csv", [label_row(1, 1, 0, 5, 1, 2)])
    with pytest.raises(FileNotFoundError, match="no OpenPose keypoint folder"):
        prepare("imigue", tmp_path, request)
    (tmp_path / "labels.csv").write_text("video_id,class\n1,2\n")
    with pytest.raises(ValueError, match=r"labels\.csv: label CSV lacks column\(s\) label_id"):
        prepare("imigue", tmp_path, request)
    with pytest.raises(ValueError, match="'xview'"):
        DATASETS.get("imigue")().load(ntu_request(tmp_path, imigue_release, split="xview"))


def test_imigue_challenge_release(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "miga"

    def part(n):
        data = np.zeros((n, 3, 90, 22, 1), np.float32)
        data[:, 0] = rng.uniform(600, 1300, (n, 90, 22, 1))
        data[:, 1] = rng.uniform(100, 1000, (n, 90, 22, 1))
        data[:, 2] = rng.uniform(0.2, 1, (n, 90, 22, 1))
        data[:, :, :, 21] = 0  # one joint never detected
        return data

    train = part(4)
    train[3, 0, 5, 3, 0] = np.nan
    write_challenge(root, "train", train, ["a", "b", "c", "d"], [0, 31, 40, 5])
    write_challenge(root, "test", part(3), ["e", "f", "g"], [1, 2, 3])
    request = ntu_request(tmp_path, root)
    manifest = prepare("imigue", root, request)
    assert manifest["source"] == "challenge" and manifest["num_samples"] == 5
    assert {s["name"]: s["kind"] for s in manifest["skipped"]} == {"train/c": "label", "train/d": "nan"}
    assert manifest["splits"]["challenge"]["train"]["count"] == 2
    bundle = DATASETS.get("imigue")().load(request)
    assert bundle.split == "challenge" and bundle.modalities == ("skeleton",)
    assert bundle.input_shape("skeleton") == (2, 8, 22, 1)
    assert bundle.info["names"]["train"] == ["train/a", "train/b"]
    assert bundle.train.labels.tolist() == [0, 31]
    skeleton = bundle.train.batch([0])["skeleton"][0].numpy()
    assert (skeleton[:, :, 21] == 0).all() and (skeleton[:, :, :21] > 0).all()
    offset = np.array(bundle.info["skeleton"]["offset"])
    physical = skeleton[:, :, :21, 0].transpose(1, 2, 0) * bundle.skeleton_scale + offset
    expected = train[0, :2, :, :21, 0][:, _video.uniform_indices(90, 8)].transpose(1, 2, 0)
    np.testing.assert_allclose(physical, expected, atol=1e-3)
    with pytest.raises(ValueError, match="offers splits"):
        DATASETS.get("imigue")().load(ntu_request(tmp_path, root, split="xsub"))

    bad = tmp_path / "bad"
    write_challenge(bad, "train", np.zeros((2, 2, 90, 22, 1), np.float32), ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=r"train_data\.npy: expected float \(N, 3, T, V, 1\)"):
        prepare("imigue", bad, ntu_request(tmp_path, bad))
    write_challenge(bad, "train", np.zeros((2, 3, 90, 22, 1), np.float32), ["a"], [0, 1])
    with pytest.raises(ValueError, match=r"train_label\.pkl: 1 names and 2 labels for the 2 samples"):
        prepare("imigue", bad, ntu_request(tmp_path, bad))


# -- the cache machinery ---------------------------------------------------------

def test_indexed_rows_read_lazily_in_any_order():
    base = np.arange(60).reshape(10, 3, 2)
    rows = _cache_read.select_rows(base, np.array([7, 2, 5]))
    assert isinstance(rows, _cache_read.IndexedRows) and len(rows) == 3 and rows.shape == (3, 3, 2)
    np.testing.assert_array_equal(rows[[2, 0]], base[[5, 7]])
    np.testing.assert_array_equal(rows[1], base[2])
    np.testing.assert_array_equal(rows[:, 1, 0], base[[7, 2, 5], 1, 0])
    np.testing.assert_array_equal(np.asarray(rows), base[[7, 2, 5]])
    contiguous = _cache_read.select_rows(base, np.array([3, 4, 5]))
    assert isinstance(contiguous, np.ndarray) and np.shares_memory(contiguous, base)


def test_cache_location_follows_request_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(str(tmp_path / "given")) == tmp_path / "given"
    monkeypatch.delenv("MMROBUST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "mmrobust"
    a = _cache_write.cache_directory("ntu60", tmp_path / "r", DataRequest())
    assert a != _cache_write.cache_directory("ntu60", tmp_path / "r", DataRequest(rgb_size=32))
    assert a != _cache_write.cache_directory("ntu60", tmp_path / "other", DataRequest())
    assert a == _cache_write.cache_directory("ntu60", tmp_path / "r", DataRequest(split="xview", seed=3))
    same_sizes = get_preset("tiny").data_request(progress=False)  # names its preset: not part of the key
    assert same_sizes.preset == "tiny" and a == _cache_write.cache_directory("ntu60", tmp_path / "r", same_sizes)


def test_a_second_prepare_of_the_same_cache_is_refused(tmp_path):
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:1])
    request = ntu_request(tmp_path, root)
    directory = _cache_write.cache_directory("ntu60", root, request)
    directory.mkdir(parents=True)
    with _cache_write._exclusive(directory):
        with pytest.raises(RuntimeError, match=r"cache .* is in use by pid \d+ \("):
            prepare("ntu60", root, request)
    assert prepare("ntu60", root, request)["num_samples"] == 1


def test_a_complete_cache_survives_a_changed_release_and_a_failed_replacement(tmp_path):
    """A changed release never clobbers a complete cache unless --replace; a replacement that fails says
    why to every later load, instead of calling the cache interrupted."""
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:3])
    request = ntu_request(tmp_path, root)
    assert prepare("ntu60", root, request)["num_samples"] == 3
    directory = _cache_write.cache_directory("ntu60", root, request)
    manifest = (directory / "manifest.json").read_bytes()
    make_ntu_tree(root, NTU_GOOD[3:4])  # a new sample, whose file is broken
    broken = root / _ntu_format.SKELETON_DIR / f"{NTU_GOOD[3]}.skeleton"
    broken.write_text(_corrupt(broken.read_text(), "truncated"))
    with pytest.raises(FileExistsError, match=r"changed since .* \(3 samples then, 4 planned now\); .*--replace"):
        prepare("ntu60", root, request, strict=True)
    assert (directory / "manifest.json").read_bytes() == manifest
    assert len(DATASETS.get("ntu60")().load(request).test) + len(DATASETS.get("ntu60")().load(request).train) == 3

    with pytest.raises(ValueError, match="file ends inside"):
        prepare("ntu60", root, dataclasses.replace(request, replace=True), strict=True)
    with pytest.raises(FileNotFoundError, match=r"the last prepare of ntu60 .* failed .*file ends inside.*; fix that "
                                                r"and run: mmrobust prepare"):
        DATASETS.get("ntu60")().load(request)
    assert prepare("ntu60", root, dataclasses.replace(request, replace=True))["num_samples"] == 3  # skips it


def test_one_far_joint_is_dropped_and_cannot_stretch_the_scale(tmp_path):
    """The reported collapse: one joint at x = 1e6 m made the scale 1,020,408 m per unit and every other
    joint of every clip 0.5."""
    clean_root = make_ntu_tree(tmp_path / "clean", NTU_GOOD[:3])
    clean = prepare("ntu60", clean_root, ntu_request(tmp_path / "a", clean_root))
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:3])
    path = root / _ntu_format.SKELETON_DIR / f"{NTU_GOOD[1]}.skeleton"
    lines = path.read_text().split("\n")
    fields = lines[10].split()
    fields[0] = "1000000"
    lines[10] = " ".join(fields)
    path.write_text("\n".join(lines))
    manifest = prepare("ntu60", root, ntu_request(tmp_path / "b", root))
    assert manifest["skipped_count"] == 0 and manifest["num_samples"] == 3
    assert manifest["skeleton"]["dropped_joints"] == {"count": 1, "by_sample": {NTU_GOOD[1]: 1}}
    assert manifest["skeleton"]["joint_bound"] == 10.0 and "quantile" in manifest["skeleton"]["rule"]
    assert manifest["skeleton"]["scale"] == pytest.approx(clean["skeleton"]["scale"], rel=0.05)
    assert manifest["skeleton"]["scale"] < 10
    bundle = DATASETS.get("ntu60")().load(ntu_request(tmp_path / "b", root))
    skeleton = np.concatenate([bundle.train.arrays["skeleton"], bundle.test.arrays["skeleton"]])
    valid = skeleton[skeleton != 0]
    assert valid.std() > 0.05 and valid.min() >= 0.0 and valid.max() <= 1.0  # not all collapsed to 0.5


def test_a_release_without_a_usable_sample_is_named_as_such_later(tmp_path):
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:1])
    path = root / _ntu_format.SKELETON_DIR / f"{NTU_GOOD[0]}.skeleton"
    path.write_text(_corrupt(path.read_text(), "truncated"))
    request = ntu_request(tmp_path, root)
    with pytest.raises(ValueError, match="no usable ntu60 sample"):
        prepare("ntu60", root, request)
    with pytest.raises(FileNotFoundError, match="failed .*no usable ntu60 sample"):
        DATASETS.get("ntu60")().load(request)


def test_strict_imigue_names_the_csv_line(tmp_path, imigue_release):
    with pytest.raises(ValueError, match=r"labels_20200831\.csv:12: start_frame 'x' is not an integer"):
        prepare("imigue", imigue_release, ntu_request(tmp_path, imigue_release), strict=True)


def test_several_prepared_roots_need_a_choice(tmp_path):
    for name in ("one", "two"):
        root = make_ntu_tree(tmp_path / name, NTU_GOOD[:1])
        prepare("ntu60", root, ntu_request(tmp_path, root))
    with pytest.raises(FileNotFoundError, match="prepared from several roots"):
        DATASETS.get("ntu60")().load(DataRequest(cache_dir=str(tmp_path / "cache"), progress=False, **SIZES))


def test_a_plan_without_sample_names_is_refused(tmp_path):
    root = make_ntu_tree(tmp_path / "ntu", NTU_GOOD[:1])
    plan = ntu_module.plan_ntu60(root, ntu_request(tmp_path, root))
    del plan.arrays["name"]
    with pytest.raises(ValueError, match=r"every cache needs skeleton, label, name \(lacking: name\)"):
        _cache_write.run_prepare(plan, tmp_path / "cache", {}, progress=False)


def test_worker_modules_import_neither_torch_nor_the_registry():
    modules = ("_plan", "_unpickle", "_video", "_ntu_format", "_imigue_format")
    script = (f"import sys; import {', '.join(f'mmrobust.datasets.{m}' for m in modules)}; "
              "print(sorted(m for m in ('torch', 'mmrobust.registry', 'mmrobust.datasets.base') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
