"""iMiGUE files: label CSVs, OpenPose keypoints (per-frame JSON, per-video tables), the MiGA challenge arrays.

Formats as released by the dataset authors (Liu et al., "iMiGUE: An Identity-free
Video Dataset for Micro-Gesture Understanding and Emotion Analysis", CVPR 2021;
github.com/linuxsino/iMiGUE) and by the organisers of the MiGA challenge
(skeleton track; their data generator reads ``<video>_light_hand.csv`` and
``<video>_label.csv`` and writes ``<part>_data.npy`` / ``<part>_label.pkl``):

- the label CSV, one micro-gesture clip per row: :data:`CSV_COLUMNS`; frame
  numbers count from 0 at 25 fps, ``end_frame`` inclusive; ``class`` is a code
  1-31 or 99;
- OpenPose output, one JSON file per video frame,
  ``<video>/<video>_<frame, 12 digits>_keypoints.json`` (``<video>`` with or
  without zero padding), each person's BODY_25 ``pose_keypoints_2d`` as
  25 x (x, y, confidence) in video pixels, an undetected joint being (0, 0, 0);
- the same OpenPose output as one table per video, one row per frame:
  ``<video>/<video>_2.xlsx`` holds all :data:`OPENPOSE_POINTS` = 137 points
  (BODY_25, 70 face, 21 left hand, 21 right hand) x (x, y, score), and the
  challenge's ``<video>/<video>_light_hand.csv`` :data:`LIGHT_HAND_POINTS` = 35
  (BODY_25, then five points of the left hand and five of the right). Either
  table may start with a header row and a column of frame numbers (as pandas
  writes them); without that column the n-th row is frame n;
- the challenge's per-video labels ``<video>/<video>_label.csv``: one clip per
  line, ``class code, start frame, end frame``, no header;
- the challenge arrays: ``<part>_data.npy`` float (N, 3, 90, 22, 1) holding x,
  y, score of :data:`MIGA_JOINTS`, each clip from its first frame (the last 90
  frames of a longer one), zeros after its end; ``<part>_label.pkl`` holding
  ``(names, labels)`` with labels already 0-31.

Every coordinate is in pixels of the video OpenPose ran on, 1920 x 1080
(:data:`KEYPOINT_FRAME`); the person crop rescales them to the size of the
decoded video.

The 22 joints of the challenge (:data:`MIGA_JOINTS`): the organisers' generator
takes, in this order, columns 0-7 and 15-18 of the light-hand table (BODY_25
nose, neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist, right
eye, left eye, right ear, left ear), then its ten hand columns 25-34. Their
reader names those BODY_25 joints from the viewer's side (its "ShoulderLeft"
is BODY_25's RShoulder) and draws hand columns 25-29 from BODY_25's LWrist, so
the first five hand points are OpenPose's left hand, as OpenPose writes hands
(left, then right). Which five of a hand's 21 points they are is not stated
by the organisers; they are taken to be the fingertips (OpenPose hand points
4, 8, 12, 16, 20: thumb, index, middle, ring, little), as a public reader of
these files names them and as the challenge graph (each of the five joined to
the wrist alone) suggests. :data:`MIGA_FROM_OPENPOSE` and
:data:`MIGA_FROM_LIGHT_HAND` apply this mapping, so a clip read from an Excel
table, a light-hand table or the challenge arrays gives the same skeleton.

:func:`write_label_csv`, :func:`openpose_json`, :func:`write_openpose_xlsx`,
:func:`write_light_hand_csv`, :func:`write_clip_labels`,
:func:`challenge_rows` and :func:`write_example_video` write the formats, for
the dataset's example and the tests.

This module imports neither torch nor the dataset registry: its ``build_*``
functions run inside ``prepare`` worker processes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

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
#: OpenPose points of one person: BODY_25, 70 face, 21 left hand, 21 right hand.
OPENPOSE_POINTS = 137
FACE_POINTS, HAND_POINTS = 70, 21
LEFT_HAND_START = BODY25_JOINTS + FACE_POINTS
RIGHT_HAND_START = LEFT_HAND_START + HAND_POINTS
#: Hand points taken as "the five points of a hand": the fingertips, thumb to little finger.
FINGERTIPS = (4, 8, 12, 16, 20)
#: Points of the challenge's light-hand table: BODY_25, five left-hand points, five right-hand points.
LIGHT_HAND_POINTS = BODY25_JOINTS + 2 * len(FINGERTIPS)
#: Where each light-hand point is among the 137 OpenPose points.
LIGHT_HAND_FROM_OPENPOSE = (*range(BODY25_JOINTS), *(LEFT_HAND_START + p for p in FINGERTIPS),
                            *(RIGHT_HAND_START + p for p in FINGERTIPS))
#: The 22 joints of the MiGA challenge arrays, in their order (left and right are the person's).
MIGA_JOINTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
               "left_wrist", "right_eye", "left_eye", "right_ear", "left_ear",
               "left_thumb_tip", "left_index_tip", "left_middle_tip", "left_ring_tip", "left_little_tip",
               "right_thumb_tip", "right_index_tip", "right_middle_tip", "right_ring_tip", "right_little_tip")
#: Where each of :data:`MIGA_JOINTS` is among the 35 light-hand points.
MIGA_FROM_LIGHT_HAND = (*range(8), 15, 16, 17, 18, *range(BODY25_JOINTS, LIGHT_HAND_POINTS))
#: Where each of :data:`MIGA_JOINTS` is among the 137 OpenPose points.
MIGA_FROM_OPENPOSE = tuple(LIGHT_HAND_FROM_OPENPOSE[i] for i in MIGA_FROM_LIGHT_HAND)
MIGA_NUM_JOINTS = len(MIGA_JOINTS)
#: Frames per clip in the challenge arrays.
CHALLENGE_FRAMES = 90
#: Width and height of the video frames the keypoints are measured in (pixels).
KEYPOINT_FRAME = (1920, 1080)
#: Per-video skeleton tables: points per row and where the :data:`MIGA_JOINTS` are among them.
TABLES = {"xlsx": (OPENPOSE_POINTS, MIGA_FROM_OPENPOSE), "light-hand": (LIGHT_HAND_POINTS, MIGA_FROM_LIGHT_HAND)}
_JSON_NAME = re.compile(r"(\d+)_(\d{12})_keypoints\.json")


# -- the label CSV -------------------------------------------------------------

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
                    values[column] = _integer(record.get(column), column, f"{path}:{line}")
                _check_frames(values["start_frame"], values["end_frame"], f"{path}:{line}")
                rows.append(ClipRow(values["video_id"], values["label_id"], values["start_frame"],
                                    values["end_frame"], values["class"], values["subject_id"], line))
            except SampleError as error:
                errors.append(error)
    return rows, errors


def _integer(text: str | None, column: str, where: str) -> int:
    text = (text or "").strip()
    try:
        return int(text)
    except ValueError:
        raise SampleError("malformed", where, f"{column} {text!r} is not an integer") from None


def _check_frames(start: int, end: int, where: str) -> None:
    if end < start or start < 0:
        raise SampleError("malformed", where, f"frames {start}-{end} do not form a clip")


@dataclasses.dataclass(frozen=True)
class VideoClip:
    """One line of a challenge ``<video>_label.csv``, checked: clip ``index`` (0-based) of its video."""

    code: int
    start_frame: int
    end_frame: int
    index: int
    line: int


def read_clip_labels(path: str | Path) -> tuple[list[VideoClip], list[tuple[int, SampleError]]]:
    """Read a challenge ``<video>_label.csv`` (``class code, start frame, end frame`` per line).

    Returns the clips that parse and, for each line that does not, its clip
    index and the error. A first line holding words is taken as a header.
    """
    clips: list[VideoClip] = []
    errors: list[tuple[int, SampleError]] = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        lines = [(number, row) for number, row in enumerate(csv.reader(stream), start=1)
                 if any(cell.strip() for cell in row)]
    if lines and not all(_is_number(cell) for cell in lines[0][1] if cell.strip()):
        lines = lines[1:]
    for index, (number, row) in enumerate(lines):
        where = f"{path}:{number}"
        try:
            cells = [cell for cell in row if cell.strip()]
            if len(cells) != 3:
                raise SampleError("malformed", where, f"{len(cells)} fields, expected 3 (class code, start frame, "
                                                      "end frame)")
            code, start, end = (_integer(cell, column, where) for cell, column in
                                zip(cells, ("class", "start frame", "end frame")))
            _check_frames(start, end, where)
            clips.append(VideoClip(code, start, end, index, number))
        except SampleError as error:
            errors.append((index, error))
    return clips, errors


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


# -- OpenPose JSON ---------------------------------------------------------------

def openpose_path(json_dir: str | Path, video_id: int | str, frame: int) -> Path:
    """Where OpenPose wrote the keypoints of ``frame`` of ``video_id`` (the file-name prefix as the folder uses it)."""
    return Path(json_dir) / f"{video_id}_{frame:012d}_keypoints.json"


def openpose_prefix(name: str) -> str | None:
    """The video prefix of an OpenPose JSON file name (``"0298"`` of ``0298_000000000012_keypoints.json``)."""
    match = _JSON_NAME.fullmatch(name)
    return match.group(1) if match else None


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


# -- per-video skeleton tables -----------------------------------------------------

def table_kind(path: str | Path) -> str:
    """``"xlsx"`` for an Excel table, ``"light-hand"`` for the challenge's CSV (see :data:`TABLES`)."""
    return "xlsx" if str(path).lower().endswith(".xlsx") else "light-hand"


