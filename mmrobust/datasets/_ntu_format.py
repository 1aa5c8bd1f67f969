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
line and what was expected. :func:`person_slots` chooses a clip's persons 0
and 1 by the rule PYSKL's pickle was made with. :func:`write_skeleton` writes
the format, and :func:`write_example_sample` a whole sample (``.skeleton`` and
``_rgb.avi``) of made-up people, for the dataset's example and the tests.

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
# Person order as PYSKL prepares ntu60_3danno.pkl (github.com/kennymckormick/pyskl,
# tools/data/ntu_preproc.py: parse_skeleton_file, spread_denoising, gen_keypoint_array),
# so that a cache prepared from the .skeleton files and one prepared from that pickle
# put the same body in the same person slot. The arithmetic here is float64; PYSKL's
# float32 could order differently only motions that agree to about six digits.

#: A track listed in this many frames or fewer is dropped when there are others.
SHORT_TRACK_FRAMES = 11
#: A frame of a track is noise when its joints are wider (x) than this times their height (y).
SPREAD_RATIO = 0.8
#: A track with at least this fraction of noisy frames is dropped.
NOISY_TRACK_FRACTION = 0.69754
#: A person whose |x| + |y| + |z| sums below this is absent (for the first-frame swap).
ABSENT_BELOW = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class BodyTrack:
    """All frames of one tracked body (one ``bodyID``)."""

    body_id: int
    frames: np.ndarray  # (n,) frame indices
    joints: np.ndarray  # (n, 25, 12)
    motion: float       # see body_tracks
    span: tuple[int, int]  # first and one-past-last listed frame, counting only frames that list a body


def _pooled_motion(xyz: np.ndarray) -> float:
    """25 times the sum over x, y, z of the variance over all (frame, joint) pairs of ``xyz`` (F, 25, 3)."""
    return NUM_JOINTS * float(np.var(xyz.reshape(-1, 3), axis=0).sum())


def body_tracks(sequence: SkeletonSequence) -> list[BodyTrack]:
    """Every body of ``sequence``, in the order they first appear, with PYSKL's motion.

    PYSKL ranks bodies by ``var(x) + var(y) + var(z)``, each variance pooled
    over all joints of all the frames that list the body (records whose joints
    are all zero included; frames without the body are not filled in).
    ``motion`` is that value times the 25 joints, which ranks the same: the sum
    over joints of the per-joint variances over frames, plus the squared
    distances of the joints' mean positions from the body's centroid. Pooling
    thus counts the body's spatial extent, not only its movement.
    """
    frames: dict[int, list[int]] = {}
    joints: dict[int, list[np.ndarray]] = {}
    first_listed: dict[int, int] = {}
    listed = 0  # frames seen so far that list at least one body
    for index, bodies in enumerate(sequence.frames):
        for body in bodies:
            first_listed.setdefault(body.body_id, listed)
            frames.setdefault(body.body_id, []).append(index)
            joints.setdefault(body.body_id, []).append(body.joints)
        listed += bool(bodies)
    tracks = []
    for body_id, indices in frames.items():
        stacked = np.stack(joints[body_id])
        start = first_listed[body_id]
        tracks.append(BodyTrack(body_id, np.asarray(indices), stacked,
                                _pooled_motion(stacked[:, :, 0:3]), (start, start + len(indices))))
    return tracks


def _by_motion(tracks: list[BodyTrack]) -> list[BodyTrack]:
    return sorted(tracks, key=lambda track: -track.motion)  # stable: ties keep their order


def _without_spread_noise(tracks: list[BodyTrack]) -> list[BodyTrack]:
    """PYSKL's spread denoising: drop mostly-noisy tracks, rank the rest by the motion of their clean frames."""
    kept = []
    for track in tracks:
        xyz = track.joints[:, :, 0:3]
        width = xyz[:, :, 0].max(axis=1) - xyz[:, :, 0].min(axis=1)
        height = xyz[:, :, 1].max(axis=1) - xyz[:, :, 1].min(axis=1)
        clean = width <= SPREAD_RATIO * height
        if clean.all():
            kept.append(track)
        elif 1 - np.count_nonzero(clean) / len(clean) < NOISY_TRACK_FRACTION:
            kept.append(dataclasses.replace(track, motion=min(track.motion, _pooled_motion(xyz[clean]))))
    return _by_motion(kept)


def rank_bodies(sequence: SkeletonSequence) -> list[BodyTrack]:
    """The bodies that may become persons, most motion first (see :func:`person_slots`)."""
    ranked = _by_motion(body_tracks(sequence))
    if len(ranked) > 1:
        # PYSKL's script stops with an error where a step would leave no body; here the step is skipped.
        ranked = [track for track in ranked if len(track.frames) > SHORT_TRACK_FRAMES] or ranked
    if len(ranked) > 1:
        ranked = _without_spread_noise(ranked) or ranked
    return ranked


def _placed(slots: Sequence[Sequence[BodyTrack]], num_frames: int) -> np.ndarray:
    """(F, len(slots), 25, 12) joints of each person slot, NaN where it holds nobody."""
    joints = np.full((num_frames, len(slots), NUM_JOINTS, len(JOINT_FIELDS)), np.nan)
    for person, tracks in enumerate(slots):
        for track in tracks:
            free = np.isnan(joints[track.frames, person, 0, 0])  # only a body that reappears can collide
            joints[track.frames[free], person] = track.joints[free]
    return joints


