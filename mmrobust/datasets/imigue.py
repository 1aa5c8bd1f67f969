"""iMiGUE: micro-gestures of tennis players in post-match press conferences, RGB + 2-D pose.

Dataset: Liu et al., "iMiGUE: An Identity-free Video Dataset for Micro-Gesture
Understanding and Emotion Analysis", CVPR 2021 (github.com/linuxsino/iMiGUE).
32 classes: micro-gesture codes 1-31 become labels 0-30 and code 99 label 31
(the manifest records the mapping; class names are the codes).

The release is converted once by ``prepare`` into a memory-mapped cache (see
:mod:`mmrobust.datasets._cache_write`)::

    mmrobust prepare --dataset imigue --root /data/imigue

``--root`` holds one of the layouts of :data:`LAYOUTS`, found by looking
through its folders (six levels deep); the manifest names the one used
(``layout``) and any other that was complete (``also_found``). Video ids may be
zero-padded (``0001``) or not (``1``); a video is ``<video>.<ext>`` in any
folder or ``<video>/<video>.<ext>``, in any container PyAV reads
(:data:`VIDEO_EXTENSIONS`). Where several layouts are complete, the first in
this list is used::

    openpose-json      Label/labels_20200831.csv         (the label CSV: any *.csv with its columns,
                                                          in the root or Label/)
                       Data/skeleton/raw/0298/0298_000000000000_keypoints.json ...
                       Data/video/0298.mp4               (or videos/0298/0298.mp4, ...)

    openpose-xlsx      Label/labels_20200831.csv
                       Data/excel/0001/0001_2.xlsx       (137 OpenPose points per row)
                       Data/video/0001.mp4               (or 0001/0001.mp4 beside the table, ...)

    miga-folders       imigue_skeleton_train/0001/0001_light_hand.csv   (or 0001_2.xlsx)
                       imigue_skeleton_train/0001/0001_label.csv
                       imigue_skeleton_validate/0005/...
                       imigue_rgb_train/0001/0001.mp4    (optional: without videos, skeleton only)

    miga-arrays        train_data.npy  train_label.pkl   (parts named train* form the training half,
                       val_data.npy    val_label.pkl      every other part the test half)

What a sample becomes:
    ``skeleton``: float32 (2, T, V, 1), T = ``skeleton_frames``: x and y in
    pixels of one person: from OpenPose JSON the most confident person's
    BODY_25 joints (V = 25); from the per-video tables and the challenge
    arrays the 22 joints of the MiGA challenge
    (:data:`~mmrobust.datasets._imigue_format.MIGA_JOINTS`; the tables'
    points are mapped to them as the challenge's generator does, so the
    three give the same skeleton for the same clip). One affine map with a
    single scale (``DatasetBundle.skeleton_scale`` pixels per 1.0) puts every
    detected joint of the dataset in [0.01, 0.99]. OpenPose's confidence is
    not kept as a channel, so every channel is a coordinate and an L-inf
    budget reads in pixels; undetected joints (x = y = 0) and frames without
    a person are exactly 0.0.
    ``rgb`` (when the layout has videos): uint8 (3, T, S, S), a square crop
    around the person's detected joints over the sampled frames (half-sides
    +25 %, black outside the frame, the whole frame below 10 px). The joints
    are in pixels of the 1920 x 1080 frames OpenPose ran on and are rescaled
    to the decoded video's size, so re-encoded smaller videos crop the same
    region.
Frames are sampled deterministically (centre of T equal segments of the clip's
start..end frames), once, at prepare time. Frame numbers count the video's
decoded frames from 0, as the OpenPose file names and the tables' rows (or
their frame column) do. The challenge arrays hold each clip from its first
frame (only its last 90 frames for the 18 % of clips that are longer) followed
by zeros; frames are sampled before that padding, and an all-zero clip is
skipped.

Clips whose files are missing or malformed (a table with the wrong number of
columns, a label whose video has no skeleton, an all-zero challenge row) are
skipped, each listed with its path and reason in the manifest, or stop the
prepare with ``--strict``. Per-video tables are converted once into
``<cache>/imigue/tables/`` (safe to delete), so parallel workers read each
table once.

Splits: ``xsub`` (the authors' label CSV; default) trains on the 37 subjects
of :data:`XSUB_TRAIN_SUBJECTS` and tests on the other 35; ``challenge`` (the
MiGA layouts; their default) keeps the release's own train and test parts.

Example::

    from mmrobust.datasets.base import DataRequest
    from mmrobust.registry import DATASETS

    bundle = DATASETS.get("imigue")().load(DataRequest(root="/data/imigue"))
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..registry import register_dataset
from . import _imigue_format as fmt
from ._cache_read import PreparedRelease, find_prepared
from ._cache_write import read_json
from ._plan import Planner, PreparePlan, SampleError
from .base import RGB, SKELETON, DataRequest, cache_root

logger = logging.getLogger("mmrobust.datasets")

SPLITS = ("xsub", "challenge")
XSUB_TRAIN_SUBJECTS = (2, 4, 5, 6, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 23, 25, 28, 29, 30, 31, 35, 36,
                       38, 39, 41, 42, 43, 44, 46, 47, 48, 52, 53, 59, 61, 62)
DEFAULT_EPOCHS = 40
CLASS_NAMES = tuple(str(code) for code in fmt.CLASS_CODES)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")
#: The supported layouts of a root, in the order they are preferred.
LAYOUTS = {
    "openpose-json": "the authors' label CSV, OpenPose JSON per frame (<video>/<video>_<frame:012d>_keypoints.json) "
                     "and videos",
    "openpose-xlsx": "the authors' label CSV, an OpenPose table per video (<video>/<video>_2.xlsx, 137 points per "
                     "row) and videos",
    "miga-folders": "MiGA per-video folders (<video>/<video>_light_hand.csv or _2.xlsx, with <video>_label.csv) in "
                    "train and validate folders, videos optional",
    "miga-arrays": "MiGA challenge arrays (<part>_data.npy of shape (N, 3, 90, 22, 1) with <part>_label.pkl)",
}
#: How deep below the root the layouts are looked for.
SCAN_DEPTH = 6
#: Folders (directly in the root) where the label CSV may also be.
LABEL_DIRS = ("label", "labels")
#: The label CSV rows of :meth:`IMiGUE.example` (video, clip, start, end, code, subject): subject 2 trains,
#: subject 1 tests.
EXAMPLE_CLIPS = ((101, 1, 10, 25, 5, 2), (101, 2, 30, 50, 99, 2), (102, 1, 0, 20, 31, 1), (102, 2, 25, 45, 12, 1))

_split_masks = functools.partial(fmt.split_masks, train_subjects=XSUB_TRAIN_SUBJECTS)


@register_dataset("imigue")
class IMiGUE(PreparedRelease):
    """iMiGUE from the authors' releases (RGB + 2-D pose) or the MiGA challenge's (2-D pose, RGB where given)."""

    modalities = (RGB, SKELETON)

    name, splits, default_epochs, release = "imigue", SPLITS, DEFAULT_EPOCHS, "iMiGUE or MiGA release"
    split_masks = _split_masks  # a partial, so not bound as a method

    def plan(self, root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
        return plan_imigue(root, request, strict=strict)

    def default_split(self, request: DataRequest) -> str:
        """``challenge`` for a cache prepared from a MiGA layout, else ``xsub``."""
        manifest = read_json(find_prepared("imigue", request) / "manifest.json")
        return "challenge" if "challenge" in manifest["splits"] else "xsub"

    def example(self, directory: Path) -> DataRequest:
        """A prepared raw release of four clips from two 60-frame videos under ``directory`` (label CSV,
        OpenPose JSON, ``.mp4``), in the real file formats."""
        request = dataclasses.replace(super().example(directory / "cache"), root=str(directory / "release"))
        for video, seed in ((101, 1), (102, 2)):
            fmt.write_example_video(request.root, video, seed, frames=60)
        rows = [fmt.label_row(*clip) for clip in EXAMPLE_CLIPS]
        fmt.write_label_csv(Path(request.root) / "Label" / "labels.csv", rows)
        self.prepare(request)
        return request


# -- looking through a root ------------------------------------------------------

@dataclasses.dataclass
class Release:
    """What a root holds, by video id (zero padding dropped): the files each layout is made of."""

    root: Path
    label_csvs: list[Path] = dataclasses.field(default_factory=list)
    json_dirs: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)  # folder, file-name prefix
    xlsx: dict[int, str] = dataclasses.field(default_factory=dict)
    light_hand: dict[int, str] = dataclasses.field(default_factory=dict)
    clip_labels: dict[int, str] = dataclasses.field(default_factory=dict)
    videos: dict[int, str] = dataclasses.field(default_factory=dict)
    arrays: list[str] = dataclasses.field(default_factory=list)

    def add(self, kind: str, video: int, value: Any) -> None:
        """Record ``video``'s file of ``kind``; a second, different one is an error."""
        files = getattr(self, kind)
        if video in files and files[video] != value:
            first, second = (v[0] if isinstance(v, tuple) else v for v in (files[video], value))
            raise ValueError(f"{self.root}: video {video} has two {_KINDS[kind]}, {first} and {second}; keep one")
        files[video] = value


