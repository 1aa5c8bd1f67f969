"""iMiGUE: micro-gestures of tennis players in post-match press conferences, RGB + 2-D pose.

Dataset: Liu et al., "iMiGUE: An Identity-free Video Dataset for Micro-Gesture
Understanding and Emotion Analysis", CVPR 2021 (github.com/linuxsino/iMiGUE).
32 classes: micro-gesture codes 1-31 become labels 0-30 and code 99 label 31
(the manifest records the mapping; class names are the codes).

The release is converted once by ``prepare`` into a memory-mapped cache (see
:mod:`mmrobust.datasets._cache_write`)::

    mmrobust prepare --dataset imigue --root /data/imigue

``--root`` holds either the raw release::

    Label/labels_20200831.csv          (or any *.csv in root or Label/ with the label columns)
    Data/skeleton/raw/<video>/<video>_<frame:012d>_keypoints.json   (or skeleton/<video>/...)
    Data/video/<video>.mp4             (or video/, videos/; .mp4 .avi .mkv .webm .mov)

or the MiGA challenge skeleton release (skeleton only)::

    train_data.npy  train_label.pkl    (parts named train* form the training half,
    test_data.npy   test_label.pkl      every other part the test half)

What a sample becomes:
    ``skeleton``: float32 (2, T, V, 1), T = ``skeleton_frames``: x and y in
    pixels of the most confident person (V = 25 BODY_25 joints, or the
    challenge's 22), mapped by one affine map with a single scale
    (``DatasetBundle.skeleton_scale`` pixels per 1.0) so that every detected
    joint of the dataset lies in [0.01, 0.99]. OpenPose's confidence is
    not kept as a channel, so every channel is a coordinate and an L-inf budget
    reads in pixels; undetected joints (x = y = 0) and frames without a person
    are exactly 0.0.
    ``rgb`` (raw release only): uint8 (3, T, S, S), a square crop around the
    person's detected joints over the sampled frames (half-sides +25 %, black
    outside the frame, the whole frame below 10 px).
Frames are sampled deterministically (centre of T equal segments of the clip's
``start_frame..end_frame``), once, at prepare time. The CSV frame numbers are
taken to count the video's decoded frames from 0, as the OpenPose file names do.

Splits: ``xsub`` (raw release; default) trains on the 37 subjects of
:data:`XSUB_TRAIN_SUBJECTS` and tests on the other 35; ``challenge`` (challenge
release; its default) keeps the release's own train and test parts.

Example::

    from mmrobust.datasets.base import DataRequest
    from mmrobust.registry import DATASETS

    bundle = DATASETS.get("imigue")().load(DataRequest(root="/data/imigue"))
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from ..registry import register_dataset
from . import _imigue_format
from ._cache_read import PreparedRelease, find_prepared
from ._cache_write import read_json
from ._plan import Planner, PreparePlan, SampleError
from .base import RGB, SKELETON, DataRequest

SPLITS = ("xsub", "challenge")
XSUB_TRAIN_SUBJECTS = (2, 4, 5, 6, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 23, 25, 28, 29, 30, 31, 35, 36,
                       38, 39, 41, 42, 43, 44, 46, 47, 48, 52, 53, 59, 61, 62)
DEFAULT_EPOCHS = 40
CLASS_NAMES = tuple(str(code) for code in _imigue_format.CLASS_CODES)
SKELETON_DIRS = ("Data/skeleton/raw", "skeleton/raw", "skeleton", "skeletons")
VIDEO_DIRS = ("Data/video", "Data/videos", "video", "videos")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
#: The label CSV rows of :meth:`IMiGUE.example` (video, clip, start, end, code, subject): subject 2 trains,
#: subject 1 tests.
EXAMPLE_CLIPS = ((101, 1, 10, 25, 5, 2), (101, 2, 30, 50, 99, 2), (102, 1, 0, 20, 31, 1), (102, 2, 25, 45, 12, 1))

_split_masks = functools.partial(_imigue_format.split_masks, train_subjects=XSUB_TRAIN_SUBJECTS)


@register_dataset("imigue")
class IMiGUE(PreparedRelease):
    """iMiGUE from its raw release (RGB + 2-D pose) or the MiGA challenge arrays (skeleton only)."""

    modalities = (RGB, SKELETON)

    name, splits, default_epochs, release = "imigue", SPLITS, DEFAULT_EPOCHS, "raw or challenge release"
    split_masks = _split_masks  # a partial, so not bound as a method

    def plan(self, root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
        return plan_imigue(root, request, strict=strict)

    def default_split(self, request: DataRequest) -> str:
        """``challenge`` for a cache prepared from the MiGA challenge arrays, else ``xsub``."""
        manifest = read_json(find_prepared("imigue", request) / "manifest.json")
        return "challenge" if manifest["source"] == "challenge" else "xsub"

    def example(self, directory: Path) -> DataRequest:
        """A prepared raw release of four clips from two 60-frame videos under ``directory`` (label CSV,
        OpenPose JSON, ``.mp4``), in the real file formats."""
        request = dataclasses.replace(super().example(directory / "cache"), root=str(directory / "release"))
        for video, seed in ((101, 1), (102, 2)):
            _imigue_format.write_example_video(request.root, video, seed, frames=60)
        rows = [_imigue_format.label_row(*clip) for clip in EXAMPLE_CLIPS]
        _imigue_format.write_label_csv(Path(request.root) / "Label" / "labels.csv", rows)
        self.prepare(request)
        return request


def plan_imigue(root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
    """Scan ``root`` and list the work: one task per usable clip, skips with reasons."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected the iMiGUE release)")
    if any(root.glob("*_data.npy")):
        return _plan_challenge(root, request, strict)
    csv_path = _find_label_csv(root)
    skeleton_dir = _first_dir(root, SKELETON_DIRS)
    video_dir = _first_dir(root, VIDEO_DIRS)
    if skeleton_dir is None or video_dir is None:
        missing = "OpenPose keypoint folder" if skeleton_dir is None else "video folder"
        looked = SKELETON_DIRS if skeleton_dir is None else VIDEO_DIRS
        raise FileNotFoundError(f"{root}: no {missing} (looked for {', '.join(looked)}); expected the iMiGUE "
                                "release with label CSV, OpenPose JSON and videos, or the challenge *_data.npy")
    return _plan_raw(root, csv_path, skeleton_dir, video_dir, request, strict)


