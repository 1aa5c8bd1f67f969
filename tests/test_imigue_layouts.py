"""iMiGUE as it is distributed: every supported layout found by detection, prepared and read field by field.

One made-up speaker per video (all 137 OpenPose points per frame, in pixels of
the 1920 x 1080 frame OpenPose ran on) is written into miniature release trees
in the real formats: OpenPose JSON per frame, the authors' Excel tables
(written with openpyxl), the challenge's light-hand and label CSVs, the
challenge arrays, and small videos written with PyAV that paint the speaker
bright on dark. Each tree goes through ``prepare`` and ``load``; the skeletons
are compared with the points they were written from, across layouts with each
other, and the RGB crops with crops computed from the rescaled points.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmrobust.cli import cli
from mmrobust.datasets import _imigue_format as fmt
from mmrobust.datasets import imigue
from mmrobust.datasets._plan import SampleError
from mmrobust.datasets._video import person_box, read_clip, uniform_indices, write_video
from mmrobust.datasets.base import DataRequest
from mmrobust.datasets.prepare import prepare
from mmrobust.registry import DATASETS

SIZES = {"rgb_frames": 4, "rgb_size": 16, "skeleton_frames": 8}
FRAMES = 60
#: video -> (subject, clips as (label_id, class code, start frame, end frame)); subject 2 trains, subject 1 tests.
VIDEOS = {1: (2, [(1, 5, 10, 40), (2, 99, 45, 59)]), 2: (1, [(1, 31, 0, 30), (2, 12, 31, 55)])}
#: Small videos: 1/20 of the keypoint frame.
VIDEO_SIZE = (96, 54)


# -- the speaker and the release trees --------------------------------------------------

def speaker_points(video: int) -> np.ndarray:
    """(FRAMES, 137, 3) OpenPose points of a seated speaker, face and hands within the span of the body's
    joints: legs and feet, the left ear and, every third frame, the left thumb tip undetected (0, 0, 0);
    coordinates with 3 decimals, scores with 6."""
    rng = np.random.default_rng(video)
    spread = np.stack([960 + 60 * video + rng.uniform(-250, 250, fmt.OPENPOSE_POINTS),
                       500 + rng.uniform(-280, 250, fmt.OPENPOSE_POINTS)], axis=1)
    body = spread[[*range(8), 15, 16, 17]]
    low, high = body.min(axis=0) + 20, body.max(axis=0) - 20
    spread[fmt.BODY25_JOINTS:] = rng.uniform(low, high, (fmt.OPENPOSE_POINTS - fmt.BODY25_JOINTS, 2))
    phase = rng.uniform(0, 6, fmt.OPENPOSE_POINTS)
    points = np.zeros((FRAMES, fmt.OPENPOSE_POINTS, 3))
    for frame in range(FRAMES):
        points[frame, :, :2] = spread + 8 * np.sin(frame / 4 + phase)[:, None]
        points[frame, :, 2] = rng.uniform(0.2, 1.0, fmt.OPENPOSE_POINTS)
    points[:, [*range(8, 15), *range(19, 25), 18]] = 0
    points[::3, fmt.LEFT_HAND_START + 4] = 0
    points[:, :, :2] = np.round(points[:, :, :2], 3)
    points[:, :, 2] = np.round(points[:, :, 2], 6)
    return points


POINTS = {video: speaker_points(video) for video in VIDEOS}


def write_speaker_video(path: Path, video: int, size: tuple[int, int] = VIDEO_SIZE) -> Path:
    """The box of the speaker's detected body joints bright on a dark frame, at ``size``."""
    width, height = size
    pixels = np.full((FRAMES, height, width, 3), 30, dtype=np.uint8)
    for frame, points in enumerate(POINTS[video][:, :fmt.BODY25_JOINTS]):
        seen = points[(points[:, 0] != 0) | (points[:, 1] != 0), :2] * (width / 1920)
        x0, y0 = np.floor(seen.min(axis=0)).astype(int)
        x1, y1 = np.ceil(seen.max(axis=0)).astype(int)
        pixels[frame, y0:y1 + 1, x0:x1 + 1] = 220
    return write_video(path, pixels, codec="mpeg4", fps=25)