_KINDS = {"json_dirs": "OpenPose JSON folders", "xlsx": "Excel tables", "light_hand": "light-hand tables",
          "clip_labels": "label files", "videos": "video files"}


_NUMBER = re.compile(r"\d+")
_PER_VIDEO = {"xlsx": re.compile(r"(\d+)_2\.xlsx", re.IGNORECASE), "light_hand": re.compile(r"(\d+)_light_hand\.csv", re.IGNORECASE),
              "clip_labels": re.compile(r"(\d+)_label\.csv", re.IGNORECASE)}


def scan_release(root: Path) -> Release:
    """Look through ``root`` (:data:`SCAN_DEPTH` levels) for the files of every layout.

    A folder named by a number is a video's folder: its files are recorded
    and it is not descended into (it may hold one JSON file per frame).

    Raises:
        ValueError: a video has two files of one kind (say ``1.mp4`` and
            ``0001/0001.mp4``).
    """
    release = Release(root)
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            logger.warning("cannot list %s (%s); skipped", folder, error)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if _NUMBER.fullmatch(entry.name) and _add_video_folder(release, Path(entry.path)):
                    continue
                if depth < SCAN_DEPTH:
                    pending.append((Path(entry.path), depth + 1))
            elif entry.is_file():
                _add_file(release, folder, entry)
    return release