def _first_dir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_dir()), None)


def _find_label_csv(root: Path) -> Path:
    candidates = sorted(root.glob("*.csv")) + sorted(root.glob("Label/*.csv"))
    if not candidates:
        raise FileNotFoundError(f"{root}: no label CSV (looked for *.csv in {root} and {root / 'Label'})")
    matching = [path for path in candidates
                if set(_imigue_format.CSV_COLUMNS) <= set(_imigue_format.csv_header(path))]
    if not matching:
        header = _imigue_format.csv_header(candidates[0])
        lacking = [c for c in _imigue_format.CSV_COLUMNS if c not in header]
        raise ValueError(f"{candidates[0]}: label CSV lacks column(s) {', '.join(lacking)}; "
                         f"expected {', '.join(_imigue_format.CSV_COLUMNS)}")
    if len(matching) > 1:
        raise ValueError(f"{root}: several label CSVs ({', '.join(map(str, matching))}); keep one")
    return matching[0]


def _plan_raw(root: Path, csv_path: Path, skeleton_dir: Path, video_dir: Path, request: DataRequest,
              strict: bool) -> PreparePlan:
    rows, errors = _imigue_format.read_label_csv(csv_path)
    planner = Planner(strict)
    for error in errors:
        planner.skip(error, f"csv line {error.path.rsplit(':', 1)[-1]}")
    videos = {}
    for entry in os.scandir(video_dir):
        stem, extension = os.path.splitext(entry.name)
        if extension.lower() in VIDEO_EXTENSIONS:
            videos.setdefault(stem, entry.path)
    seen: set[str] = set()
    for row in rows:
        where = f"{csv_path}:{row.line}"
        if row.code not in _imigue_format.CODE_TO_LABEL:
            planner.skip(SampleError("label", where, f"class {row.code} is not an iMiGUE code (1-31 or 99)"), row.name)
            continue
        if row.name in seen:
            planner.skip(SampleError("duplicate", where, f"video {row.video_id} label_id {row.label_id} "
                                                         "appears twice"), row.name)
            continue
        seen.add(row.name)
        json_dir = skeleton_dir / str(row.video_id)
        if not json_dir.is_dir():
            planner.skip(SampleError("missing", json_dir, "OpenPose keypoint folder not found"), row.name)
            continue
        if str(row.video_id) not in videos:
            planner.skip(SampleError("missing", video_dir / f"{row.video_id}.mp4", "video not found"), row.name)
            continue
        planner.tasks.append({"name": row.name, "video_id": row.video_id, "clip": row.label_id,
                              "start": row.start_frame, "end": row.end_frame,
                              "label": _imigue_format.CODE_TO_LABEL[row.code], "subject": row.subject_id,
                              "json_dir": str(json_dir), "video": videos[str(row.video_id)]})
    arrays = {
        "skeleton": ((2, request.skeleton_frames, _imigue_format.BODY25_JOINTS, 1), "float32"),
        "rgb": ((3, request.rgb_frames, request.rgb_size, request.rgb_size), "uint8"),
        "label": ((), "int64"), "subject": ((), "int16"), "video": ((), "int32"), "clip": ((), "int32"),
        "name": ((), "<U24"),
    }
    info = {**_info(), "label_csv": str(csv_path), "keypoints": "OpenPose BODY_25 (25 joints)",
            "rgb_crop": "square box around the person's detected joints over the sampled frames, "
                        "half-sides +25 %, black outside the frame, whole frame below 10 px"}
    return _plan(root, request, planner, "raw", arrays, _imigue_format.build_raw_sample, info)