def write_authors_labels(root: Path, videos=VIDEOS) -> Path:
    rows = [fmt.label_row(video, clip, start, end, code, subject)
            for video, (subject, clips) in videos.items() for clip, code, start, end in clips]
    return fmt.write_label_csv(root / "Label" / "labels_20200831.csv", rows)


def tree_json(root: Path) -> Path:
    """openpose-json, zero-padded: Data/skeleton/raw/0001/0001_<frame>_keypoints.json, videos/0001/0001.mkv."""
    write_authors_labels(root)
    for video, points in POINTS.items():
        folder = root / "Data" / "skeleton" / "raw" / f"{video:04d}"
        folder.mkdir(parents=True)
        for frame, speaker in enumerate(points):
            bystander = speaker.copy()
            bystander[:, 0] = np.where(bystander[:, 0] > 0, bystander[:, 0] - 500, 0)
            bystander[:, 2] = np.round(bystander[:, 2] * 0.2, 6)
            fmt.openpose_path(folder, f"{video:04d}", frame).write_text(fmt.openpose_json([bystander, speaker]))
        write_speaker_video(root / "videos" / f"{video:04d}" / f"{video:04d}.mkv", video)
    return root


def tree_xlsx(root: Path, size: tuple[int, int] = VIDEO_SIZE) -> Path:
    """openpose-xlsx: Data/excel/0001/0001_2.xlsx (pandas layout), 0002_2.xlsx (bare rows), Data/video/1.mp4."""
    write_authors_labels(root)
    for video, points in POINTS.items():
        fmt.write_openpose_xlsx(root / "Data" / "excel" / f"{video:04d}" / f"{video:04d}_2.xlsx", points,
                                frame_column=video == 1)
        write_speaker_video(root / "Data" / "video" / f"{video}.mp4", video, size)
    return root


def tree_folders(root: Path) -> Path:
    """miga-folders: imigue_skeleton_{train,validate}/000v/000v_light_hand.csv + _label.csv, RGB beside."""
    for video, (_, clips) in VIDEOS.items():
        half = "train" if video == 1 else "validate"
        folder = root / f"imigue_skeleton_{half}" / f"{video:04d}"
        fmt.write_light_hand_csv(folder / f"{video:04d}_light_hand.csv", POINTS[video])
        fmt.write_clip_labels(folder / f"{video:04d}_label.csv", [(code, start, end) for _, code, start, end in clips])
        write_speaker_video(root / f"imigue_rgb_{half}" / f"{video:04d}" / f"{video:04d}.mp4", video)
    return root


def tree_arrays(root: Path) -> Path:
    """miga-arrays: train_data.npy / train_label.pkl (video 1), val_data.npy / val_label.pkl (video 2)."""
    for video, (_, clips) in VIDEOS.items():
        data = fmt.challenge_rows(POINTS[video], [(start, end) for _, _, start, end in clips])
        names = [f"{video:04d}_{i}" for i in range(len(clips))]
        labels = [fmt.CODE_TO_LABEL[code] for _, code, _, _ in clips]
        fmt.write_challenge_part(root, "train" if video == 1 else "val", data, names, labels)
    return root


TREES = {"openpose-json": tree_json, "openpose-xlsx": tree_xlsx, "miga-folders": tree_folders,
         "miga-arrays": tree_arrays}


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("imigue-layouts")
    return {layout: write(base / layout) for layout, write in TREES.items()}


def request_for(tmp_path: Path, root: Path, **kwargs) -> DataRequest:
    return DataRequest(root=str(root), cache_dir=str(tmp_path / "cache"), progress=False, **{**SIZES, **kwargs})


def clip_frames(start: int, end: int, count: int) -> np.ndarray:
    return start + uniform_indices(end - start + 1, count)