def _add_video_folder(release: Release, folder: Path) -> bool:
    """Record the files of a video's folder; False when it holds none of them."""
    video = int(folder.name)
    found = False
    json_seen = False
    try:
        entries = list(os.scandir(folder))
    except OSError as error:
        logger.warning("cannot list %s (%s); skipped", folder, error)
        return True
    for entry in entries:
        name = entry.name
        if name.endswith("_keypoints.json"):
            if not json_seen:
                prefix = fmt.openpose_prefix(name)
                if prefix is not None and int(prefix) == video:
                    release.add("json_dirs", video, (str(folder), prefix))
                    json_seen = found = True
            continue
        for kind, pattern in _PER_VIDEO.items():
            match = pattern.fullmatch(name)
            if match and int(match.group(1)) == video:
                release.add(kind, video, entry.path)
                found = True
        stem, extension = os.path.splitext(name)
        if extension.lower() in VIDEO_EXTENSIONS and _NUMBER.fullmatch(stem) and int(stem) == video:
            release.add("videos", video, entry.path)
            found = True
    return found


def _add_file(release: Release, folder: Path, entry: os.DirEntry) -> None:
    name = entry.name
    stem, extension = os.path.splitext(name)
    if name.lower().endswith("_data.npy"):
        release.arrays.append(entry.path)
    elif extension.lower() in VIDEO_EXTENSIONS and _NUMBER.fullmatch(stem):
        release.add("videos", int(stem), entry.path)
    elif extension.lower() == ".csv" and (folder == release.root or (
            folder.parent == release.root and folder.name.lower() in LABEL_DIRS)):
        release.label_csvs.append(Path(entry.path))


