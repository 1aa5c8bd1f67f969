"""Video frame numbers: frame i is the i-th frame the decoder outputs, whatever the timestamps say.

Small videos whose frames draw their own number as Gray-coded bars are encoded
with PyAV, all with B-frames: H.264 in AVI (whose timestamps FFmpeg can only
guess) and in MP4, MPEG-4 Part 2 in AVI, and an MP4 whose timestamps jump five
frame periods at frame 120, as after dropped frames. Every read through
:func:`read_clip` is compared with decoding the file from the start: the same
pixels and the same drawn number for each frame asked for. A wrapper around
``av.open`` counts the frames the reader decodes and the seeks it makes.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from mmrobust.datasets._video import read_clip, uniform_indices

FRAMES = 240
SIDE = 64
BAR = 8  # pixels per bit: 8 bars of 8 pixels number up to 256 frames
RATE = 25
GOP = 48
#: First frame of the late window a clip sampler asks for (past the reader's seek threshold of 96 frames).
LATE_START = 150
#: Frame from which the timestamps of the "h264-mp4-gap" video run five periods late.
GAP_AT = 120

#: name -> (codec, suffix, timestamps skip at GAP_AT, the reader may seek in it).
VIDEOS = {
    "h264-avi": ("libx264", ".avi", False, False),
    "h264-mp4": ("libx264", ".mp4", False, True),
    "mpeg4-avi": ("mpeg4", ".avi", False, False),
    "h264-mp4-gap": ("libx264", ".mp4", True, False),
}
REQUESTS = {
    "uniform-17": uniform_indices(FRAMES, 17).tolist(),
    "late-window-17": (LATE_START + uniform_indices(80, 17)).tolist(),
    "shuffled-with-repeats": [200, 97, 150, 97, 239, 120, 119, 121, 98],
}


def numbered_frame(index: int) -> np.ndarray:
    """(SIDE, SIDE, 3) uint8: bar b is white when bit b of the Gray code of ``index`` is set."""
    gray = index ^ (index >> 1)
    frame = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    for bit in range(SIDE // BAR):
        if gray >> bit & 1:
            frame[:, bit * BAR:(bit + 1) * BAR] = 255
    return frame


def drawn_number(frame: np.ndarray) -> int:
    """The number :func:`numbered_frame` drew, read from the middle of each bar."""
    gray = 0
    for bit in range(SIDE // BAR):
        if frame[:, bit * BAR + 2:(bit + 1) * BAR - 2].mean() > 128:
            gray |= 1 << bit
    index = 0
    while gray:
        index ^= gray
        gray >>= 1
    return index


def write_numbered_video(path: Path, codec: str, gap: bool) -> Path:
    """Encode FRAMES numbered frames with B-frames and a keyframe every GOP frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":  # b-adapt=0: always the full run of B-frames
            stream.options = {"x264-params": f"bframes=3:b-adapt=0:keyint={GOP}:min-keyint={GOP}:scenecut=0:qp=12"}
        else:
            stream.codec_context.max_b_frames = 2
            stream.codec_context.gop_size = GOP
            stream.options = {"qscale": "2"}
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index), format="rgb24")
            frame.pts = index + (5 if gap and index >= GAP_AT else 0)
            frame.time_base = Fraction(1, RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_from_start(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, its frames as decoded from the start, (FRAMES, SIDE, SIDE, 3) uint8)."""
    root = tmp_path_factory.mktemp("numbered")
    out = {}
    for name, (codec, suffix, gap, _) in VIDEOS.items():
        path = write_numbered_video(root / f"{name}{suffix}", codec, gap)
        out[name] = path, np.stack([frame.to_ndarray(format="rgb24") for frame in decode_from_start(path)])
    return out


def read(path: Path, indices) -> np.ndarray:
    """The whole frames ``indices``: the crop box is the frame itself, so nothing is resized."""
    return read_clip(str(path), indices, lambda width, height: (0, 0, SIDE), SIDE)


class CountingContainer:
    """A PyAV input container that counts the frames decoded through it and its seeks."""

    def __init__(self, container, counts: Counter):
        self._container, self._counts = container, counts

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._container.__exit__(*exc_info)

    def __getattr__(self, name):
        return getattr(self._container, name)

    def seek(self, *args, **kwargs):
        self._counts["seeks"] += 1
        return self._container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counts["frames"] += 1
            yield frame


@pytest.fixture
def decoder_counts(monkeypatch) -> Counter:
    counts: Counter = Counter()
    open_file = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: CountingContainer(open_file(*args, **kwargs), counts))
    return counts


@pytest.mark.parametrize("name", VIDEOS)
def test_videos_have_b_frames_and_draw_their_number(videos, name):
    path, _ = videos[name]
    frames = decode_from_start(path)
    assert len(frames) == FRAMES
    assert PictureType.B in {frame.pict_type for frame in frames}
    assert [drawn_number(frame.to_ndarray(format="rgb24")) for frame in frames] == list(range(FRAMES))


def test_h264_in_avi_has_timestamps_out_of_display_order(videos):
    frames = decode_from_start(videos["h264-avi"][0])
    stamps = [frame.pts for frame in frames]
    assert None in stamps or stamps != sorted(stamps)


@pytest.mark.parametrize("name", VIDEOS)
def test_every_frame_matches_decoding_from_the_start(videos, name):
    path, reference = videos[name]
    indices = list(range(FRAMES))[::-1]
    clip = read(path, indices)
    assert [drawn_number(frame) for frame in clip] == indices
    np.testing.assert_array_equal(clip, reference[indices])


@pytest.mark.parametrize("request_name", REQUESTS)
@pytest.mark.parametrize("name", VIDEOS)
def test_sampled_clips_match_decoding_from_the_start(videos, name, request_name):
    path, reference = videos[name]
    indices = REQUESTS[request_name]
    clip = read(path, indices)
    assert [drawn_number(frame) for frame in clip] == indices
    np.testing.assert_array_equal(clip, reference[indices])


@pytest.mark.parametrize("name", ["h264-mp4", "h264-avi"])
def test_single_late_frames_match_decoding_from_the_start(videos, name):
    """One frame per call, at every offset from the keyframes: each seek lands differently."""
    path, reference = videos[name]
    for index in range(97, 97 + GOP + 3):
        clip = read(path, [index])
        assert drawn_number(clip[0]) == index
        np.testing.assert_array_equal(clip[0], reference[index])


@pytest.mark.parametrize("name", VIDEOS)
@pytest.mark.parametrize("past_the_end", [[FRAMES - 1, FRAMES, FRAMES + 40], [FRAMES + 40], [200, FRAMES + 1]])
def test_a_frame_past_the_end_takes_the_last_frame(videos, name, past_the_end):
    path, reference = videos[name]
    clip = read(path, past_the_end)
    for index, frame in zip(past_the_end, clip):
        np.testing.assert_array_equal(frame, reference[min(index, FRAMES - 1)])


@pytest.mark.parametrize("request_name", REQUESTS)
@pytest.mark.parametrize("name", VIDEOS)
def test_decoding_stops_after_the_last_wanted_frame(videos, decoder_counts, name, request_name):
    """Never more frames than decoding from the start up to the last wanted one, plus frame 0 read before a seek."""
    path, _ = videos[name]
    indices = REQUESTS[request_name]
    read(path, indices)
    assert 0 < decoder_counts["frames"] <= max(indices) + 2


@pytest.mark.parametrize("name", VIDEOS)
def test_only_exact_timestamps_are_seeked(videos, decoder_counts, name):
    """A late window seeks in a constant-rate MP4 and is decoded from the start elsewhere."""
    path, _ = videos[name]
    indices = REQUESTS["late-window-17"]
    read(path, indices)
    if VIDEOS[name][3]:
        assert decoder_counts["seeks"] == 1
        span = max(indices) - min(indices) + 1
        assert decoder_counts["frames"] <= 1 + GOP + 16 + span < max(indices) + 1
    else:
        assert decoder_counts["seeks"] == 0
        assert decoder_counts["frames"] == max(indices) + 1