def physical(bundle, skeleton: np.ndarray) -> np.ndarray:
    """Pixel coordinates (2, T, V) of a loaded skeleton (2, T, V, 1); NaN where no joint was detected."""
    offset = np.array(bundle.info["skeleton"]["offset"]).reshape(2, 1, 1)
    values = np.asarray(skeleton, dtype=np.float64)[..., 0]
    return np.where(values == 0, np.nan, values * bundle.skeleton_scale + offset)


def expected_xy(video: int, start: int, end: int, joints) -> np.ndarray:
    """(2, T, V) pixel coordinates of the written points at the sampled frames; NaN where undetected."""
    xy = POINTS[video][clip_frames(start, end, SIZES["skeleton_frames"])][:, list(joints), :2].transpose(2, 0, 1)
    return np.where((xy[0] == 0) & (xy[1] == 0), np.nan, xy)


# -- the joint mapping and the table formats ----------------------------------------

def test_the_22_joints_are_the_same_points_through_every_format(tmp_path):
    assert fmt.MIGA_FROM_OPENPOSE == tuple(fmt.LIGHT_HAND_FROM_OPENPOSE[i] for i in fmt.MIGA_FROM_LIGHT_HAND)
    assert fmt.MIGA_FROM_OPENPOSE[:12] == (0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18)  # BODY_25 upper body, eyes, ears
    assert fmt.MIGA_FROM_OPENPOSE[12:] == (99, 103, 107, 111, 115, 120, 124, 128, 132, 136)  # fingertips, left first
    assert fmt.MIGA_JOINTS[4] == "right_wrist" and fmt.MIGA_JOINTS[7] == "left_wrist"
    assert fmt.MIGA_JOINTS[12] == "left_thumb_tip" and fmt.MIGA_JOINTS[21] == "right_little_tip"

    points = POINTS[1]
    written = np.float32(points[:, list(fmt.MIGA_FROM_OPENPOSE)])
    tables = [fmt.write_openpose_xlsx(tmp_path / "a" / "0001_2.xlsx", points),
              fmt.write_openpose_xlsx(tmp_path / "b" / "0001_2.xlsx", points, frame_column=False),
              fmt.write_light_hand_csv(tmp_path / "0001_light_hand.csv", points)]
    for path in tables:
        frames, joints = fmt.read_table(path)
        np.testing.assert_array_equal(frames, np.arange(FRAMES))
        assert joints.dtype == np.float32 and joints.shape == (FRAMES, 22, 3)
        np.testing.assert_array_equal(joints, written)
    header = (tmp_path / "0001_light_hand.csv").read_text().splitlines()[:2]
    assert header[0] == "," + ",".join(map(str, range(105))) and header[1].startswith("0,")

    longer = np.concatenate([points, points])  # 120 frames
    data = fmt.challenge_rows(longer, [(10, 40), (0, 119)])
    assert data.shape == (2, 3, 90, 22, 1) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0, :, :31, :, 0], written[10:41].transpose(2, 0, 1))
    assert not data[0, :, 31:].any()  # zero padding after the clip
    assert fmt.clip_length(data[0]) == 31 and fmt.clip_length(data[1]) == 90
    np.testing.assert_array_equal(data[1, :, :, :, 0], np.concatenate([written, written])[30:].transpose(2, 0, 1))


def test_a_table_is_converted_once_and_its_problems_remembered(tmp_path):
    path = fmt.write_light_hand_csv(tmp_path / "0001_light_hand.csv", POINTS[1])
    cache = tmp_path / "tables"
    direct = fmt.read_table(path)
    for _ in range(2):
        frames, joints = fmt.load_table(path, cache)
        np.testing.assert_array_equal(frames, direct[0])
        np.testing.assert_array_equal(joints, direct[1])
    assert len(list(cache.glob("*.npy"))) == 1
    bad = tmp_path / "0002_light_hand.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    for _ in range(2):
        with pytest.raises(SampleError, match="rows have 3 columns, expected 105") as caught:
            fmt.load_table(bad, cache)
        assert caught.value.kind == "malformed" and caught.value.path == str(bad)
    fmt.write_light_hand_csv(bad, POINTS[2])
    os.utime(bad, ns=(1, 1))  # a changed file is read again
    np.testing.assert_array_equal(fmt.load_table(bad, cache)[1], fmt.read_table(bad)[1])