def _find_label_csv(release: Release) -> tuple[Path | None, ValueError | None]:
    """The authors' label CSV among the CSVs of the root and its Label/ folder, or why there is none usable."""
    candidates = sorted(release.label_csvs)
    matching = [path for path in candidates if set(fmt.CSV_COLUMNS) <= set(fmt.csv_header(path))]
    if len(matching) == 1:
        return matching[0], None
    if len(matching) > 1:
        return None, ValueError(f"{release.root}: several label CSVs ({', '.join(map(str, matching))}); keep one")
    if candidates:
        header = fmt.csv_header(candidates[0])
        lacking = [c for c in fmt.CSV_COLUMNS if c not in header]
        return None, ValueError(f"{candidates[0]}: label CSV lacks column(s) {', '.join(lacking)}; "
                                f"expected {', '.join(fmt.CSV_COLUMNS)}")
    return None, None


@dataclasses.dataclass
class LayoutMatch:
    """How much of one layout a root holds: what was found and what is missing, in words."""

    layout: str
    found: list[str]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


def match_layouts(release: Release, label_csv: Path | None) -> list[LayoutMatch]:
    """One :class:`LayoutMatch` per layout of :data:`LAYOUTS`, in order."""
    root = release.root

    def part(found: bool, what: str, absent: str) -> tuple[list[str], list[str]]:
        return ([what], []) if found else ([], [absent])

    label = part(label_csv is not None, f"label CSV {label_csv}",
                 f"no label CSV (a *.csv with columns {', '.join(fmt.CSV_COLUMNS[:4])}, ... in {root} or "
                 f"{root / 'Label'})")
    videos = part(bool(release.videos), f"{len(release.videos)} videos",
                  f"no video (<video>.mp4 or <video>/<video>.mp4; also {', '.join(VIDEO_EXTENSIONS[1:5])}, ...)")
    tables = {**release.xlsx, **release.light_hand}
    pieces = {
        "openpose-json": [label, part(bool(release.json_dirs), f"OpenPose JSON of {len(release.json_dirs)} videos",
                                      "no OpenPose keypoint folder (<video>/<video>_<frame:012d>_keypoints.json)"),
                          videos],
        "openpose-xlsx": [label, part(bool(release.xlsx), f"OpenPose tables of {len(release.xlsx)} videos",
                                      "no OpenPose table (<video>/<video>_2.xlsx)"), videos],
        "miga-folders": [part(bool(tables), f"skeleton tables of {len(tables)} videos",
                              "no skeleton table (<video>/<video>_light_hand.csv or <video>/<video>_2.xlsx)"),
                         part(bool(release.clip_labels), f"label files of {len(release.clip_labels)} videos",
                              "no per-video label file (<video>/<video>_label.csv)")],
        "miga-arrays": [part(bool(release.arrays), f"arrays {', '.join(release.arrays)}",
                             "no challenge arrays (<part>_data.npy with <part>_label.pkl)")],
    }
    return [LayoutMatch(layout, [f for found, _ in parts for f in found], [m for _, missing in parts for m in missing])
            for layout, parts in pieces.items()]


def _no_layout(root: Path, matches: list[LayoutMatch]) -> FileNotFoundError:
    closest = max(matches, key=lambda m: len(m.found))  # the first of equals: the preferred layout
    looked = "; ".join(f"{name} ({description})" for name, description in LAYOUTS.items())
    found = f" (found {', '.join(closest.found)})" if closest.found else ""
    return FileNotFoundError(f"{root}: no supported iMiGUE layout found. Looked for: {looked}. Closest match: "
                             f"{closest.layout}{found}, but: {'; '.join(closest.missing)}")


