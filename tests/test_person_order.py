"""NTU RGB+D persons 0 and 1 are the bodies PYSKL puts there, from ``.skeleton`` files and from its pickle.

PYSKL (github.com/kennymckormick/pyskl, ``tools/data/ntu_preproc.py``) ranks
the bodies of a clip by the variance of their joints pooled over frames and
joints; the rule used before summed per-joint variances over frames. The
clips below are written in the real formats by the writers the other dataset
tests use: ``.skeleton`` text, ``_rgb.avi`` video and PYSKL's pickle.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmrobust.datasets import _cache_read, _cache_write, _ntu_format
from mmrobust.datasets import ntu60 as ntu_module
from mmrobust.datasets._ntu_format import body_record, write_skeleton
from mmrobust.datasets._plan import FORMAT_VERSION
from mmrobust.datasets._video import uniform_indices, write_video
from mmrobust.datasets.base import DataRequest
from mmrobust.datasets.prepare import prepare
from mmrobust.registry import DATASETS

SIZES = {"rgb_frames": 4, "rgb_size": 16, "skeleton_frames": 8}
NAME = "S001C003P008R002A058"  # a real clip on which the two rules disagree
WALKER, STANDER = 72057594037931101, 72057594037931102
FRAMES = 16


def dyadic(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to 1/64 m: exact in the files' 7 digits and in PYSKL's float16."""
    return np.round(np.asarray(values) * 64) / 64


def person(seed: int, *, x: float, width: float, height: float, z: float) -> np.ndarray:
    """(25, 3) joints of a standing body ``width`` wide and ``height`` tall, feet at y = -0.8."""
    rng = np.random.default_rng(seed)
    return dyadic(np.stack([x + rng.uniform(-width / 2, width / 2, 25), np.linspace(-0.8, height - 0.8, 25),
                            z + rng.uniform(0, 0.1, 25)], 1))


def walker_and_stander() -> dict[int, np.ndarray]:
    """Two (F, 25, 3) tracks: a small body walking to and fro (listed first), a tall one swaying a little.

    Summed per-joint variances rank the walker first (all 25 joints move 25 cm);
    the variance pooled over joints ranks the stander first (its joints spread
    over 1.5 m, the walker's over 0.75 m).
    """
    steps = dyadic(0.25 * (1 - np.abs(np.arange(FRAMES) % 8 - 4) / 2))  # a triangle wave, 0-25 cm
    walker = person(1, x=-0.5, width=0.25, height=0.75, z=2.5)[None] + np.stack(
        [np.zeros(FRAMES), np.zeros(FRAMES), steps], 1)[:, None]
    sway = dyadic(0.02 * np.sin(np.arange(FRAMES)))
    stander = person(2, x=0.5, width=0.5, height=1.5, z=3.0)[None] + np.stack(
        [sway, np.zeros(FRAMES), np.zeros(FRAMES)], 1)[:, None]
    return {WALKER: walker, STANDER: stander}


def write_clip(root: Path, name: str, tracks: dict[int, np.ndarray], starts: dict[int, int] | None = None,
               frames: int = FRAMES) -> Path:
    """``name``'s ``.skeleton`` file (bodies listed in the order of ``tracks``) and a grey ``_rgb.avi``."""
    starts = starts or {}
    body_frames = []
    for f in range(frames):
        bodies = []
        for body_id, xyz in tracks.items():
            step = f - starts.get(body_id, 0)
            if 0 <= step < len(xyz):
                bodies.append(body_record(body_id, xyz[step], 960 + 300 * xyz[step, :, :2]))
        body_frames.append(bodies)
    path = write_skeleton(root / _ntu_format.SKELETON_DIR / f"{name}.skeleton", body_frames)
    write_video(root / _ntu_format.RGB_DIR / f"{name}_rgb.avi", np.full((frames, 54, 96, 3), 128, np.uint8))
    return path


def write_pyskl(path: Path, name: str, keypoint: np.ndarray) -> Path:
    """PYSKL's ``ntu60_3danno.pkl`` holding one clip (the layout of tools/data/ntu_preproc.py)."""
    annotation = {"frame_dir": name, "label": _ntu_format.SampleName.parse(name).action - 1,
                  "keypoint": keypoint.astype(np.float16), "total_frames": keypoint.shape[1]}
    split = {"xsub_train": [name], "xsub_val": [], "xview_train": [name], "xview_val": []}
    with open(path, "wb") as stream:
        pickle.dump({"split": split, "annotations": [annotation]}, stream)
    return path