def test_table_headers_and_frame_columns(tmp_path):
    values = np.float32(POINTS[1][:, list(fmt.LIGHT_HAND_FROM_OPENPOSE)].reshape(FRAMES, -1))
    path = tmp_path / "0001_light_hand.csv"
    rows = [",".join(repr(float(v)) for v in row) for row in values]
    path.write_text(",".join(map(str, range(105))) + "\n" + "\n".join(rows) + "\n")  # numbered columns, no frames
    frames, joints = fmt.read_table(path)
    np.testing.assert_array_equal(frames, np.arange(FRAMES))
    np.testing.assert_array_equal(joints, values.reshape(FRAMES, 35, 3)[:, list(fmt.MIGA_FROM_LIGHT_HAND)])
    path.write_text("frame," + ",".join(f"v{i}" for i in range(105)) + "\n"
                    + "\n".join(f"{5 + 2 * i},{row}" for i, row in enumerate(rows[:3])) + "\n")  # named, frames 5, 7, 9
    frames, joints = fmt.read_table(path)
    np.testing.assert_array_equal(frames, [5, 7, 9])
    np.testing.assert_array_equal(joints[2], values[2].reshape(35, 3)[list(fmt.MIGA_FROM_LIGHT_HAND)])
    task = {"name": "0001_0", "video_id": 1, "clip": 0, "start": 5, "end": 8, "label": 0, "part": 0, "table": str(path)}
    with pytest.raises(SampleError, match=r"has no row for frame 6 of clip 5-8 \(its frames run 5-9\)"):
        fmt.build_table_sample(task, {"skeleton_frames": 4, "rgb_frames": 1, "rgb_size": 8, "rgb": False})
    sample = fmt.build_table_sample({**task, "end": 9}, {"skeleton_frames": 3, "rgb": False, "rgb_frames": 1,
                                                         "rgb_size": 8})
    want = joints[1, :, :2].T.copy()  # frame 7 is row 1
    want[:, (want[0] == 0) & (want[1] == 0)] = np.nan  # undetected: NaN until the cache maps it to 0
    np.testing.assert_array_equal(sample["skeleton"][:, 1, :, 0], want)


@pytest.mark.parametrize("content, kind, reason", [
    ("", "malformed", "no frame rows"),
    (",0,1\n0,1,2\n", "malformed", "rows have 3 columns"),
    ("\n".join(["1," + ",".join(["5"] * 105)] * 2), "malformed", "no increasing frame numbers"),
    ("0," + ",".join(["5"] * 105) + "\n1," + ",".join(["x"] + ["5"] * 104), "malformed",
     "row 2, column 2: 'x' is not a number"),
    ("0," + ",".join(["nan"] + ["5"] * 104), "nan", "data row 1 holds NaN"),
])
def test_bad_tables_are_sample_errors(tmp_path, content, kind, reason):
    path = tmp_path / "0001_light_hand.csv"
    path.write_text(content)
    with pytest.raises(SampleError, match=reason) as caught:
        fmt.read_table(path)
    assert caught.value.kind == kind and caught.value.path == str(path)
    (tmp_path / "0001_2.xlsx").write_text("not a workbook")
    with pytest.raises(SampleError, match="not a readable .xlsx workbook") as caught:
        fmt.read_table(tmp_path / "0001_2.xlsx")
    assert caught.value.kind == "unreadable"


def test_clip_label_files_parse_line_by_line(tmp_path):
    path = tmp_path / "0001_label.csv"
    path.write_text("class,start,end\n5,10,40\n\n99,45,59\n7,30\n3,20,10\n")
    clips, errors = fmt.read_clip_labels(path)
    assert clips == [fmt.VideoClip(5, 10, 40, 0, 2), fmt.VideoClip(99, 45, 59, 1, 4)]
    assert [(index, error.path, error.reason) for index, error in errors] == [
        (2, f"{path}:5", "2 fields, expected 3 (class code, start frame, end frame)"),
        (3, f"{path}:6", "frames 20-10 do not form a clip")]