def plan_imigue(root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
    """Scan ``root``, pick its layout and list the work: one task per usable clip, skips with reasons.

    Raises:
        FileNotFoundError: ``root`` holds no complete layout (the message lists
            the layouts and says what the closest match lacks).
        ValueError: an unusable label CSV, challenge arrays of the wrong shape,
            a video with two files of one kind.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected the iMiGUE release)")
    release = scan_release(root)
    label_csv, label_problem = _find_label_csv(release)
    matches = match_layouts(release, label_csv)
    complete = [m.layout for m in matches if m.complete]
    if not complete:
        raise label_problem or _no_layout(root, matches)
    layout = complete[0]
    if len(complete) > 1:
        logger.info("%s holds the layouts %s; using %s", root, ", ".join(complete), layout)
    info = {**_info(), "layout": layout, "layout_description": LAYOUTS[layout], "also_found": complete[1:]}
    if layout == "miga-arrays":
        return _plan_challenge(root, release, request, strict, info)
    if layout == "miga-folders":
        return _plan_folders(root, release, request, strict, info)
    return _plan_authors(root, release, label_csv, layout, request, strict, info)


def _like(example: str | None, video: int, fallback: Path) -> str:
    """Where ``video``'s file or folder would be, named like ``example`` (another video's)."""
    if example is None:
        return str(fallback)
    path = Path(example)
    digits = _NUMBER.match(path.name).group(0)
    name = str(video).zfill(len(digits) if digits.startswith("0") else 0)
    renamed = name + path.name[len(digits):]
    if path.parent.name == digits:
        return str(path.parent.parent / name / renamed)
    return str(path.parent / renamed)


def _first(files: dict[int, Any]) -> str | None:
    if not files:
        return None
    value = files[min(files)]
    return value[0] if isinstance(value, tuple) else value


def _interleave(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clips of different videos alternate (first clips of every video, then second clips, ...), so that
    parallel workers convert different videos' tables at once."""
    by_video: dict[int, list[dict[str, Any]]] = {}
    for task in tasks:
        by_video.setdefault(task["video_id"], []).append(task)
    rounds = max((len(v) for v in by_video.values()), default=0)
    return [clips[i] for i in range(rounds) for clips in by_video.values() if i < len(clips)]


# -- the authors' layouts: label CSV + OpenPose JSON or Excel tables --------------------

def _authors_rows(csv_path: Path, planner: Planner) -> Iterator[tuple[fmt.ClipRow, str]]:
    """The label CSV's usable rows (with where they are); bad, unknown-class and repeated rows are skipped."""
    rows, errors = fmt.read_label_csv(csv_path)
    for error in errors:
        planner.skip(error, f"csv line {error.path.rsplit(':', 1)[-1]}")
    seen: set[str] = set()
    for row in rows:
        where = f"{csv_path}:{row.line}"
        if row.code not in fmt.CODE_TO_LABEL:
            planner.skip(SampleError("label", where, f"class {row.code} is not an iMiGUE code (1-31 or 99)"), row.name)
            continue
        if row.name in seen:
            planner.skip(SampleError("duplicate", where, f"video {row.video_id} label_id {row.label_id} "
                                                         "appears twice"), row.name)
            continue
        seen.add(row.name)
        yield row, where


def _plan_authors(root: Path, release: Release, csv_path: Path, layout: str, request: DataRequest, strict: bool,
                  info: dict[str, Any]) -> PreparePlan:
    planner = Planner(strict)
    use_json = layout == "openpose-json"
    skeletons = release.json_dirs if use_json else release.xlsx
    table_cache = str(cache_root(request.cache_dir) / "imigue" / "tables")
    for row, where in _authors_rows(csv_path, planner):
        video = row.video_id
        if video not in skeletons:
            expected = _like(_first(skeletons), video, root / str(video))
            what = "OpenPose keypoint folder" if use_json else "OpenPose table"
            planner.skip(SampleError("missing", expected, f"{what} not found (video {video}, {where})"), row.name)
            continue
        if video not in release.videos:
            expected = _like(_first(release.videos), video, root / f"{video}.mp4")
            planner.skip(SampleError("missing", expected, f"video not found (video {video}, {where})"), row.name)
            continue
        task = {"name": row.name, "video_id": video, "clip": row.label_id, "start": row.start_frame,
                "end": row.end_frame, "label": fmt.CODE_TO_LABEL[row.code], "subject": row.subject_id,
                "video": release.videos[video]}
        if use_json:
            task.update(json_dir=skeletons[video][0], json_prefix=skeletons[video][1])
        else:
            task.update(table=skeletons[video], table_cache=table_cache)
        planner.tasks.append(task)
    joints = fmt.BODY25_JOINTS if use_json else fmt.MIGA_NUM_JOINTS
    arrays = {
        "skeleton": ((2, request.skeleton_frames, joints, 1), "float32"),
        "rgb": ((3, request.rgb_frames, request.rgb_size, request.rgb_size), "uint8"),
        "label": ((), "int64"), "subject": ((), "int16"), "video": ((), "int32"), "clip": ((), "int32"),
        "name": ((), "<U24"),
    }
    info.update(label_csv=str(csv_path), rgb_crop=_RGB_CROP, keypoint_frame=list(fmt.KEYPOINT_FRAME))
    if use_json:
        info.update(keypoints="OpenPose BODY_25 (25 joints) of the most confident person per frame",
                    persons="per frame the person with the largest summed joint confidence (M = 1)")
        return _plan(root, request, planner, "raw", arrays, fmt.build_raw_sample, info)
    planner.tasks[:] = _interleave(planner.tasks)
    info.update(keypoints=_MIGA_KEYPOINTS.format(source="the 137 OpenPose points of <video>_2.xlsx"),
                joints=list(fmt.MIGA_JOINTS), persons="the one person of each table row (M = 1)")
    return _plan(root, request, planner, "raw", arrays, fmt.build_table_sample, info)


