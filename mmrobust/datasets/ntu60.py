"""NTU RGB+D 60: RGB video and 3-D skeletons of 60 actions, cross-subject and cross-view.

Dataset: Shahroudy et al., "NTU RGB+D: A Large Scale Dataset for 3D Human
Activity Analysis", CVPR 2016 (github.com/shahroudy/NTURGB-D). 56,880 clips
from three Kinect v2 cameras; the 302 clips the authors list as having missing
or incomplete skeletons are left out (``ntu60_missing_skeletons.txt``).

The raw release is converted once by ``prepare`` into a memory-mapped cache
(see :mod:`mmrobust.datasets._cache_write`)::

    mmrobust prepare --dataset ntu60 --root /data/ntu

``--root`` holds the archives as they extract::

    nturgb+d_skeletons/S001C001P001R001A001.skeleton ...
    nturgb+d_rgb/S001C001P001R001A001_rgb.avi ...

or, for the skeleton modality only, PYSKL's ``ntu60_3danno.pkl`` (``--root``
is the file, or a folder holding it and no ``nturgb+d_skeletons/``).

What a sample becomes:
    ``skeleton``: float32 (3, T, 25, 2), T = ``skeleton_frames``; x, y, z of
    persons 0 and 1 (camera space, metres) in PYSKL's order, whichever the
    source (:func:`mmrobust.datasets._ntu_format.person_slots`: bodies ranked
    by the variance of their joints pooled over frames and joints, after
    PYSKL's denoising), mapped by one affine map with a single scale
    (``DatasetBundle.skeleton_scale`` metres per 1.0; offsets in
    ``info["skeleton"]``) so that every valid joint of the dataset lies in
    [0.01, 0.99]. An absent second person, and frames where a person
    is not tracked, are exactly 0.0.
    ``rgb``: uint8 (3, T, S, S), T = ``rgb_frames``, S = ``rgb_size``; a square
    crop around both people (their colour-image joints over the sampled
    frames, half-sides +25 %, black outside the frame; the whole frame when
    they span under 10 px).
    ``label``: the action number minus one.
Frames are sampled deterministically (centre of T equal segments between the
first and last frame with a body), once, at prepare time: training sees the
same frames every epoch.

Splits (``DataRequest.split``): ``xsub`` (default) trains on performers
:data:`XSUB_TRAIN_SUBJECTS`; ``xview`` trains on cameras 2 and 3 and tests on
camera 1.

Example::

    from mmrobust.datasets.base import DataRequest
    from mmrobust.registry import DATASETS

    bundle = DATASETS.get("ntu60")().load(DataRequest(root="/data/ntu", split="xview"))
    batch = bundle.test.batch([0, 1])   # {"rgb", "skeleton", "label"}
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import register_dataset
from . import _ntu_format
from ._cache_read import PreparedRelease
from ._ntu_format import RGB_DIR, SKELETON_DIR
from ._plan import Planner, PreparePlan, SampleError
from .base import RGB, SKELETON, DataRequest

logger = logging.getLogger("mmrobust.datasets")

SPLITS = ("xsub", "xview")
XSUB_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
XVIEW_TRAIN_CAMERAS = (2, 3)
DEFAULT_EPOCHS = 80
PYSKL_FILE = "ntu60_3danno.pkl"
#: The clips of :meth:`NTU60.example`: performers 1 and 2 train, 3 and 7 test (cross-subject).
EXAMPLE_SAMPLES = ("S001C001P001R001A001", "S001C003P002R002A003", "S001C002P003R001A002", "S002C002P007R002A058")

CLASS_NAMES = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw",
    "sitting down", "standing up (from sitting position)", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe", "wear on glasses",
    "take off glasses", "put on a hat/cap", "take off a hat/cap", "cheer up", "hand waving",
    "kicking something", "reach into pocket",
    "hopping (one foot jumping)", "jump up", "make a phone call/answer phone", "playing with phone/tablet",
    "typing on a keyboard", "pointing to something with finger", "taking a selfie",
    "check time (from watch)", "rub two hands together", "nod head/bow", "shake head", "wipe face",
    "salute", "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering",
    "falling", "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person", "kicking other person", "pushing other person",
    "pat on back of other person", "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
)

_split_masks = functools.partial(_ntu_format.split_masks, train_subjects=XSUB_TRAIN_SUBJECTS,
                                 train_cameras=XVIEW_TRAIN_CAMERAS)


@register_dataset("ntu60")
class NTU60(PreparedRelease):
    """NTU RGB+D 60 from its raw release (RGB + skeleton) or PYSKL's pickle (skeleton only)."""

    modalities = (RGB, SKELETON)

    name, splits, default_epochs, release = "ntu60", SPLITS, DEFAULT_EPOCHS, "raw release"
    split_masks = _split_masks  # a partial, so not bound as a method

    def plan(self, root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
        return plan_ntu60(root, request, strict=strict)

    def example(self, directory: Path) -> DataRequest:
        """A prepared release of four clips under ``directory``: two cross-subject training clips,
        two test clips (one with two people), written in the real file formats."""
        request = dataclasses.replace(super().example(directory / "cache"), root=str(directory / "release"))
        for seed, name in enumerate(EXAMPLE_SAMPLES):
            people = 2 if _ntu_format.SampleName.parse(name).action >= 50 else 1
            _ntu_format.write_example_sample(request.root, name, people=people, seed=10 * seed)
        self.prepare(request)
        return request


def plan_ntu60(root: Path, request: DataRequest, *, strict: bool = False) -> PreparePlan:
    """Scan ``root`` and list the work: one task per usable sample, skips with reasons."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder (expected the NTU RGB+D release)")
    if root.is_file():
        return _plan_pyskl(root, request, strict)
    if (root / SKELETON_DIR).is_dir():
        if not (root / RGB_DIR).is_dir():
            raise FileNotFoundError(f"{root / RGB_DIR}: folder not found; extract the nturgb+d_rgb archives beside "
                                    f"{SKELETON_DIR}/ (or give PYSKL's {PYSKL_FILE} for skeletons only)")
        return _plan_raw(root, request, strict)
    if (root / PYSKL_FILE).is_file():
        return _plan_pyskl(root / PYSKL_FILE, request, strict)
    raise FileNotFoundError(f"{root}: expected {SKELETON_DIR}/ and {RGB_DIR}/ (the NTU RGB+D archives extracted) "
                            f"or PYSKL's {PYSKL_FILE}")


class _Planner(Planner):
    """A planner that also leaves out the official samples with missing skeletons."""

    def __init__(self, strict: bool) -> None:
        super().__init__(strict)
        self.excluded: list[str] = []
        self.missing = _ntu_format.missing_skeleton_names()

    def check_name(self, name: str, path: os.PathLike | str) -> _ntu_format.SampleName | None:
        """The parsed name of a usable NTU60 sample, or None (excluded or skipped)."""
        try:
            parsed = _ntu_format.SampleName.parse(name)
        except ValueError as error:
            self.skip(SampleError("name", path, str(error)), name)
            return None
        if name in self.missing:
            self.excluded.append(name)
            return None
        if not 1 <= parsed.setup <= _ntu_format.NUM_SETUPS:
            self.skip(SampleError("name", path, f"setup S{parsed.setup:03d} is not part of NTU RGB+D 60 "
                                                f"(S001-S{_ntu_format.NUM_SETUPS:03d})"), name)
            return None
        if not 1 <= parsed.action <= _ntu_format.NUM_ACTIONS:
            self.skip(SampleError("label", path, f"action A{parsed.action:03d} is outside NTU RGB+D 60's "
                                                 f"A001-A{_ntu_format.NUM_ACTIONS:03d}"), name)
            return None
        return parsed


def _plan_raw(root: Path, request: DataRequest, strict: bool) -> PreparePlan:
    skeleton_dir, rgb_dir = root / SKELETON_DIR, root / RGB_DIR
    names = sorted(entry.name[:-len(".skeleton")] for entry in os.scandir(skeleton_dir)
                   if entry.name.endswith(".skeleton") and entry.is_file())
    if not names:
        raise FileNotFoundError(f"{skeleton_dir}: no .skeleton files")
    videos = {entry.name for entry in os.scandir(rgb_dir) if entry.name.endswith("_rgb.avi")}
    planner = _Planner(strict)
    for name in names:
        skeleton = skeleton_dir / f"{name}.skeleton"
        parsed = planner.check_name(name, skeleton)
        if parsed is None:
            continue
        if f"{name}_rgb.avi" not in videos:
            planner.skip(SampleError("missing", rgb_dir / f"{name}_rgb.avi", "RGB video not found"), name)
            continue
        planner.tasks.append({"name": name, "skeleton": str(skeleton), "video": str(rgb_dir / f"{name}_rgb.avi"),
                              "label": parsed.action - 1, **_ntu_format.sample_fields(parsed)})
    unused = len(videos) - len(names)
    info = _info(planner, "raw")
    if unused > 0:
        info["videos_without_skeleton"] = unused
    return _plan(root, request, planner, source="raw", worker=_ntu_format.build_raw_sample, info=info)


def _plan_pyskl(path: Path, request: DataRequest, strict: bool) -> PreparePlan:
    splits, annotations = _ntu_format.read_pyskl(path)
    planner = _Planner(strict)
    seen: set[str] = set()
    for index, annotation in enumerate(annotations):
        where = f"{path}:annotations[{index}]"
        try:
            name, keypoint, label = _ntu_format.check_pyskl_annotation(annotation, index, str(path))
        except SampleError as error:
            planner.skip(error, f"annotations[{index}]")
            continue
        parsed = planner.check_name(name, where)
        if parsed is None:
            continue
        if name in seen:
            planner.skip(SampleError("duplicate", where, f"{name} appears twice"), name)
            continue
        seen.add(name)
        planner.tasks.append({"name": name, "path": where, "keypoint": keypoint, "label": label,
                              **_ntu_format.sample_fields(parsed)})
    planner.tasks.sort(key=lambda task: task["name"])
    info = _info(planner, "pyskl")
    info["pyskl_split_disagreements"] = _compare_pyskl_splits(planner.tasks, splits, path)
    return _plan(path, request, planner, source="pyskl", worker=_ntu_format.build_pyskl_sample, info=info)


def _compare_pyskl_splits(tasks: list[dict[str, Any]], splits: Mapping[str, list[str]], path: Path) -> dict[str, int]:
    """How many kept samples PYSKL's own split lists place differently from the official definitions."""
    meta = {field: np.array([task[field] for task in tasks]) for field in ("performer", "camera")}
    names = np.array([task["name"] for task in tasks])
    disagreements = {}
    for protocol, is_train in _split_masks(meta).items():
        listed_train, listed_test = set(splits.get(f"{protocol}_train", ())), set(splits.get(f"{protocol}_val", ()))
        if not listed_train and not listed_test:
            continue
        wrong = sum(1 for name, train in zip(names, is_train)
                    if (name in listed_test if train else name in listed_train))
        disagreements[protocol] = wrong
        if wrong:
            logger.warning("%s: %d samples sit in the other half of PYSKL's %s split than the official "
                           "definition puts them; the official definition is used", path, wrong, protocol)
    return disagreements


def _info(planner: _Planner, source: str) -> dict[str, Any]:
    return {
        "excluded_missing_skeletons": sorted(planner.excluded),
        "excluded_count": len(planner.excluded),
        "class_mapping": {f"A{action:03d}": action - 1 for action in range(1, _ntu_format.NUM_ACTIONS + 1)},
        "persons": ("PYSKL's order (tools/data/ntu_preproc.py): bodies ranked by var(x) + var(y) + var(z) pooled "
                    "over the joints of the frames that list them, after dropping tracks of 11 frames or fewer and "
                    "spread noise; non-overlapping tracks share a person slot"),
        "sampling": "deterministic: centre frame of each of T equal segments between the first and last "
                    "frame with a body, fixed at prepare time",
        "rgb_crop": ("square box around the colour-image joints of the kept bodies over the sampled frames, "
                     "half-sides +25 %, black outside the frame, whole frame below 10 px")
        if source == "raw" else None,
    }


def _plan(root: Path, request: DataRequest, planner: _Planner, *, source: str, worker, info) -> PreparePlan:
    with_rgb = source == "raw"
    arrays: dict[str, tuple[tuple[int, ...], str]] = {
        "skeleton": ((3, request.skeleton_frames, _ntu_format.NUM_JOINTS, _ntu_format.MAX_BODIES), "float32"),
        "label": ((), "int64"),
        "setup": ((), "int16"), "camera": ((), "int16"), "performer": ((), "int16"), "replication": ((), "int16"),
        "name": ((), "<U20"),
    }
    if with_rgb:
        arrays["rgb"] = ((3, request.rgb_frames, request.rgb_size, request.rgb_size), "uint8")
    config = {"skeleton_frames": request.skeleton_frames, "rgb_frames": request.rgb_frames,
              "rgb_size": request.rgb_size, "rgb": with_rgb}
    return PreparePlan(
        dataset="ntu60", source=source, root=os.path.realpath(root),
        names=[task["name"] for task in planner.tasks], tasks=planner.tasks, arrays=arrays,
        worker=worker, config=config, split_masks=_split_masks, class_names=CLASS_NAMES,
        skeleton_unit="m", skeleton_axes=("x", "y", "z"), skipped=planner.skipped, info=info,
    )