# -- every layout through prepare and load ----------------------------------------------

LOADED = {  # layout -> (source, split, joints, train names, test names)
    "openpose-json": ("raw", "xsub", 25, ["1_1", "1_2"], ["2_1", "2_2"]),
    "openpose-xlsx": ("raw", "xsub", 22, ["1_1", "1_2"], ["2_1", "2_2"]),
    "miga-folders": ("challenge", "challenge", 22, ["0001_0", "0001_1"], ["0002_0", "0002_1"]),
    "miga-arrays": ("challenge", "challenge", 22, ["train/0001_0", "train/0001_1"], ["val/0002_0", "val/0002_1"]),
}


@pytest.mark.parametrize("layout", list(TREES))
def test_each_layout_is_found_prepared_and_read_back(tmp_path, releases, layout):
    source, split, joints, train_names, test_names = LOADED[layout]
    request = request_for(tmp_path, releases[layout])
    manifest = prepare("imigue", releases[layout], request)
    assert (manifest["layout"], manifest["source"], manifest["num_samples"], manifest["skipped"]) == (
        layout, source, 4, [])
    assert list(manifest["splits"]) == [split]
    assert manifest["splits"][split]["train"]["count"] == 2 and manifest["splits"][split]["test"]["count"] == 2
    per_class = np.zeros(32, int)
    for code in (5, 99, 31, 12):
        per_class[fmt.CODE_TO_LABEL[code]] += 1
    assert manifest["per_class"] == per_class.tolist()

    bundle = DATASETS.get("imigue")().load(request)
    with_rgb = layout != "miga-arrays"
    assert bundle.split == split and bundle.modalities == (("rgb", "skeleton") if with_rgb else ("skeleton",))
    assert bundle.input_shape("skeleton") == (2, 8, joints, 1)
    assert bundle.info["names"] == {"train": train_names, "test": test_names}
    joint_index = range(25) if joints == 25 else fmt.MIGA_FROM_OPENPOSE
    for part, video in ((bundle.train, 1), (bundle.test, 2)):
        batch = part.batch(np.arange(len(part)))
        clips = VIDEOS[video][1]
        assert batch["label"].tolist() == [fmt.CODE_TO_LABEL[code] for _, code, _, _ in clips]
        for row, (_, _, start, end) in enumerate(clips):
            got = physical(bundle, batch["skeleton"][row].numpy())
            want = expected_xy(video, start, end, joint_index)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # undetected joints stay 0.0
            np.testing.assert_allclose(got, want, atol=2e-4, equal_nan=True)
        if with_rgb:
            rgb = batch["rgb"].numpy()
            assert rgb.shape == (2, 3, 4, 16, 16)
            assert rgb[:, :, :, 6:10, 6:10].mean() > 0.7 and rgb[:, :, :, 0, :].mean() < 0.3  # centred on the speaker


def test_the_three_22_joint_routes_give_the_same_clips(tmp_path, releases):
    loaded = {}
    for layout in ("openpose-xlsx", "miga-folders", "miga-arrays"):
        request = request_for(tmp_path, releases[layout])
        prepare("imigue", releases[layout], request)
        bundle = DATASETS.get("imigue")().load(request)
        loaded[layout] = [(physical(bundle, part.batch(np.arange(len(part)))["skeleton"].numpy()),
                           part.batch(np.arange(len(part))).get("rgb")) for part in (bundle.train, bundle.test)]
    for half in range(2):
        xlsx, folders, arrays = (loaded[layout][half] for layout in ("openpose-xlsx", "miga-folders", "miga-arrays"))
        np.testing.assert_allclose(xlsx[0], arrays[0], atol=2e-4, equal_nan=True)
        np.testing.assert_allclose(folders[0], arrays[0], atol=2e-4, equal_nan=True)
        np.testing.assert_array_equal(xlsx[1].numpy(), folders[1].numpy())  # same points, same video: same crop