_RGB_CROP = ("square box around the person's detected joints over the sampled frames, half-sides +25 %, black "
             "outside the frame, whole frame below 10 px; joints rescaled from the keypoint frame (width, height) "
             "to the decoded video size")
_MIGA_KEYPOINTS = ("MiGA 22-joint layout (BODY_25 nose, neck, shoulders, elbows, wrists, eyes, ears; five "
                   "fingertips per hand, left then right) from {source}; score not kept")


# -- the challenge's per-video folders ------------------------------------------------

def _plan_folders(root: Path, release: Release, request: DataRequest, strict: bool,
                  info: dict[str, Any]) -> PreparePlan:
    planner = Planner(strict)
    with_rgb = bool(release.videos)
    table_cache = str(cache_root(request.cache_dir) / "imigue" / "tables")
    parts: dict[str, dict[str, Any]] = {}
    for video, label_path in sorted(release.clip_labels.items()):
        folder = Path(label_path).parent
        group = folder.parent.name or str(folder.parent)
        half = 0 if "train" in group.lower() else 1
        entry = parts.setdefault(group, {"part": group, "half": "train" if half == 0 else "test", "videos": 0,
                                         "clips": 0})
        entry["videos"] += 1
        clips, errors = fmt.read_clip_labels(label_path)
        entry["clips"] += len(clips) + len(errors)
        for index, error in errors:
            planner.skip(error, f"{folder.name}_{index}")
        table = release.light_hand.get(video) or release.xlsx.get(video)
        for clip in clips:
            name = f"{folder.name}_{clip.index}"
            where = f"{label_path}:{clip.line}"
            if clip.code not in fmt.CODE_TO_LABEL:
                planner.skip(SampleError("label", where, f"class {clip.code} is not an iMiGUE code (1-31 or 99)"),
                             name)
                continue
            if table is None:
                planner.skip(SampleError("missing", folder / f"{folder.name}_light_hand.csv",
                                         f"skeleton table not found (neither {folder.name}_light_hand.csv nor "
                                         f"{folder.name}_2.xlsx) for the clips of {label_path}"), name)
                continue
            if with_rgb and video not in release.videos:
                expected = _like(_first(release.videos), video, root / f"{video}.mp4")
                planner.skip(SampleError("missing", expected, f"video not found (video {video}, {where})"), name)
                continue
            task = {"name": name, "video_id": video, "clip": clip.index, "start": clip.start_frame,
                    "end": clip.end_frame, "label": fmt.CODE_TO_LABEL[clip.code], "part": half,
                    "table": table, "table_cache": table_cache}
            if with_rgb:
                task["video"] = release.videos[video]
            planner.tasks.append(task)
    halves = {entry["half"] for entry in parts.values()}
    if halves != {"train", "test"}:
        raise FileNotFoundError(f"{root}: the per-video folders need a train* folder and another folder for "
                                f"testing, found {', '.join(parts) or 'none'}")
    planner.tasks[:] = _interleave(planner.tasks)
    arrays: dict[str, tuple[tuple[int, ...], str]] = {
        "skeleton": ((2, request.skeleton_frames, fmt.MIGA_NUM_JOINTS, 1), "float32"),
        "label": ((), "int64"), "part": ((), "int8"), "video": ((), "int32"), "clip": ((), "int32"),
        "name": ((), "<U24"),
    }
    if with_rgb:
        arrays["rgb"] = ((3, request.rgb_frames, request.rgb_size, request.rgb_size), "uint8")
        info.update(rgb_crop=_RGB_CROP, keypoint_frame=list(fmt.KEYPOINT_FRAME))
    unlabelled = (set(release.light_hand) | set(release.xlsx)) - set(release.clip_labels)
    info.update(parts=list(parts.values()), videos_without_labels=len(unlabelled), joints=list(fmt.MIGA_JOINTS),
                keypoints=_MIGA_KEYPOINTS.format(source="the per-video tables (<video>_light_hand.csv, else "
                                                        "<video>_2.xlsx)"),
                persons="the one person of each table row (M = 1)")
    return _plan(root, request, planner, "challenge", arrays, fmt.build_table_sample, info)


