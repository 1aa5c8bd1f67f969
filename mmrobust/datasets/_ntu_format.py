"""NTU RGB+D files: the ``.skeleton`` text format, sample names, PYSKL pickles.

Formats as released by the dataset authors (Shahroudy et al., "NTU RGB+D: A
Large Scale Dataset for 3D Human Activity Analysis", CVPR 2016;
github.com/shahroudy/NTURGB-D, ``Matlab/read_skeleton_file.m``) and by PYSKL
(github.com/kennymckormick/pyskl, ``tools/data/README.md``).

A ``.skeleton`` file is whitespace-separated text, one record per line:

- the number of frames;
- per frame, the number of bodies (0 happens), then per body one line of ten
  fields (:data:`BODY_FIELDS`), a line with the joint count (25) and one line
  of twelve fields per joint (:data:`JOINT_FIELDS`): camera-space x, y, z in
  metres, the joint in the depth image and in the 1920x1080 colour image
  (pixels), an orientation quaternion and a tracking state.

Every field is parsed and checked; a file that deviates, or whose 3-D joint
positions are not finite, raises :class:`SampleError` naming the file, the
line and what was expected. :func:`write_skeleton` writes the format, and
:func:`write_example_sample` a whole sample (``.skeleton`` and ``_rgb.avi``) of
a made-up person, for the dataset's example and the tests.

This module imports neither torch nor the dataset registry: its ``build_*``
functions run inside ``prepare`` worker processes.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._plan import SampleError
from ._unpickle import load_data_pickle
from ._video import person_box, read_clip, uniform_indices, write_video

NUM_JOINTS = 25
#: Persons kept per clip; a missing second person is padding.
MAX_BODIES = 2
NUM_ACTIONS = 60
#: Setups S001-S017 make NTU RGB+D 60; later setups belong to NTU RGB+D 120.
NUM_SETUPS = 17
#: Size of the colour frames the colorX/colorY joint coordinates refer to.
COLOR_WIDTH, COLOR_HEIGHT = 1920, 1080

BODY_FIELDS = ("bodyID", "clippedEdges", "handLeftConfidence", "handLeftState", "handRightConfidence",
               "handRightState", "isRestricted", "leanX", "leanY", "trackingState")
JOINT_FIELDS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY",
                "orientationW", "orientationX", "orientationY", "orientationZ", "trackingState")
#: Joint columns of the 3-D position; NaN or infinity there rejects the file. (Non-finite
#: depth- or colour-image positions only drop that joint from the person crop.)
_COORDINATE_COLUMNS = slice(0, 3)

MISSING_SKELETONS_FILE = "ntu60_missing_skeletons.txt"
#: Folders of the release, as its archives extract: ``<name>.skeleton`` and ``<name>_rgb.avi`` files.
SKELETON_DIR = "nturgb+d_skeletons"
RGB_DIR = "nturgb+d_rgb"
_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")


# -- sample names ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SampleName:
    """The parts of a sample name ``SsssCcccPpppRrrrAaaa`` (1-based numbers)."""

    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @classmethod
    def parse(cls, name: str) -> SampleName:
        """Parse ``"S001C002P003R002A013"``.

        Raises:
            ValueError: the name does not have the NTU form.
        """
        match = _NAME.match(name)
        if not match:
            raise ValueError(f"{name!r} is not an NTU sample name "
                             "(expected SsssCcccPpppRrrrAaaa, e.g. S001C002P003R002A013)")
        return cls(*(int(part) for part in match.groups()))

    def __str__(self) -> str:
        return (f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}"
                f"R{self.replication:03d}A{self.action:03d}")


def missing_skeleton_names() -> frozenset[str]:
    """The official NTU RGB+D 60 samples with missing or incomplete skeletons (302 names).

    Read from the package file :data:`MISSING_SKELETONS_FILE`; ``#`` lines are comments.
    """
    resource = importlib.resources.files("mmrobust.datasets").joinpath(MISSING_SKELETONS_FILE)
    names = [line.strip() for line in resource.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    for name in names:
        SampleName.parse(name)
    return frozenset(names)


# -- the .skeleton format ----------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class BodyFrame:
    """One body in one frame of a ``.skeleton`` file: the ten body fields and the joints.

    ``joints`` is float64 (25, 12), columns as in :data:`JOINT_FIELDS`.
    """

    body_id: int
    clipped_edges: int
    hand_left_confidence: int
    hand_left_state: int
    hand_right_confidence: int
    hand_right_state: int
    is_restricted: int
    lean_x: float
    lean_y: float
    tracking_state: int
    joints: np.ndarray

    @property
    def xyz(self) -> np.ndarray:
        """(25, 3) camera-space positions in metres."""
        return self.joints[:, 0:3]

    @property
    def depth_xy(self) -> np.ndarray:
        """(25, 2) positions in the 512x424 depth image, pixels."""
        return self.joints[:, 3:5]

    @property
    def color_xy(self) -> np.ndarray:
        """(25, 2) positions in the 1920x1080 colour image, pixels."""
        return self.joints[:, 5:7]

    @property
    def orientation(self) -> np.ndarray:
        """(25, 4) joint orientation quaternions (w, x, y, z)."""
        return self.joints[:, 7:11]

    @property
    def joint_tracking_state(self) -> np.ndarray:
        """(25,) per-joint tracking state: 0 not tracked, 1 inferred, 2 tracked."""
        return self.joints[:, 11].astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class SkeletonSequence:
    """A parsed ``.skeleton`` file: per frame, the bodies seen (possibly none)."""

    path: str
    frames: tuple[tuple[BodyFrame, ...], ...]

    @property
    def num_frames(self) -> int:
        return len(self.frames)


class _Lines:
    """Line cursor that reports where a file stops matching the format."""

    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.position = 0

    def error(self, reason: str, line: int | None = None, kind: str = "malformed") -> SampleError:
        line = self.position if line is None else line
        return SampleError(kind, f"{self.path}:{line}", reason)

    def fields(self, count: int, what: str) -> list[str]:
        if self.position >= len(self.lines):
            raise self.error(f"file ends after line {len(self.lines)} where {what} was expected (truncated?)",
                             len(self.lines))
        fields = self.lines[self.position].split()
        self.position += 1
        if len(fields) != count:
            raise self.error(f"{what}: expected {count} field{'s' if count > 1 else ''}, found {len(fields)}")
        return fields

    def integer(self, what: str) -> int:
        (field,) = self.fields(1, what)
        return self.to_int(field, what)

    def to_int(self, field: str, what: str) -> int:
        try:
            return int(field)
        except ValueError:
            raise self.error(f"{what}: {field!r} is not an integer") from None

    def to_float(self, field: str, what: str) -> float:
        try:
            return float(field)
        except ValueError:
            raise self.error(f"{what}: {field!r} is not a number") from None


def parse_skeleton(text: str, path: str | Path = "<text>") -> SkeletonSequence:
    """Parse the text of an NTU ``.skeleton`` file.

    Raises:
        SampleError: kind "malformed" (wrong field or joint count, non-numeric
            field, truncation, trailing data) or "nan" (non-finite x, y or z),
            with ``path:line``.
    """
    lines = _Lines(text, str(path))
    frame_count = lines.integer("the frame count")
    if frame_count < 0:
        raise lines.error(f"negative frame count {frame_count}")
    frames = []
    for frame in range(1, frame_count + 1):
        body_count = lines.integer(f"the body count of frame {frame}")
        if body_count < 0:
            raise lines.error(f"negative body count {body_count} in frame {frame}")
        bodies = []
        for body in range(1, body_count + 1):
            where = f"frame {frame}, body {body}"
            fields = lines.fields(len(BODY_FIELDS), f"{where}: the body record ({' '.join(BODY_FIELDS)})")
            ints = [lines.to_int(fields[i], f"{where}: {BODY_FIELDS[i]}") for i in (0, 1, 2, 3, 4, 5, 6, 9)]
            lean = [lines.to_float(fields[i], f"{where}: {BODY_FIELDS[i]}") for i in (7, 8)]
            joint_count = lines.integer(f"{where}: the joint count")
            if joint_count != NUM_JOINTS:
                raise lines.error(f"{where}: {joint_count} joints, expected {NUM_JOINTS}")
            joints = _parse_joints(lines, where)
            bodies.append(BodyFrame(ints[0], *ints[1:7], lean[0], lean[1], ints[7], joints))
        frames.append(tuple(bodies))
    rest = [number for number in range(lines.position, len(lines.lines)) if lines.lines[number].strip()]
    if rest:
        raise lines.error(f"unexpected data after the {frame_count} frames the header announces", rest[0] + 1)
    return SkeletonSequence(str(path), tuple(frames))


def _parse_joints(lines: _Lines, where: str) -> np.ndarray:
    first = lines.position
    block = lines.lines[first:first + NUM_JOINTS]
    for offset, line in enumerate(block):
        count = len(line.split())
        if count != len(JOINT_FIELDS):
            lines.position = first + offset + 1
            raise lines.error(f"{where}, joint {offset + 1}: expected {len(JOINT_FIELDS)} fields, found {count}")
    if len(block) < NUM_JOINTS:
        raise lines.error(f"file ends inside {where} after {len(block)} of {NUM_JOINTS} joints (truncated?)",
                          len(lines.lines))
    try:
        joints = np.array(" ".join(block).split(), dtype=np.float64).reshape(NUM_JOINTS, len(JOINT_FIELDS))
    except ValueError:
        for offset, line in enumerate(block):
            for column, field in enumerate(line.split()):
                lines.position = first + offset + 1
                lines.to_float(field, f"{where}, joint {offset + 1}: {JOINT_FIELDS[column]}")
        raise
    lines.position = first + NUM_JOINTS
    bad = ~np.isfinite(joints[:, _COORDINATE_COLUMNS])
    if bad.any():
        joint, column = np.argwhere(bad)[0]
        raise lines.error(f"{where}, joint {joint + 1}: {JOINT_FIELDS[column]} is not finite",
                          first + joint + 1, kind="nan")
    return joints


def read_skeleton(path: str | Path) -> SkeletonSequence:
    """Read and parse one ``.skeleton`` file (see :func:`parse_skeleton`)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError as error:
        raise SampleError("malformed", path, f"not a text file (byte {error.start} is not ASCII)") from None
    return parse_skeleton(text, path)