def test_the_crop_rescales_keypoints_to_the_decoded_video(tmp_path):
    roots = {size: tree_xlsx(tmp_path / f"release-{size[0]}", size) for size in ((96, 54), (192, 108))}
    crops = {}
    for size, root in roots.items():
        request = request_for(tmp_path, root)
        prepare("imigue", root, request)
        crops[size] = DATASETS.get("imigue")().load(request).train.batch([0])["rgb"][0].numpy()
    _, _, start, end = VIDEOS[1][1][0]
    frames = clip_frames(start, end, SIZES["rgb_frames"])
    points = POINTS[1][frames][:, list(fmt.MIGA_FROM_OPENPOSE), :2].reshape(-1, 2)
    width, height = 96, 54
    box = person_box(points * [width / 1920, height / 1080], width, height)
    assert box != person_box(points, width, height)  # unscaled, every joint lies outside the small frame
    want = read_clip(str(roots[(96, 54)] / "Data" / "video" / "1.mp4"), frames, lambda w, h: box, 16)
    np.testing.assert_allclose(crops[(96, 54)], want.transpose(3, 0, 1, 2) / 255.0, atol=1e-6)
    assert np.abs(crops[(96, 54)] - crops[(192, 108)]).mean() < 0.05  # twice the size, the same region


def test_zero_padded_and_plain_ids_and_any_folder_for_videos(tmp_path):
    root = tmp_path / "release"
    write_authors_labels(root, {1: VIDEOS[1]})
    fmt.write_openpose_xlsx(root / "0001" / "0001_2.xlsx", POINTS[1])
    write_speaker_video(root / "0001" / "0001.avi", 1)
    release = imigue.scan_release(root)
    assert (list(release.xlsx), list(release.videos)) == ([1], [1])
    assert release.videos[1].endswith("0001.avi")
    write_speaker_video(root / "videos" / "1.mp4", 1)
    with pytest.raises(ValueError, match=r"video 1 has two video files, .*0001\.avi and .*1\.mp4; keep one"):
        imigue.scan_release(root)


# -- bad input ----------------------------------------------------------------------

def test_a_root_with_no_layout_lists_them_and_the_closest(tmp_path):
    request = request_for(tmp_path, tmp_path)
    root = tmp_path / "partial"
    fmt.write_openpose_xlsx(root / "Data" / "excel" / "0001" / "0001_2.xlsx", POINTS[1][:2])
    with pytest.raises(FileNotFoundError) as caught:
        prepare("imigue", root, request)
    message = str(caught.value)
    assert all(layout in message for layout in imigue.LAYOUTS)
    assert "Closest match: openpose-xlsx (found OpenPose tables of 1 videos), but: no label CSV" in message
    assert "no video (<video>.mp4 or <video>/<video>.mp4" in message

    other = tmp_path / "hands"
    fmt.write_light_hand_csv(other / "imigue_skeleton_train" / "0001" / "0001_light_hand.csv", POINTS[1][:2])
    with pytest.raises(FileNotFoundError, match=r"Closest match: miga-folders \(found skeleton tables of 1 videos\), "
                                                r"but: no per-video label file \(<video>/<video>_label\.csv\)"):
        prepare("imigue", other, request)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Closest match: openpose-json, but: no label CSV"):
        prepare("imigue", tmp_path / "empty", request)


def test_a_table_of_the_wrong_width_and_a_label_without_skeleton_are_skipped(tmp_path, releases):
    root = tmp_path / "release"
    shutil.copytree(releases["openpose-xlsx"], root)
    bad = root / "Data" / "excel" / "0002" / "0002_2.xlsx"
    fmt.write_openpose_xlsx(bad, POINTS[2][:, :100], frame_column=False)
    write_authors_labels(root, {**VIDEOS, 3: (4, [(1, 7, 0, 10)])})
    write_speaker_video(root / "Data" / "video" / "3.mp4", 1)
    request = request_for(tmp_path, root)
    manifest = prepare("imigue", root, request)
    assert manifest["num_samples"] == 2 and manifest["skipped_count"] == 3
    assert manifest["skipped_by_kind"] == {"malformed": 2, "missing": 1}
    skipped = {s["name"]: s for s in manifest["skipped"]}
    assert skipped["2_1"]["path"] == skipped["2_2"]["path"] == str(bad)
    assert skipped["2_1"]["reason"] == ("rows have 300 columns, expected 411 (137 OpenPose points x (x, y, score)) "
                                        "or 412 with a leading frame number")
    assert skipped["3_1"]["path"] == str(root / "Data" / "excel" / "0003" / "0003_2.xlsx")
    assert skipped["3_1"]["reason"].startswith("OpenPose table not found (video 3, ")
    with pytest.raises(FileNotFoundError, match=r"0003_2\.xlsx: OpenPose table not found"):
        prepare("imigue", root, request_for(tmp_path / "strict", root), strict=True)
    write_authors_labels(root)
    with pytest.raises(ValueError, match=r"0002_2\.xlsx: rows have 300 columns, expected 411"):
        prepare("imigue", root, request_for(tmp_path / "strict", root), strict=True)