# -- the challenge arrays ---------------------------------------------------------------

def _plan_challenge(root: Path, release: Release, request: DataRequest, strict: bool,
                    info: dict[str, Any]) -> PreparePlan:
    planner = Planner(strict)
    joints = None
    parts: list[dict[str, Any]] = []
    paths: dict[str, str] = {}
    for data_path in map(Path, release.arrays):
        part = data_path.name[:-len("_data.npy")]
        if part in paths:
            raise ValueError(f"{root}: two challenge parts named {part!r} ({paths[part]}, {data_path}); keep one")
        paths[part] = str(data_path)
        label_path = data_path.with_name(f"{part}_label.pkl")
        if not label_path.is_file():
            raise FileNotFoundError(f"{label_path}: labels for {data_path.name} not found")
        names, labels, shape = fmt.read_challenge_part(data_path, label_path)
        if joints is not None and shape[3] != joints:
            raise ValueError(f"{data_path}: {shape[3]} joints, but other parts have {joints}")
        joints = shape[3]
        is_train = part.lower().startswith("train")
        parts.append({"part": part, "samples": len(names), "half": "train" if is_train else "test",
                      "data": str(data_path)})
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
    info.update(parts=parts, keypoints=f"MiGA challenge layout ({joints} joints); score not kept",
                persons="the one person of the arrays (M = 1)",
                padding="each clip's trailing all-zero frames are padding; frames are sampled before them",
                class_mapping_note="the challenge labels are used as given (0-31), assumed to follow the same "
                                   "code order")
    if joints == fmt.MIGA_NUM_JOINTS:
        info["joints"] = list(fmt.MIGA_JOINTS)
    return _plan(root, request, planner, "challenge", arrays, fmt.build_challenge_sample, info)


def _info() -> dict[str, Any]:
    return {
        "class_mapping": {str(code): label for code, label in fmt.CODE_TO_LABEL.items()},
        "sampling": "deterministic: centre frame of each of T equal segments of the clip, fixed at prepare time",
        "xsub_train_subjects": list(XSUB_TRAIN_SUBJECTS),
    }


def _plan(root: Path, request: DataRequest, planner: Planner, source: str, arrays: dict[str, Any],
          worker: Callable[..., dict[str, Any]], info: dict[str, Any]) -> PreparePlan:
    config = {"skeleton_frames": request.skeleton_frames, "rgb_frames": request.rgb_frames,
              "rgb_size": request.rgb_size, "rgb": "rgb" in arrays}
    return PreparePlan(
        dataset="imigue", source=source, root=os.path.realpath(root),
        names=[task["name"] for task in planner.tasks], tasks=planner.tasks, arrays=arrays,
        worker=worker, config=config, split_masks=_split_masks, class_names=CLASS_NAMES,
        skeleton_unit="px", skeleton_axes=("x", "y"), skipped=planner.skipped, info=info,
    )