def read_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a per-video skeleton table (Excel or light-hand CSV).

    Returns:
        ``(frames, joints)``: int64 (F,) frame numbers, increasing, and float32
        (F, 22, 3) x, y, score of :data:`MIGA_JOINTS` per frame (all 0 where
        OpenPose found nothing; empty cells read as 0).

    Raises:
        SampleError: "missing" (no file), "unreadable" (not a workbook or not
            text), "malformed" (wrong column count, a non-number, frame numbers
            that are not increasing integers, no rows) or "nan".
    """
    kind = table_kind(path)
    points, joint_index = TABLES[kind]
    if not os.path.isfile(path):
        raise SampleError("missing", path, "skeleton table not found")
    rows = _xlsx_rows(path) if kind == "xlsx" else _csv_rows(path)
    frames, values = _parse_table(rows, path, points)
    joints = values.reshape(len(frames), points, 3)[:, list(joint_index)]
    return frames, np.ascontiguousarray(joints, dtype=np.float32)


def _xlsx_rows(path: str | Path) -> Iterable[Sequence[Any]]:
    import openpyxl  # only Excel tables need it
    from openpyxl.utils.exceptions import InvalidFileException

    unreadable = (InvalidFileException, OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile, ParseError)
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        sheet = workbook.worksheets[0]
    except unreadable as error:
        raise SampleError("unreadable", path, f"not a readable .xlsx workbook ({type(error).__name__}: {error})") from None
    try:
        rows = sheet.iter_rows(values_only=True)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except unreadable as error:
                raise SampleError("unreadable", path, f"the worksheet does not read ({type(error).__name__}: "
                                                      f"{error})") from None
            yield row
    finally:
        workbook.close()


def _csv_rows(path: str | Path) -> Iterable[Sequence[Any]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            yield from csv.reader(stream)
    except UnicodeDecodeError as error:
        raise SampleError("unreadable", path, f"not a text CSV ({error})") from None


def _parse_table(rows: Iterable[Sequence[Any]], path: str | Path, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers and (F, 3 * points) values of a table's rows; see :func:`read_table`."""
    width = 3 * points
    values: list[np.ndarray] = []
    first = True
    for number, row in enumerate(rows, start=1):
        cells = list(row)
        while cells and cells[-1] in (None, ""):
            cells.pop()
        if not cells:
            continue
        if first and _is_header(cells, width):
            first = False
            continue
        first = False
        values.append(_numbers(cells, path, number))
    if not values:
        raise SampleError("malformed", path, "holds no frame rows")
    columns = max(len(v) for v in values)
    if columns not in (width, width + 1):
        raise SampleError("malformed", path, f"rows have {columns} columns, expected {width} ({points} OpenPose "
                                             f"points x (x, y, score)) or {width + 1} with a leading frame number")
    table = np.zeros((len(values), columns))
    for row, v in enumerate(values):
        table[row, :len(v)] = v
    if not np.isfinite(table).all():
        row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
        raise SampleError("nan", path, f"data row {row + 1} holds NaN or infinity")
    if columns == width:
        return np.arange(len(table), dtype=np.int64), table
    frames = table[:, 0]
    if not (np.all(frames == np.round(frames)) and np.all(np.diff(frames) > 0) and frames[0] >= 0):
        raise SampleError("malformed", path, "the first column holds no increasing frame numbers "
                                             "(needed when a row has one value more than the points)")
    return frames.astype(np.int64), table[:, 1:]


