"""iMiGUE files: the label CSV, OpenPose JSON keypoints, the MiGA challenge arrays.

Formats as released by the dataset authors (Liu et al., "iMiGUE: An Identity-free
Video Dataset for Micro-Gesture Understanding and Emotion Analysis", CVPR 2021;
github.com/linuxsino/iMiGUE) and by the MiGA challenge (skeleton track, as read
by github.com/VUT-HFUT/MiGA2023_Track1 ``tools/readlabel.py``):

- the label CSV, one micro-gesture clip per row: :data:`CSV_COLUMNS`; frame
  numbers count from 0 at 25 fps, ``end_frame`` inclusive; ``class`` is a code
  1-31 or 99;
- OpenPose output, one JSON file per video frame,
  ``<video>/<video>_<frame, 12 digits>_keypoints.json``, each person's BODY_25
  ``pose_keypoints_2d`` as 25 x (x, y, confidence) in video pixels, an
  undetected joint being (0, 0, 0);
- the challenge release: ``<part>_data.npy`` float (N, 3, T, V, 1) holding x,
  y, score, and ``<part>_label.pkl`` holding ``(names, labels)`` with labels
  already 0-31.

:func:`write_label_csv`, :func:`openpose_json` and :func:`write_example_video`
write the raw formats, for the dataset's example and the tests.

This module imports neither torch nor the dataset registry: its ``build_*``
functions run inside ``prepare`` worker processes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._plan import SampleError
from ._unpickle import load_data_pickle
from ._video import person_box, read_clip, uniform_indices, write_video

CSV_COLUMNS = ("video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame", "class",
               "subject_id", "subject_gender", "subject_nationality", "win_or_lose")
#: Micro-gesture codes of the CSV; label i is CLASS_CODES[i] (code 99 becomes 31).
CLASS_CODES = (*range(1, 32), 99)
CODE_TO_LABEL = {code: label for label, code in enumerate(CLASS_CODES)}
NUM_CLASSES = len(CLASS_CODES)
BODY25_JOINTS = 25


@dataclasses.dataclass(frozen=True)
class ClipRow:
    """One row of the label CSV, checked."""

    video_id: int
    label_id: int
    start_frame: int
    end_frame: int
    code: int
    subject_id: int
    line: int

    @property
    def name(self) -> str:
        return f"{self.video_id}_{self.label_id}"


def csv_header(path: str | Path) -> list[str]:
    """The column names of a CSV file ([] when it is empty or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            return [column.strip() for column in next(csv.reader(stream), [])]
    except (OSError, UnicodeDecodeError):
        return []


def read_label_csv(path: str | Path) -> tuple[list[ClipRow], list[SampleError]]:
    """Read the label CSV: the rows that parse, and one error per row that does not.

    Raises:
        ValueError: a required column is missing (the message names them).
    """
    rows: list[ClipRow] = []
    errors: list[SampleError] = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = [column.strip() for column in reader.fieldnames or []]
        missing = [column for column in CSV_COLUMNS if column not in columns]
        if missing:
            raise ValueError(f"{path}: label CSV lacks column(s) {', '.join(missing)}; "
                             f"expected {', '.join(CSV_COLUMNS)}")
        reader.fieldnames = columns
        for record in reader:
            line = reader.line_num
            try:
                values = {}
                for column in ("video_id", "label_id", "start_frame", "end_frame", "class", "subject_id"):
                    text = (record.get(column) or "").strip()
                    try:
                        values[column] = int(text)
                    except ValueError:
                        raise SampleError("malformed", f"{path}:{line}",
                                          f"{column} {text!r} is not an integer") from None
                if values["end_frame"] < values["start_frame"] or values["start_frame"] < 0:
                    raise SampleError("malformed", f"{path}:{line}", f"frames {values['start_frame']}-"
                                                                       f"{values['end_frame']} do not form a clip")
                rows.append(ClipRow(values["video_id"], values["label_id"], values["start_frame"],
                                    values["end_frame"], values["class"], values["subject_id"], line))
            except SampleError as error:
                errors.append(error)
    return rows, errors


def openpose_path(json_dir: str | Path, video_id: int | str, frame: int) -> Path:
    """Where OpenPose wrote the keypoints of ``frame`` of ``video_id``."""
    return Path(json_dir) / f"{video_id}_{frame:012d}_keypoints.json"


def read_openpose_frame(path: str | Path) -> np.ndarray:
    """BODY_25 poses of one OpenPose frame: float64 (P, 25, 3) of x, y, confidence.

    People with an empty ``pose_keypoints_2d`` are left out; P may be 0.

    Raises:
        SampleError: "missing" (no file), "malformed" (not OpenPose JSON, or a
            pose that is not 75 numbers) or "nan" (non-finite value).
    """
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        raise SampleError("missing", path, "OpenPose keypoint file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SampleError("malformed", path, f"not valid JSON ({error})") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise SampleError("malformed", path, "expected an OpenPose object with a 'people' list")
    poses = []
    for number, person in enumerate(people):
        values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(values, list):
            raise SampleError("malformed", path, f"person {number}: no pose_keypoints_2d list")
        if not values:
            continue
        if len(values) != BODY25_JOINTS * 3:
            raise SampleError("malformed", path, f"person {number}: pose_keypoints_2d has {len(values)} values, "
                                                 f"expected {BODY25_JOINTS * 3} (BODY_25: 25 x (x, y, confidence))")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise SampleError("malformed", path, f"person {number}: pose_keypoints_2d holds a non-number")
        if not all(math.isfinite(v) for v in values):
            raise SampleError("nan", path, f"person {number}: pose_keypoints_2d holds NaN or infinity")
        poses.append(np.asarray(values, dtype=np.float64).reshape(BODY25_JOINTS, 3))
    return np.stack(poses) if poses else np.zeros((0, BODY25_JOINTS, 3))


def main_person(poses: np.ndarray) -> np.ndarray | None:
    """The pose with the largest summed joint confidence (the speaker), or None."""
    if len(poses) == 0:
        return None
    return poses[int(np.argmax(poses[:, :, 2].sum(axis=1)))]


def _xy_with_gaps(xy: np.ndarray) -> np.ndarray:
    """Mark joints at exactly (0, 0) (not detected) as NaN; xy has x, y on axis 0."""
    xy = np.array(xy, dtype=np.float64)
    undetected = (xy[0] == 0) & (xy[1] == 0)
    xy[:, undetected] = np.nan
    return xy


def build_raw_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one CSV clip (its OpenPose frames and video) into cache rows.

    Skeleton and RGB frames are sampled uniformly (centre of each segment) over
    ``start_frame..end_frame``; only those frames' JSON files are read. Per
    frame the most confident person is kept (M = 1); undetected joints and
    frames without a person are NaN until the cache maps them to 0. The crop
    box covers that person's detected joints over the sampled RGB frames.
    """
    json_dir = Path(task["json_dir"])
    if not json_dir.is_dir():
        raise SampleError("missing", json_dir, "OpenPose keypoint folder not found")
    count = task["end"] - task["start"] + 1
    skeleton_frames = task["start"] + uniform_indices(count, config["skeleton_frames"])
    rgb_frames = task["start"] + uniform_indices(count, config["rgb_frames"]) if config.get("rgb", True) else []
    poses = {int(frame): main_person(read_openpose_frame(openpose_path(json_dir, task["video_id"], int(frame))))
             for frame in sorted(set(skeleton_frames.tolist()) | set(np.asarray(rgb_frames).tolist()))}

    skeleton = np.full((2, len(skeleton_frames), BODY25_JOINTS, 1), np.nan)
    for step, frame in enumerate(skeleton_frames):
        pose = poses[int(frame)]
        if pose is not None:
            skeleton[:, step, :, 0] = _xy_with_gaps(pose[:, :2].T)
    if np.isnan(skeleton).all():
        raise SampleError("no-bodies", json_dir, f"nobody detected in the sampled frames of "
                                                 f"{task['start']}-{task['end']}")
    values: dict[str, Any] = {"skeleton": skeleton.astype(np.float32), "label": np.int64(task["label"]),
                              "subject": np.int16(task["subject"]), "video": np.int32(task["video_id"]),
                              "clip": np.int32(task["clip"]), "name": np.str_(task["name"])}
    if config.get("rgb", True):
        points = [poses[int(f)][:, :2] for f in rgb_frames if poses[int(f)] is not None]
        points = np.concatenate(points) if points else np.zeros((0, 2))
        clip = read_clip(task["video"], rgb_frames, lambda width, height: person_box(points, width, height),
                         config["rgb_size"])
        values["rgb"] = np.ascontiguousarray(clip.transpose(3, 0, 1, 2))
    return values


# -- the challenge release ---------------------------------------------------

def read_challenge_part(data_path: str | Path, label_path: str | Path) -> tuple[list[str], list[Any], tuple[int, ...]]:
    """Check one ``<part>_data.npy`` / ``<part>_label.pkl`` pair: ``(names, labels, data shape)``.

    Raises:
        ValueError: wrong array layout, or names/labels that do not match it.
    """
    try:
        data = np.load(data_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise ValueError(f"{data_path}: not a readable .npy array ({error})") from None
    if data.ndim != 5 or data.shape[1] != 3 or data.shape[4] != 1 or not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"{data_path}: expected float (N, 3, T, V, 1) holding x, y, score of one person, "
                         f"found {data.dtype} {data.shape}")
    content = load_data_pickle(label_path)
    if not isinstance(content, list | tuple) or len(content) != 2:
        raise ValueError(f"{label_path}: expected a pair (names, labels), found {type(content).__name__}")
    names, labels = (list(part) for part in content)
    if len(names) != len(labels) or len(names) != data.shape[0]:
        raise ValueError(f"{label_path}: {len(names)} names and {len(labels)} labels for the "
                         f"{data.shape[0]} samples of {data_path}")
    return [str(name) for name in names], labels, tuple(data.shape)


def build_challenge_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one row of a challenge ``_data.npy`` into cache rows (skeleton only, x and y)."""
    where = f"{task['data']}[{task['row']}]"
    label = task["label"]
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < NUM_CLASSES:
        raise SampleError("label", where, f"label {label!r} outside 0..{NUM_CLASSES - 1}")
    sample = np.asarray(np.load(task["data"], mmap_mode="r")[task["row"]], dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise SampleError("nan", where, "holds NaN or infinite values")
    xy = _xy_with_gaps(sample[:2])
    if np.isnan(xy).all():
        raise SampleError("no-bodies", where, "no joint detected in any frame")
    frames = uniform_indices(xy.shape[1], config["skeleton_frames"])
    return {"skeleton": xy[:, frames].astype(np.float32), "label": np.int64(label),
            "part": np.int8(task["part"]), "name": np.str_(task["name"])}


def split_masks(arrays: Mapping[str, np.ndarray], train_subjects: Sequence[int]) -> dict[str, np.ndarray]:
    """Training-sample masks: cross-subject for the raw release, the given halves for the challenge."""
    if "part" in arrays:
        return {"challenge": np.asarray(arrays["part"]) == 0}
    return {"xsub": np.isin(arrays["subject"], list(train_subjects))}


# -- writing the raw formats (the dataset's example, tests) -------------------

#: Width, height and length of the videos :func:`write_example_video` writes.
EXAMPLE_VIDEO_SIZE = (64, 36)
EXAMPLE_VIDEO_FRAMES = 200


def label_row(video: int, clip: int, start: int, end: int, code: int, subject: int) -> dict[str, Any]:
    """One row of the label CSV (see :data:`CSV_COLUMNS`): clip ``clip`` of ``video``, frames ``start..end``."""
    return {"video_id": video, "label_id": clip, "start_time": round(start / 25, 4), "start_frame": start,
            "end_time": round(end / 25, 4), "end_frame": end, "class": code, "subject_id": subject,
            "subject_gender": "F", "subject_nationality": "Australia", "win_or_lose": "Win"}


def write_label_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the label CSV: the header :data:`CSV_COLUMNS`, then ``rows`` (from :func:`label_row`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(CSV_COLUMNS)] + [",".join(str(row[c]) for c in CSV_COLUMNS) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def openpose_json(people: Sequence[np.ndarray]) -> str:
    """One OpenPose frame file (BODY_25 pose, 70 face points, 21 per hand), as OpenPose 1.3 writes it."""
    persons = []
    for pose in people:
        persons.append({"person_id": [-1], "pose_keypoints_2d": [round(float(v), 3) for v in pose.reshape(-1)],
                        "face_keypoints_2d": [0.0] * 210, "hand_left_keypoints_2d": [0.0] * 63,
                        "hand_right_keypoints_2d": [0.0] * 63, "pose_keypoints_3d": [], "face_keypoints_3d": [],
                        "hand_left_keypoints_3d": [], "hand_right_keypoints_3d": []})
    return json.dumps({"version": 1.3, "people": persons}, separators=(",", ":"))


def example_pose(frame: int, seed: int) -> np.ndarray:
    """(25, 3) BODY_25 pose of a made-up speaker in pixels of the example video; joints 19-24 (feet) undetected."""
    rng = np.random.default_rng(seed)
    pose = np.zeros((BODY25_JOINTS, 3))
    pose[:, 0] = 24 + rng.uniform(0, 16, BODY25_JOINTS) + 2 * np.sin(frame / 5)
    pose[:, 1] = 6 + rng.uniform(0, 24, BODY25_JOINTS)
    pose[:, 2] = rng.uniform(0.3, 0.95, BODY25_JOINTS)
    pose[19:] = 0
    return np.round(pose, 3)


def write_example_video(root: str | Path, video: int, seed: int, *, frames: int = EXAMPLE_VIDEO_FRAMES,
                        json_frames: bool = True, video_file: bool = True) -> None:
    """Write video ``video`` of a raw release at ``root``: its OpenPose JSON per frame and its ``.mp4``.

    Every frame holds the speaker (:func:`example_pose`) and a less confident
    bystander; the video paints the speaker's joint box bright on dark, so a
    correct crop is bright in the middle.
    """
    root = Path(root)
    width, height = EXAMPLE_VIDEO_SIZE
    pixels = np.full((frames, height, width, 3), 30, dtype=np.uint8)
    folder = root / "Data" / "skeleton" / "raw" / str(video)
    for f in range(frames):
        pose = example_pose(f, seed)
        detected = pose[:19]
        pixels[f, int(detected[:, 1].min()):int(detected[:, 1].max()) + 1,
               int(detected[:, 0].min()):int(detected[:, 0].max()) + 1] = 220
        if json_frames:
            folder.mkdir(parents=True, exist_ok=True)
            bystander = pose.copy()
            bystander[:, 2] *= 0.2
            openpose_path(folder, video, f).write_text(openpose_json([bystander, pose]))
    if video_file:
        write_video(root / "Data" / "video" / f"{video}.mp4", pixels, codec="mpeg4", fps=25)