# -- choosing the people -----------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class BodyTrack:
    """All frames of one tracked body (one ``bodyID``)."""

    body_id: int
    frames: np.ndarray  # (n,) frame indices
    joints: np.ndarray  # (n, 25, 12)
    motion: float       # sum over joints and axes of the variance of x, y, z over its frames


def main_bodies(sequence: SkeletonSequence, max_bodies: int = MAX_BODIES) -> list[BodyTrack]:
    """The ``max_bodies`` tracks with the most motion, most first (ties: first seen first).

    Motion is the sum of the per-joint variances of x, y and z over the frames
    the body appears in, the heuristic of the dataset authors.
    """
    frames: dict[int, list[int]] = {}
    joints: dict[int, list[np.ndarray]] = {}
    for index, bodies in enumerate(sequence.frames):
        for body in bodies:
            frames.setdefault(body.body_id, []).append(index)
            joints.setdefault(body.body_id, []).append(body.joints)
    tracks = []
    for body_id in frames:
        stacked = np.stack(joints[body_id])
        motion = float(stacked[:, :, 0:3].var(axis=0).sum())
        tracks.append(BodyTrack(body_id, np.asarray(frames[body_id]), stacked, motion))
    tracks.sort(key=lambda track: -track.motion)  # stable: ties keep their first-seen order
    return tracks[:max_bodies]