def request_for(tmp_path: Path, root: Path | None, **kwargs) -> DataRequest:
    return DataRequest(root=str(root) if root else None, cache_dir=str(tmp_path / "cache"), progress=False,
                       **{**SIZES, **kwargs})


def body_ids(path: Path) -> list[list[int]]:
    return [[track.body_id for track in tracks] for tracks in _ntu_format.person_slots(_ntu_format.read_skeleton(path))]


# -- the ranking --------------------------------------------------------------------------

def test_bodies_rank_by_variance_pooled_over_joints_not_summed_per_joint(tmp_path):
    tracks = walker_and_stander()
    summed = {body: xyz.var(axis=0).sum() for body, xyz in tracks.items()}
    pooled = {body: xyz.reshape(-1, 3).var(axis=0).sum() for body, xyz in tracks.items()}
    assert summed[WALKER] > 10 * summed[STANDER]  # the rule used before: walker first
    assert pooled[STANDER] > 1.5 * pooled[WALKER]  # PYSKL's rule: stander first

    path = write_clip(tmp_path, NAME, tracks)
    assert body_ids(path) == [[STANDER], [WALKER]]
    first = _ntu_format.main_bodies(_ntu_format.read_skeleton(path))[0]
    assert first.motion == pytest.approx(25 * pooled[STANDER])


def test_raw_files_and_pyskl_pickle_give_the_same_cache(tmp_path):
    """The same clip prepared from its ``.skeleton`` file and from PYSKL's pickle of it loads identically."""
    tracks = walker_and_stander()
    raw_root = tmp_path / "release"
    write_clip(raw_root, NAME, tracks)
    # What ntu_preproc.py stores for this clip: both bodies in every frame, the stander (more motion) first.
    pickle_path = write_pyskl(tmp_path / "ntu60_3danno.pkl", NAME, np.stack([tracks[STANDER], tracks[WALKER]]))

    bundles = {}
    for root in (raw_root, pickle_path):
        request = request_for(tmp_path, root)
        assert prepare("ntu60", root, request)["num_samples"] == 1
        bundles[root] = DATASETS.get("ntu60")().load(request)
    raw, pyskl = bundles[raw_root], bundles[pickle_path]
    assert (raw.info["source"], pyskl.info["source"]) == ("raw", "pyskl")
    assert raw.skeleton_scale == pyskl.skeleton_scale
    assert raw.info["skeleton"]["offset"] == pyskl.info["skeleton"]["offset"]
    np.testing.assert_array_equal(np.asarray(raw.train.arrays["skeleton"]), np.asarray(pyskl.train.arrays["skeleton"]))

    skeleton = raw.train.batch([0])["skeleton"][0].numpy()  # (3, T, 25, 2)
    physical = skeleton.transpose(3, 1, 2, 0) * raw.skeleton_scale + np.array(raw.info["skeleton"]["offset"])
    frames = uniform_indices(FRAMES, SIZES["skeleton_frames"])
    np.testing.assert_allclose(physical[0], tracks[STANDER][frames], atol=1e-5)
    np.testing.assert_allclose(physical[1], tracks[WALKER][frames], atol=1e-5)


def test_short_and_spread_noise_tracks_do_not_become_persons(tmp_path):
    tracks = walker_and_stander()
    rng = np.random.default_rng(5)
    flicker = dyadic(rng.uniform(-1, 1, (11, 25, 3)) * [0.2, 1, 1] + [0, 0, 3])  # 11 frames: too short
    flat = person(3, x=0, width=1.0, height=0.25, z=3.5)  # wider than tall: noise, however it moves
    flat = flat[None] + dyadic(rng.uniform(-1, 1, (FRAMES, 1, 3)))
    path = write_clip(tmp_path, NAME, {**tracks, 7: flicker, 8: flat})
    ranked = _ntu_format.body_tracks(_ntu_format.read_skeleton(path))
    motion = {track.body_id: track.motion for track in ranked}
    assert motion[7] > motion[STANDER] and motion[8] > motion[STANDER]
    assert body_ids(path) == [[STANDER], [WALKER]]