def _is_header(cells: list[Any], width: int) -> bool:
    """A table's first row is a header when it holds words, has a blank corner above the frame column (as
    pandas writes it), or counts the columns 0, 1, 2, ... (a score of 2 is no OpenPose value)."""
    if not all(_is_number(c) for c in cells if c not in (None, "")):
        return True
    if len(cells) == width + 1 and cells[0] in (None, ""):
        return True
    numbers = [float(c) for c in cells if c not in (None, "")]
    return len(numbers) > 3 and numbers[0] in (0.0, 1.0) and numbers == [numbers[0] + i for i in range(len(numbers))]


def _numbers(cells: list[Any], path: str | Path, number: int) -> np.ndarray:
    try:
        return np.array([0.0 if c is None or c == "" else c for c in cells], dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for column, cell in enumerate(cells, start=1):
        if cell not in (None, "") and (isinstance(cell, bool) or not _is_number(cell)):
            raise SampleError("malformed", path, f"row {number}, column {column}: {cell!r} is not a number")
    raise SampleError("malformed", path, f"row {number} does not read as numbers")


#: Bumped when :func:`read_table` changes what it returns; part of every converted table's name.
_TABLE_VERSION = 1
_last_table: dict[str, Any] = {}


def load_table(path: str | Path, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_table`, converted once per file.

    With ``cache_dir``, the first call for a file writes its frames and joints
    to ``cache_dir/<key>.npy`` (float32 (F, 1 + 66); or why it is unusable to
    ``<key>.error.json``), keyed by the file's path, size and modification
    time; later calls, from any process, memory-map it. Workers preparing
    different clips of one video thus parse its table once. Without, the
    last table read is kept in memory.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise SampleError("missing", path, "skeleton table not found") from None
    key = hashlib.sha256(f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{_TABLE_VERSION}".encode())
    key = key.hexdigest()[:32]
    if cache_dir is None:
        if _last_table.get("key") != key:
            _last_table.clear()
            _last_table.update(key=key, table=read_table(path))
        return _last_table["table"]
    cache_dir = Path(cache_dir)
    array_path, error_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.error.json"
    if not array_path.exists():
        record = None
        if error_path.exists():
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                record = json.loads(error_path.read_text())
                record = SampleError(record["kind"], record["path"], record["reason"])
        if record is not None:
            raise record
        try:
            frames, joints = read_table(path)
        except SampleError as error:
            if error.kind != "missing":
                _atomic_write(error_path, json.dumps({"kind": error.kind, "path": error.path,
                                                      "reason": error.reason}).encode())
            raise
        table = np.concatenate([frames[:, None].astype(np.float32), joints.reshape(len(frames), -1)], axis=1)
        _atomic_write(array_path, table)
    table = np.load(array_path, mmap_mode="r")
    return np.asarray(table[:, 0], dtype=np.int64), table[:, 1:].reshape(len(table), MIGA_NUM_JOINTS, 3)


def _atomic_write(path: Path, content: bytes | np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as stream:
        if isinstance(content, np.ndarray):
            np.save(stream, content)
        else:
            stream.write(content)
    os.replace(temporary, path)


# -- building cache rows (prepare workers) ------------------------------------------

def _xy_with_gaps(xy: np.ndarray) -> np.ndarray:
    """Mark joints at exactly (0, 0) (not detected) as NaN; xy has x, y on axis 0."""
    xy = np.array(xy, dtype=np.float64)
    undetected = (xy[0] == 0) & (xy[1] == 0)
    xy[:, undetected] = np.nan
    return xy


def _crop_box(points: np.ndarray):
    """The crop box, for the decoded frame size, around ``points`` (K, 2) given in :data:`KEYPOINT_FRAME` pixels."""
    def box_for(width: int, height: int) -> tuple[int, int, int]:
        scaled = np.asarray(points, dtype=np.float64) * np.array([width / KEYPOINT_FRAME[0],
                                                                  height / KEYPOINT_FRAME[1]])
        return person_box(scaled, width, height)
    return box_for


def _clip_frames(task: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton and RGB frame numbers of a clip: centres of equal segments of ``start..end``."""
    count = task["end"] - task["start"] + 1
    skeleton_frames = task["start"] + uniform_indices(count, config["skeleton_frames"])
    rgb_frames = (task["start"] + uniform_indices(count, config["rgb_frames"]) if config.get("rgb", True)
                  else np.zeros(0, dtype=np.int64))
    return skeleton_frames, rgb_frames


def _metadata(task: Mapping[str, Any]) -> dict[str, Any]:
    values = {"label": np.int64(task["label"]), "video": np.int32(task["video_id"]), "clip": np.int32(task["clip"]),
              "name": np.str_(task["name"])}
    if "subject" in task:
        values["subject"] = np.int16(task["subject"])
    if "part" in task:
        values["part"] = np.int8(task["part"])
    return values


def _rgb(task: Mapping[str, Any], config: Mapping[str, Any], frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    clip = read_clip(task["video"], frames, _crop_box(points), config["rgb_size"])
    return np.ascontiguousarray(clip.transpose(3, 0, 1, 2))


def build_raw_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one CSV clip (its OpenPose JSON frames and video) into cache rows.

    Skeleton and RGB frames are sampled uniformly (centre of each segment) over
    ``start_frame..end_frame``; only those frames' JSON files are read. Per
    frame the most confident person is kept (M = 1); undetected joints and
    frames without a person are NaN until the cache maps them to 0. The crop
    box covers that person's detected joints over the sampled RGB frames,
    rescaled from :data:`KEYPOINT_FRAME` to the decoded video size.
    """
    json_dir = Path(task["json_dir"])
    if not json_dir.is_dir():
        raise SampleError("missing", json_dir, "OpenPose keypoint folder not found")
    prefix = task.get("json_prefix", task["video_id"])
    skeleton_frames, rgb_frames = _clip_frames(task, config)
    poses = {int(frame): main_person(read_openpose_frame(openpose_path(json_dir, prefix, int(frame))))
             for frame in sorted(set(skeleton_frames.tolist()) | set(rgb_frames.tolist()))}

    skeleton = np.full((2, len(skeleton_frames), BODY25_JOINTS, 1), np.nan)
    for step, frame in enumerate(skeleton_frames):
        pose = poses[int(frame)]
        if pose is not None:
            skeleton[:, step, :, 0] = _xy_with_gaps(pose[:, :2].T)
    if np.isnan(skeleton).all():
        raise SampleError("no-bodies", json_dir, f"nobody detected in the sampled frames of "
                                                 f"{task['start']}-{task['end']}")
    values = {"skeleton": skeleton.astype(np.float32), **_metadata(task)}
    if config.get("rgb", True):
        points = [poses[int(f)][:, :2] for f in rgb_frames if poses[int(f)] is not None]
        values["rgb"] = _rgb(task, config, rgb_frames, np.concatenate(points) if points else np.zeros((0, 2)))
    return values


def build_table_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one clip of a per-video skeleton table (Excel or light-hand CSV) and its video into cache rows.

    Frames are sampled as in :func:`build_raw_sample`; the skeleton holds x, y
    of the :data:`MIGA_JOINTS` (NaN where undetected) and the crop box covers
    them over the sampled RGB frames. A sampled frame the table lacks makes
    the clip unusable.
    """
    frames, joints = load_table(task["table"], task.get("table_cache"))
    skeleton_frames, rgb_frames = _clip_frames(task, config)
    wanted = np.array(sorted(set(skeleton_frames.tolist()) | set(rgb_frames.tolist())), dtype=np.int64)
    rows = np.minimum(np.searchsorted(frames, wanted), len(frames) - 1)
    absent = wanted[frames[rows] != wanted]
    if len(absent):
        raise SampleError("malformed", task["table"], f"has no row for frame {int(absent[0])} of clip "
                                                      f"{task['start']}-{task['end']} (its frames run "
                                                      f"{int(frames[0])}-{int(frames[-1])})")
    pose = {int(f): np.asarray(joints[r], dtype=np.float64) for f, r in zip(wanted, rows)}
    skeleton = np.stack([_xy_with_gaps(pose[int(f)][:, :2].T) for f in skeleton_frames], axis=1)[..., None]
    if np.isnan(skeleton).all():
        raise SampleError("no-bodies", task["table"], f"nobody detected in the sampled frames of "
                                                      f"{task['start']}-{task['end']}")
    values = {"skeleton": skeleton.astype(np.float32), **_metadata(task)}
    if config.get("rgb", True):
        points = np.concatenate([pose[int(f)][:, :2] for f in rgb_frames])
        values["rgb"] = _rgb(task, config, rgb_frames, points)
    return values


# -- the challenge arrays ------------------------------------------------------------

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


def clip_length(sample: np.ndarray) -> int:
    """Frames of a challenge clip (C, T, V, M) before its trailing run of all-zero (padding) frames."""
    used = np.flatnonzero(np.any(np.asarray(sample) != 0, axis=(0, 2, 3)))
    return int(used[-1]) + 1 if len(used) else 0


def build_challenge_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one row of a challenge ``_data.npy`` into cache rows (skeleton only, x and y).

    Frames are sampled uniformly over the clip's frames before the zero
    padding (see :func:`clip_length`); an all-zero row is unusable.
    """
    where = f"{task['data']}[{task['row']}]"
    label = task["label"]
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < NUM_CLASSES:
        raise SampleError("label", where, f"label {label!r} outside 0..{NUM_CLASSES - 1}")
    sample = np.asarray(np.load(task["data"], mmap_mode="r")[task["row"]], dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise SampleError("nan", where, "holds NaN or infinite values")
    length = clip_length(sample)
    if length == 0:
        raise SampleError("no-bodies", where, "all zeros: the clip holds padding only")
    xy = _xy_with_gaps(sample[:2, :length])
    if np.isnan(xy).all():
        raise SampleError("no-bodies", where, "no joint detected in any frame")
    frames = uniform_indices(length, config["skeleton_frames"])
    return {"skeleton": xy[:, frames].astype(np.float32), "label": np.int64(label),
            "part": np.int8(task["part"]), "name": np.str_(task["name"])}


def split_masks(arrays: Mapping[str, np.ndarray], train_subjects: Sequence[int]) -> dict[str, np.ndarray]:
    """Training-sample masks: cross-subject for the authors' releases, the given halves for the challenge's."""
    if "part" in arrays:
        return {"challenge": np.asarray(arrays["part"]) == 0}
    return {"xsub": np.isin(arrays["subject"], list(train_subjects))}


# -- writing the formats (the dataset's example, tests) ------------------------------

#: Width, height and length of the videos :func:`write_example_video` writes: the keypoint frame scaled by 1/30.
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


def write_clip_labels(path: str | Path, clips: Sequence[tuple[int, int, int]]) -> Path:
    """Write a challenge ``<video>_label.csv``: one ``class code,start frame,end frame`` line per clip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{code},{start},{end}\n" for code, start, end in clips))
    return path


def openpose_json(people: Sequence[np.ndarray]) -> str:
    """One OpenPose frame file, as OpenPose 1.3 writes it.

    Each person is a (25, 3) BODY_25 pose (face and hands written as zeros)
    or all (137, 3) points.
    """
    persons = []
    for points in people:
        points = np.asarray(points, dtype=np.float64)
        if len(points) == BODY25_JOINTS:
            points = np.concatenate([points, np.zeros((OPENPOSE_POINTS - BODY25_JOINTS, 3))])
        parts = {"pose_keypoints_2d": points[:BODY25_JOINTS], "face_keypoints_2d": points[BODY25_JOINTS:LEFT_HAND_START],
                 "hand_left_keypoints_2d": points[LEFT_HAND_START:RIGHT_HAND_START],
                 "hand_right_keypoints_2d": points[RIGHT_HAND_START:]}
        person = {"person_id": [-1]}
        person.update({key: [_json_number(v) for v in value.reshape(-1)] for key, value in parts.items()})
        person.update(pose_keypoints_3d=[], face_keypoints_3d=[], hand_left_keypoints_3d=[], hand_right_keypoints_3d=[])
        persons.append(person)
    return json.dumps({"version": 1.3, "people": persons}, separators=(",", ":"))


def _json_number(value: float) -> float:
    return round(float(value), 6)


def write_openpose_xlsx(path: str | Path, points: np.ndarray, *, frame_column: bool = True) -> Path:
    """Write a per-video Excel table ``<video>_2.xlsx``: one row per frame of ``points`` (F, 137, 3).

    With ``frame_column`` it is laid out as pandas writes a frame (a header row
    of column numbers with a blank corner, then the frame number before each
    row's 411 values); without, just the 411 values per row.
    """
    import openpyxl

    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("Sheet1")
    if frame_column:
        sheet.append([None, *range(points.shape[1])])
    for frame, row in enumerate(points):
        sheet.append(([frame] if frame_column else []) + row.tolist())
    workbook.save(path)
    return path


def write_light_hand_csv(path: str | Path, points: np.ndarray) -> Path:
    """Write a challenge ``<video>_light_hand.csv`` from ``points`` (F, 137, 3), as pandas writes a frame:
    a header row of column numbers with a blank corner, then the frame number and 105 values per row."""
    points = np.asarray(points, dtype=np.float64)[:, list(LIGHT_HAND_FROM_OPENPOSE)].reshape(len(points), -1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["," + ",".join(str(c) for c in range(points.shape[1]))]
    lines += [f"{frame}," + ",".join(repr(float(v)) for v in row) for frame, row in enumerate(points)]
    path.write_text("\n".join(lines) + "\n")
    return path


def challenge_rows(points: np.ndarray, clips: Sequence[tuple[int, int]]) -> np.ndarray:
    """Challenge arrays (N, 3, 90, 22, 1) float32 for clips ``(start, end)`` of a video's ``points`` (F, 137, 3):
    each clip from its first frame (its last 90 frames if longer), zeros after its end."""
    data = np.zeros((len(clips), 3, CHALLENGE_FRAMES, MIGA_NUM_JOINTS, 1), dtype=np.float32)
    joints = np.asarray(points, dtype=np.float64)[:, list(MIGA_FROM_OPENPOSE)]
    for row, (start, end) in enumerate(clips):
        start = max(start, end - CHALLENGE_FRAMES + 1)
        data[row, :, :end - start + 1, :, 0] = joints[start:end + 1].transpose(2, 0, 1)
    return data


def write_challenge_part(folder: str | Path, part: str, data: np.ndarray, names: Sequence[str],
                         labels: Sequence[int]) -> Path:
    """Write ``<part>_data.npy`` and ``<part>_label.pkl`` (``(names, labels)``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{part}_data.npy", data)
    with open(folder / f"{part}_label.pkl", "wb") as stream:
        pickle.dump((list(names), list(labels)), stream)
    return folder / f"{part}_data.npy"


def example_pose(frame: int, seed: int) -> np.ndarray:
    """(25, 3) BODY_25 pose of a made-up speaker in :data:`KEYPOINT_FRAME` pixels; joints 19-24 (feet) undetected.

    In the example video (:data:`EXAMPLE_VIDEO_SIZE`, 1/30 of the keypoint frame)
    the speaker spans about 16 x 24 pixels around its middle.
    """
    rng = np.random.default_rng(seed)
    pose = np.zeros((BODY25_JOINTS, 3))
    pose[:, 0] = 24 + rng.uniform(0, 16, BODY25_JOINTS) + 2 * np.sin(frame / 5)
    pose[:, 1] = 6 + rng.uniform(0, 24, BODY25_JOINTS)
    pose[:, :2] *= KEYPOINT_FRAME[0] / EXAMPLE_VIDEO_SIZE[0]
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
        detected = pose[:19, :2] * (width / KEYPOINT_FRAME[0])
        pixels[f, int(detected[:, 1].min()):int(detected[:, 1].max()) + 1,
               int(detected[:, 0].min()):int(detected[:, 0].max()) + 1] = 220
        if json_frames:
            folder.mkdir(parents=True, exist_ok=True)
            bystander = pose.copy()
            bystander[:, 2] *= 0.2
            openpose_path(folder, video, f).write_text(openpose_json([bystander, pose]))
    if video_file:
        write_video(root / "Data" / "video" / f"{video}.mp4", pixels, codec="mpeg4", fps=25)