# -- sample building (runs in worker processes) -------------------------------

def _span(present: np.ndarray, path: str) -> tuple[int, int]:
    """First and one-past-last frame where somebody is."""
    frames = np.flatnonzero(present)
    if len(frames) == 0:
        raise SampleError("no-bodies", path, "no frame has a body")
    return int(frames[0]), int(frames[-1]) + 1


def _skeleton_sample(xyz: np.ndarray, begin: int, end: int, num_frames: int) -> np.ndarray:
    """(F, M, V, C) positions -> (C, T, V, M) float32 sampled uniformly over frames begin..end-1."""
    indices = begin + uniform_indices(end - begin, num_frames)
    return np.ascontiguousarray(xyz[indices].transpose(3, 0, 2, 1), dtype=np.float32)


def _sample_arrays(task: Mapping[str, Any], config: Mapping[str, Any], skeleton: np.ndarray,
                   rgb: np.ndarray | None) -> dict[str, Any]:
    values: dict[str, Any] = {"skeleton": skeleton, "label": np.int64(task["label"])}
    if rgb is not None:
        values["rgb"] = rgb
    for field in ("setup", "camera", "performer", "replication"):
        values[field] = np.int16(task[field])
    values["name"] = np.str_(task["name"])
    return values


def build_raw_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one ``.skeleton`` file (and its ``_rgb.avi``) into cache rows.

    The two most moving bodies become persons 0 and 1 (NaN where absent, and
    for a body whose 25 joints are all exactly zero). Both modalities are
    sampled uniformly (centre of each segment) over the frames from the first
    to the last one with a body; RGB frame ``f`` is skeleton frame ``f``. The
    crop box covers the colour-image joints of the kept bodies over the
    sampled RGB frames (see :func:`mmrobust.datasets._video.person_box`).
    """
    path = task["skeleton"]
    sequence = read_skeleton(path)
    tracks = main_bodies(sequence)
    if not tracks:
        raise SampleError("no-bodies", path, f"none of the {sequence.num_frames} frames has a body")
    xyz = np.full((sequence.num_frames, MAX_BODIES, NUM_JOINTS, 3), np.nan)
    color = np.full((sequence.num_frames, MAX_BODIES, NUM_JOINTS, 2), np.nan)
    for person, track in enumerate(tracks):
        seen = np.any(track.joints[:, :, 0:3] != 0, axis=(1, 2))
        xyz[track.frames[seen], person] = track.joints[seen][:, :, 0:3]
        color[track.frames[seen], person] = track.joints[seen][:, :, 5:7]
    begin, end = _span(~np.isnan(xyz[:, :, 0, 0]).all(axis=1), path)
    skeleton = _skeleton_sample(xyz, begin, end, config["skeleton_frames"])

    rgb = None
    if config.get("rgb", True):
        indices = begin + uniform_indices(end - begin, config["rgb_frames"])
        points = color[indices].reshape(-1, 2)

        def box_for(width: int, height: int) -> tuple[int, int, int]:
            scaled = points * np.array([width / COLOR_WIDTH, height / COLOR_HEIGHT])
            return person_box(scaled, width, height)

        clip = read_clip(task["video"], indices, box_for, config["rgb_size"])
        rgb = np.ascontiguousarray(clip.transpose(3, 0, 1, 2))
    return _sample_arrays(task, config, skeleton, rgb)


# -- PYSKL pickles -----------------------------------------------------------

PYSKL_SPLITS = ("xsub_train", "xsub_val", "xview_train", "xview_val")


def read_pyskl(path: str | Path) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Read PYSKL's ``ntu60_3danno.pkl``: ``({split: [names]}, [annotation])``.

    Only the layout PYSKL documents is accepted: a dict with ``split`` and
    ``annotations``, each annotation holding ``frame_dir`` (the sample name),
    ``label`` (0-based) and ``keypoint`` float (M, T, 25, 3) in metres.

    Raises:
        ValueError: any other layout (for example MMAction2's older flat list
            with keypoint (3, 300, 25, 2)); the message names the file.
    """
    data = load_data_pickle(path)
    if not isinstance(data, dict) or "split" not in data or "annotations" not in data:
        found = type(data).__name__ + (f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else "")
        raise ValueError(f"{path}: expected PYSKL's dict with 'split' and 'annotations', found a {found} "
                         "(MMAction2's older flat list of (3, 300, 25, 2) arrays is not supported)")
    splits, annotations = data["split"], data["annotations"]
    if not isinstance(splits, dict) or not isinstance(annotations, list | tuple):
        raise ValueError(f"{path}: 'split' must be a dict of name lists and 'annotations' a list, "
                         f"found {type(splits).__name__} and {type(annotations).__name__}")
    if not annotations:
        raise ValueError(f"{path}: 'annotations' is empty")
    first = annotations[0]
    keypoint = first.get("keypoint") if isinstance(first, dict) else None
    if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4 or keypoint.shape[2:] != (NUM_JOINTS, 3) \
            or not np.issubdtype(keypoint.dtype, np.floating):
        shape = getattr(keypoint, "shape", None)
        raise ValueError(f"{path}: annotation 'keypoint' must be a float array (M, T, {NUM_JOINTS}, 3) "
                         f"of 3-D joints, found {type(keypoint).__name__} {shape}")
    return {str(k): [str(n) for n in v] for k, v in splits.items()}, list(annotations)