def test_a_body_that_is_partly_spread_noise_ranks_by_its_clean_frames(tmp_path):
    """A tall body flailing sideways in a third of its frames ranks by the motion of the other frames."""
    tracks = walker_and_stander()
    flailing = tracks[STANDER].copy()
    flailing[:5, :, 0] = dyadic(np.linspace(-1.5, 1.5, 25))  # 3 m wide in 5 of 16 frames
    path = write_clip(tmp_path, NAME, {WALKER: tracks[WALKER], STANDER: flailing})
    motion = {track.body_id: track.motion for track in _ntu_format.body_tracks(_ntu_format.read_skeleton(path))}
    ranked = _ntu_format.rank_bodies(_ntu_format.read_skeleton(path))
    clean = flailing[5:].reshape(-1, 3).var(axis=0).sum() * 25
    assert motion[STANDER] > clean
    assert {track.body_id: track.motion for track in ranked}[STANDER] == pytest.approx(clean)


def test_a_body_whose_tracking_id_changes_stays_one_person(tmp_path):
    """Tracks that do not overlap in time share a person slot (PYSKL's merge)."""
    tracks = walker_and_stander()
    stander = np.concatenate([tracks[STANDER], tracks[STANDER]])  # the whole 32 frames
    walker_again = np.repeat(tracks[WALKER][:1], FRAMES, axis=0)  # stands still: ranks after the walker
    path = write_clip(tmp_path, NAME, {WALKER: tracks[WALKER], STANDER: stander, 9: walker_again},
                      starts={9: FRAMES}, frames=2 * FRAMES)
    assert body_ids(path) == [[STANDER], [WALKER, 9]]
    joints = _ntu_format.person_joints(_ntu_format.read_skeleton(path))
    np.testing.assert_array_equal(joints[:FRAMES, 1, :, 0:3], tracks[WALKER])
    np.testing.assert_array_equal(joints[FRAMES:, 1, :, 0:3], walker_again)


def test_the_person_present_first_is_person_0(tmp_path):
    """The most moving body enters late: the one already there becomes person 0."""
    tracks = walker_and_stander()
    path = write_clip(tmp_path, NAME, tracks, starts={STANDER: 3}, frames=FRAMES + 3)
    assert body_ids(path) == [[WALKER], [STANDER]]


def test_bodies_of_equal_motion_keep_the_order_they_first_appear(tmp_path):
    tracks = walker_and_stander()
    path = write_clip(tmp_path, NAME, {STANDER: tracks[STANDER], 5: tracks[STANDER], 4: tracks[STANDER]})
    assert body_ids(path) == [[STANDER], [5]]


def test_class_names_are_the_official_ones():
    assert len(ntu_module.CLASS_NAMES) == 60
    assert ntu_module.CLASS_NAMES[24] == "reach into pocket"  # A025


# -- caches of the earlier person order --------------------------------------------------------

@pytest.mark.parametrize("with_root", [True, False])
def test_a_cache_of_the_older_format_is_not_reused_and_says_why(tmp_path, monkeypatch, with_root):
    path = write_pyskl(tmp_path / "ntu60_3danno.pkl", NAME, np.stack(list(walker_and_stander().values())))
    with monkeypatch.context() as patch:
        patch.setattr(_cache_write, "FORMAT_VERSION", 1)  # the format with the old person order
        prepare("ntu60", path, request_for(tmp_path, path))
        old = _cache_write.cache_directory("ntu60", path, request_for(tmp_path, path))
    assert _cache_read.read_json(old / "manifest.json")["key"]["format_version"] == 1 < FORMAT_VERSION

    request = request_for(tmp_path, path if with_root else None)
    with pytest.raises(FileNotFoundError) as caught:
        DATASETS.get("ntu60")().load(request)
    message = str(caught.value)
    assert f"({old}) was prepared by an older format, version 1, and is not reused" in message
    assert "version 2: person order changed" in message
    assert f"run: mmrobust prepare --dataset ntu60 --root {os.path.realpath(path)} " in message

    prepare("ntu60", path, request_for(tmp_path, path))
    assert len(DATASETS.get("ntu60")().load(request).train) == 1