def test_per_video_labels_without_skeleton_or_malformed_are_skipped(tmp_path, releases):
    root = tmp_path / "release"
    shutil.copytree(releases["miga-folders"], root)
    folder = root / "imigue_skeleton_validate" / "0003"
    fmt.write_clip_labels(folder / "0003_label.csv", [(7, 0, 10), (8, 11, 20)])
    with open(root / "imigue_skeleton_validate" / "0002" / "0002_label.csv", "a") as stream:
        stream.write("7,30\n")
    manifest = prepare("imigue", root, request_for(tmp_path, root))
    assert manifest["num_samples"] == 4 and manifest["skipped_by_kind"] == {"malformed": 1, "missing": 2}
    skipped = {s["name"]: s for s in manifest["skipped"]}
    assert skipped["0003_0"]["path"] == skipped["0003_1"]["path"] == str(folder / "0003_light_hand.csv")
    assert "neither 0003_light_hand.csv nor 0003_2.xlsx" in skipped["0003_0"]["reason"]
    assert skipped["0002_2"]["path"].endswith("0002_label.csv:3")
    shutil.copy(releases["miga-folders"] / "imigue_skeleton_validate" / "0002" / "0002_label.csv",
                root / "imigue_skeleton_validate" / "0002" / "0002_label.csv")
    with pytest.raises(FileNotFoundError, match=r"0003_light_hand\.csv: skeleton table not found"):
        prepare("imigue", root, request_for(tmp_path / "strict", root), strict=True)


def test_an_all_zero_challenge_clip_is_skipped(tmp_path, releases):
    root = tmp_path / "arrays"
    shutil.copytree(releases["miga-arrays"], root)
    data = fmt.challenge_rows(POINTS[2], [(0, 30), (31, 55), (0, 5)])
    data[2] = 0
    fmt.write_challenge_part(root, "val", data, ["0002_0", "0002_1", "0002_2"], [30, 11, 6])
    manifest = prepare("imigue", root, request_for(tmp_path, root))
    assert manifest["num_samples"] == 4 and manifest["skipped"] == [
        {"name": "val/0002_2", "kind": "no-bodies", "path": f"{root / 'val_data.npy'}[2]",
         "reason": "all zeros: the clip holds padding only"}]
    with pytest.raises(ValueError, match=r"val_data\.npy\[2\]: all zeros"):
        prepare("imigue", root, request_for(tmp_path / "strict", root), strict=True)


# -- a run on a prepared layout ---------------------------------------------------------

@pytest.mark.parametrize("layout", list(TREES))
def test_a_one_epoch_run_on_each_layout(tmp_path, releases, layout):
    root = releases[layout]
    split = LOADED[layout][1]
    data_dir = tmp_path / "cache"
    runner = CliRunner()
    prepared = runner.invoke(cli, ["prepare", "--dataset", "imigue", "--root", str(root), "--data-dir", str(data_dir),
                                   "--quiet"])
    assert prepared.exit_code == 0, prepared.output
    assert f"{split}: train 2, test 2" in prepared.output
    result = runner.invoke(cli, ["run", "--dataset", "imigue", "--root", str(root), "--data-dir", str(data_dir),
                                 "--epochs", "1", "--batch-size", "2", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "result.json").is_file()