def person_slots(sequence: SkeletonSequence) -> list[list[BodyTrack]]:
    """The bodies of person 0 and of person 1 (at most two slots; none for a clip without bodies).

    PYSKL's rule (``tools/data/ntu_preproc.py`` of github.com/kennymckormick/pyskl):

    1. Each ``bodyID`` is a track; its motion is ``var(x) + var(y) + var(z)``
       pooled over the joints of every frame that lists it (:func:`body_tracks`).
       Tracks are ranked by motion, most first; ties keep the order in which the
       bodies first appear.
    2. With more than one track: tracks listed in 11 frames or fewer are dropped.
    3. Still more than one: spread denoising. A frame is noise when the joints'
       x-extent exceeds 0.8 times their y-extent; a track with 69.754 % or more
       noisy frames is dropped, and one with some has its motion lowered to that
       of its clean frames when smaller. The rest are ranked again (stably).
    4. One track left: it is person 0, alone. Otherwise the first track is
       person 0 and each next one, in rank order, joins person 0 if its span of
       frames does not overlap person 0's, else person 1 if it starts no earlier
       than where person 1's span ends (that span starts at frame 0), else it is
       left out. Spans count only frames that list some body.
    5. If, in the first frame where either person is, person 0's joint 2 (middle
       of the spine) is absent and person 1's is not, the two swap.

    Where PYSKL's script stops with an error (steps 2 or 3 would leave no
    track), that step is skipped.
    """
    ranked = rank_bodies(sequence)
    if len(ranked) < 2:
        return [ranked] if ranked else []
    slots: list[list[BodyTrack]] = [[ranked[0]], []]
    spans = [list(ranked[0].span), [0, 0]]
    for track in ranked[1:]:
        start, end = track.span
        for tracks, span in zip(slots, spans):
            if max(span[0], start) >= min(span[1], end):  # no overlap
                tracks.append(track)
                span[:] = min(span[0], start), max(span[1], end)
                break
    slots = [tracks for tracks in slots if tracks]
    if len(slots) == 2:
        xyz = np.nan_to_num(_placed(slots, sequence.num_frames)[..., 0:3])
        somebody = np.flatnonzero(np.abs(xyz).sum(axis=(1, 2, 3)) >= ABSENT_BELOW)
        if len(somebody):
            spine = np.abs(xyz[somebody[0], :, 1]).sum(axis=-1)
            if spine[0] < ABSENT_BELOW < spine[1]:
                slots.reverse()
    return slots


def main_bodies(sequence: SkeletonSequence) -> list[BodyTrack]:
    """The leading (most moving) body of each person slot of :func:`person_slots`, person 0 first."""
    return [tracks[0] for tracks in person_slots(sequence)]


def person_joints(sequence: SkeletonSequence) -> np.ndarray:
    """(F, 2, 25, 12) joints of persons 0 and 1 (:func:`person_slots`) in each frame of ``sequence``.

    NaN where a person is absent, and for a body whose 25 joints are all exactly zero.
    """
    slots = person_slots(sequence)
    joints = _placed(slots + [[]] * (MAX_BODIES - len(slots)), sequence.num_frames)
    joints[np.all(joints[..., 0:3] == 0, axis=(2, 3))] = np.nan
    return joints


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

    Bodies become persons 0 and 1 as PYSKL orders them (:func:`person_slots`;
    NaN where absent, and for a body whose 25 joints are all exactly zero), so
    the persons match those of PYSKL's pickle of the same clip. Both
    modalities are sampled uniformly (centre of each segment) over the frames
    from the first to the last one with a body; RGB frame ``f`` is skeleton
    frame ``f``. The crop box covers the colour-image joints of the kept
    bodies over the sampled RGB frames (see
    :func:`mmrobust.datasets._video.person_box`).
    """
    path = task["skeleton"]
    sequence = read_skeleton(path)
    if not any(sequence.frames):
        raise SampleError("no-bodies", path, f"none of the {sequence.num_frames} frames has a body")
    joints = person_joints(sequence)
    xyz, color = joints[..., 0:3], joints[..., 5:7]
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

    The persons are kept in the order PYSKL stored them, the rule that
    :func:`person_slots` applies to ``.skeleton`` files (PYSKL writes at most
    two). A person-frame that is all zeros is absent (NaN until the cache maps
    it to 0).
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


def example_motion(seed: int, frames: int, shift: float = 0.0, amplitude: float = 0.1,
                   height: float = 1.5) -> np.ndarray:
    """(F, 25, 3) camera-space joints of a made-up person ``height`` metres tall waving, about 3 m from the camera."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.uniform(-0.25, 0.25, NUM_JOINTS) + shift, np.linspace(-0.8, height - 0.8, NUM_JOINTS),
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

    ``people`` made-up persons wave over ``frames`` frames, none in
    ``empty_frames``; each is shorter and moves less than the one before, so
    that they rank in order (:func:`person_slots`). The video paints each
    person's joint box white on grey, so a correct crop is bright in the middle.
    """
    root = Path(root)
    tracks = [example_motion(seed + p, frames, shift=0.6 * p, amplitude=0.1 / (p + 1), height=1.5 - 0.2 * p)
              for p in range(people)]
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