def check_pyskl_annotation(annotation: Any, index: int, path: str) -> tuple[str, np.ndarray, int]:
    """``(name, keypoint, label)`` of one annotation, or SampleError("malformed")."""
    where = f"{path}:annotations[{index}]"
    if not isinstance(annotation, dict):
        raise SampleError("malformed", where, f"annotation is a {type(annotation).__name__}, expected a dict")
    missing = [key for key in ("frame_dir", "label", "keypoint") if key not in annotation]
    if missing:
        raise SampleError("malformed", where, f"annotation lacks {', '.join(missing)}")
    keypoint = annotation["keypoint"]
    if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4 or keypoint.shape[2:] != (NUM_JOINTS, 3) \
            or keypoint.shape[0] < 1 or keypoint.shape[1] < 1:
        raise SampleError("malformed", where, f"keypoint of shape {getattr(keypoint, 'shape', None)}, "
                                              f"expected (M, T, {NUM_JOINTS}, 3)")
    try:
        label = int(annotation["label"])
    except (TypeError, ValueError):
        raise SampleError("label", where, f"label {annotation['label']!r} is not an integer") from None
    return str(annotation["frame_dir"]), keypoint, label


def build_pyskl_sample(task: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one PYSKL annotation into cache rows (skeleton only).

    PYSKL already ordered the persons by motion; the first two are kept. A
    person-frame that is all zeros is absent (NaN until the cache maps it to 0).
    """
    where = task["path"]
    keypoint = np.asarray(task["keypoint"], dtype=np.float64)
    if not np.all(np.isfinite(keypoint)):
        raise SampleError("nan", where, "keypoint holds NaN or infinite coordinates")
    if not 0 <= task["label"] < NUM_ACTIONS:
        raise SampleError("label", where, f"label {task['label']} outside 0..{NUM_ACTIONS - 1}")
    if task["label"] != task["action"] - 1:
        raise SampleError("label", where, f"label {task['label']} contradicts the name's action "
                                          f"A{task['action']:03d} (expected {task['action'] - 1})")
    persons = keypoint[:MAX_BODIES].transpose(1, 0, 2, 3)  # (T, M, V, C)
    xyz = np.full((persons.shape[0], MAX_BODIES, NUM_JOINTS, 3), np.nan)
    xyz[:, :persons.shape[1]] = persons
    xyz[np.all(xyz == 0, axis=(2, 3))] = np.nan
    begin, end = _span(~np.isnan(xyz[:, :, 0, 0]).all(axis=1), where)
    skeleton = _skeleton_sample(xyz, begin, end, config["skeleton_frames"])
    return _sample_arrays(task, config, skeleton, None)


def sample_fields(name: SampleName) -> dict[str, int]:
    """The per-sample metadata stored in the cache."""
    return {"setup": name.setup, "camera": name.camera, "performer": name.performer,
            "replication": name.replication, "action": name.action}


def split_masks(arrays: Mapping[str, np.ndarray], train_subjects: Sequence[int],
                train_cameras: Sequence[int]) -> dict[str, np.ndarray]:
    """Training-sample masks of the cross-subject and cross-view protocols."""
    return {"xsub": np.isin(arrays["performer"], list(train_subjects)),
            "xview": np.isin(arrays["camera"], list(train_cameras))}



# -- writing the release format (the dataset's example, tests) ----------------

#: Width and height of the videos :func:`write_example_sample` writes: the colour frame scaled by 1/20.
EXAMPLE_VIDEO_SIZE = (96, 54)


def body_record(body_id: int, xyz: np.ndarray, color: np.ndarray, *,
                fields=(0, 1, 1, 1, 1, 0, 0.02764709, 0.05745083, 2), depth: np.ndarray | None = None,
                orientation=None, tracking=None) -> dict[str, Any]:
    """One body in one frame: its ten body fields (after ``bodyID``) and a (25, 12) joint table.

    ``xyz`` (25, 3) and ``color`` (25, 2) fill their columns; depth positions
    default to a rough projection, orientations to one quaternion, tracking
    states to 2. Values are rounded to the 7 significant digits the files carry,
    so the text round-trips exactly.
    """
    joints = np.zeros((NUM_JOINTS, len(JOINT_FIELDS)))
    joints[:, 0:3] = xyz
    joints[:, 3:5] = depth if depth is not None else np.stack([256 + 100 * xyz[:, 0], 212 - 100 * xyz[:, 1]], 1)
    joints[:, 5:7] = color
    joints[:, 7:11] = orientation if orientation is not None else [0.5, -0.5, 0.5, -0.5]
    joints[:, 11] = tracking if tracking is not None else 2
    seven_digits = np.vectorize(lambda v: float(f"{v:.7g}"))(joints)
    return {"body_id": body_id, "fields": fields, "joints": seven_digits}


def skeleton_text(frames: Sequence[Sequence[Mapping[str, Any]]], newline: str = "\n") -> str:
    """The ``.skeleton`` text of ``frames`` (per frame, a list of bodies from :func:`body_record`)."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body in bodies:
            clipped, hlc, hls, hrc, hrs, restricted, lean_x, lean_y, tracking = body["fields"]
            lines.append(f"{body['body_id']} {clipped} {hlc} {hls} {hrc} {hrs} {restricted} "
                         f"{lean_x:.7g} {lean_y:.7g} {tracking}")
            lines.append(str(NUM_JOINTS))
            for joint in body["joints"]:
                lines.append(" ".join(f"{v:.7g}" for v in joint[:11]) + f" {int(joint[11])}")
    return newline.join(lines) + newline


def write_skeleton(path: str | Path, frames: Sequence[Sequence[Mapping[str, Any]]], newline: str = "\n") -> Path:
    """Write a ``.skeleton`` file (see :func:`skeleton_text`); the inverse of :func:`read_skeleton`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        stream.write(skeleton_text(frames, newline))
    return path


def example_motion(seed: int, frames: int, shift: float = 0.0, amplitude: float = 0.1) -> np.ndarray:
    """(F, 25, 3) camera-space joints of a made-up person waving, about 3 m from the camera."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.uniform(-0.25, 0.25, NUM_JOINTS) + shift, np.linspace(-0.8, 0.7, NUM_JOINTS),
                     3.0 + rng.uniform(0, .2, NUM_JOINTS)], 1)
    t = np.arange(frames)[:, None, None]
    wave = amplitude * np.sin(t / 3.0 + np.arange(NUM_JOINTS)[None, :, None]) * np.array([1.0, 0.5, 0.2])
    return base[None] + wave