def _plan_challenge(root: Path, request: DataRequest, strict: bool) -> PreparePlan:
    planner = Planner(strict)
    joints = None
    parts = []
    for data_path in sorted(root.glob("*_data.npy")):
        part = data_path.name[:-len("_data.npy")]
        label_path = root / f"{part}_label.pkl"
        if not label_path.is_file():
            raise FileNotFoundError(f"{label_path}: labels for {data_path.name} not found")
        names, labels, shape = _imigue_format.read_challenge_part(data_path, label_path)
        if joints is not None and shape[3] != joints:
            raise ValueError(f"{data_path}: {shape[3]} joints, but other parts have {joints}")
        joints = shape[3]
        is_train = part.lower().startswith("train")
        parts.append({"part": part, "samples": len(names), "half": "train" if is_train else "test"})
        for row, (name, label) in enumerate(zip(names, labels)):
            planner.tasks.append({"name": f"{part}/{name}", "data": str(data_path), "row": row,
                                  "label": label, "part": 0 if is_train else 1})
    if not any(p["half"] == "train" for p in parts) or not any(p["half"] == "test" for p in parts):
        raise FileNotFoundError(f"{root}: the challenge release needs a train* part and another part for testing, "
                                f"found {', '.join(p['part'] for p in parts)}")
    arrays = {
        "skeleton": ((2, request.skeleton_frames, joints, 1), "float32"),
        "label": ((), "int64"), "part": ((), "int8"), "name": ((), "<U64"),
    }
    info = {**_info(), "parts": parts, "keypoints": f"MiGA challenge layout ({joints} joints); score not kept",
            "class_mapping_note": "the challenge labels are used as given (0-31), assumed to follow the same "
                                  "code order"}
    return _plan(root, request, planner, "challenge", arrays, _imigue_format.build_challenge_sample, info)


def _info() -> dict[str, Any]:
    return {
        "class_mapping": {str(code): label for code, label in _imigue_format.CODE_TO_LABEL.items()},
        "persons": "per frame the person with the largest summed joint confidence (M = 1)",
        "sampling": "deterministic: centre frame of each of T equal segments of the clip, fixed at prepare time",
        "xsub_train_subjects": list(XSUB_TRAIN_SUBJECTS),
    }


def _plan(root: Path, request: DataRequest, planner: Planner, source: str, arrays, worker, info) -> PreparePlan:
    config = {"skeleton_frames": request.skeleton_frames, "rgb_frames": request.rgb_frames,
              "rgb_size": request.rgb_size, "rgb": "rgb" in arrays}
    return PreparePlan(
        dataset="imigue", source=source, root=os.path.realpath(root),
        names=[task["name"] for task in planner.tasks], tasks=planner.tasks, arrays=arrays,
        worker=worker, config=config, split_masks=_split_masks, class_names=CLASS_NAMES,
        skeleton_unit="px", skeleton_axes=("x", "y"), skipped=planner.skipped, info=info,
    )