def _project_to_color(xyz: np.ndarray) -> np.ndarray:
    """A pinhole projection into the 1920x1080 colour image (what colorX/colorY hold)."""
    return np.stack([960 + 600 * xyz[..., 0] / xyz[..., 2] * 3, 540 - 600 * xyz[..., 1] / xyz[..., 2] * 3], -1)


def _example_video(color_frames: list[list[np.ndarray]], num_frames: int) -> np.ndarray:
    """Frames of :data:`EXAMPLE_VIDEO_SIZE` with each person's joint box painted white on grey."""
    width, height = EXAMPLE_VIDEO_SIZE
    video = np.full((num_frames, height, width, 3), 40, dtype=np.uint8)
    for f in range(num_frames):
        for color in color_frames[f]:
            x = color[:, 0] * width / COLOR_WIDTH
            y = color[:, 1] * height / COLOR_HEIGHT
            video[f, int(y.min()):int(np.ceil(y.max())), int(x.min()):int(np.ceil(x.max()))] = 230
    return video


def write_example_sample(root: str | Path, name: str, *, frames: int = 12, people: int = 1,
                         empty_frames: Sequence[int] = (0,), codec: str = "mpeg4", seed: int = 0) -> None:
    """Write sample ``name`` into a release tree at ``root``: its ``.skeleton`` file and ``_rgb.avi`` video.

    ``people`` made-up persons wave (the first with the widest motion) over
    ``frames`` frames, none in ``empty_frames``; the video paints each person's
    joint box white on grey, so a correct crop is bright in the middle.
    """
    root = Path(root)
    tracks = [example_motion(seed + p, frames, shift=0.6 * p, amplitude=0.1 / (p + 1)) for p in range(people)]
    body_frames, colors = [], []
    for f in range(frames):
        if f in empty_frames:
            body_frames.append([])
            colors.append([])
            continue
        bodies = [body_record(72057594037931101 + 7 * p, tracks[p][f], _project_to_color(tracks[p][f]))
                  for p in range(people)]
        body_frames.append(bodies)
        colors.append([b["joints"][:, 5:7] for b in bodies])
    write_skeleton(root / SKELETON_DIR / f"{name}.skeleton", body_frames)
    write_video(root / RGB_DIR / f"{name}_rgb.avi", _example_video(colors, frames), codec=codec)
