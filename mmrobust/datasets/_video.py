"""Frame sampling, person cropping and video decoding shared by the real datasets.

The crop follows the compact person box of PYSKL's RGBPoseConv3D pipeline
(Duan et al., "Revisiting Skeleton-based Action Recognition", CVPR 2022;
github.com/kennymckormick/pyskl): the box around every valid joint of the
chosen people over the sampled frames, each half-side enlarged by 25 %, made
square, padded with black where it leaves the frame, and replaced by the whole
frame when the people span less than 10 pixels.

Videos are decoded with PyAV (FFmpeg). Only the frames a clip needs are
converted to RGB, and each is cropped and resized as soon as it is decoded, so
a worker holds one full-resolution frame at a time. :func:`write_video`
encodes the small videos of the datasets' examples and tests.

Frame ``i`` is the ``i``-th frame the decoder outputs, counting from the start
of the stream (frame 0 is the first decoded frame); a timestamp never numbers a
frame unless the container stores exact ones. By default the reader decodes
from the start and stops after the last wanted frame. It seeks only in
ISO base media / QuickTime files (``.mp4``, ``.mov``, ...; FFmpeg's ``mov``
demuxer), whose sample tables store every frame's decoding time and
composition offset as integers of the track's timescale (ISO/IEC 14496-12,
``stts`` and ``ctts`` boxes), and only when the stream has a constant frame
rate: its duration is its frame count times one frame period, to within one
period. After the seek every frame's timestamp must fall on that rate's grid,
the first kept frame must be a keyframe at or before the first wanted one, and
the numbers must then rise by one; otherwise the file is read again from the
start. AVI has no per-frame timestamps at all (a chunk's time is its position
times ``dwScale / dwRate``, Microsoft's AVI RIFF reference), so FFmpeg can only
guess the display times of a stream with B-frames, and misses by frames; Matroska
rounds timestamps to its ``TimestampScale`` (1 ms by default, RFC 9559); and
MPEG transport or program streams may restart their clocks. Those containers,
and any other, are decoded from the start.

This module imports neither torch nor the dataset registry: it runs inside
``prepare`` worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ._plan import SampleError

_log = logging.getLogger(__name__)

#: Half-sides of the person box grow by this fraction.
BOX_ENLARGE = 0.25
#: Below this extent (pixels of the decoded frame) the crop falls back to the whole frame.
MIN_BOX_EXTENT = 10.0
#: First wanted frame beyond which the reader seeks (exact-timestamp containers only).
_SEEK_AFTER_FRAMES = 96
#: A seek aims this many frames before the first wanted one: H.264 reorders at most 16 frames.
_SEEK_MARGIN_FRAMES = 16
#: Non-keyframes tolerated after a seek before the keyframe it landed on (leading frames of an open GOP).
_LEADING_FRAMES_LIMIT = 16
#: Farthest a timestamp may lie from the frame-rate grid, in frames, for it to number a frame.
_GRID_TOLERANCE = 0.25
#: FFmpeg demuxer names of the containers whose timestamps may number frames (ISO BMFF and QuickTime).
EXACT_TIMESTAMP_FORMATS = frozenset({"mov", "mp4"})


def uniform_indices(num_frames: int, num_samples: int) -> np.ndarray:
    """Deterministic uniform sampling: the centre frame of each of ``num_samples`` equal segments.

    Frames repeat when the clip is shorter than ``num_samples``.

    Example:
        >>> uniform_indices(10, 4).tolist()
        [1, 3, 6, 8]
    """
    if num_frames < 1 or num_samples < 1:
        raise ValueError(f"need at least one frame and one sample, got {num_frames} and {num_samples}")
    centres = (np.arange(num_samples, dtype=np.float64) + 0.5) * num_frames / num_samples
    return np.minimum(np.floor(centres).astype(np.int64), num_frames - 1)


def person_box(points: np.ndarray, width: int, height: int) -> tuple[int, int, int]:
    """Square crop box ``(x0, y0, side)`` in pixels around the valid ``points`` (K, 2).

    A point is valid when it is finite, not exactly (0, 0) (the "not detected"
    value of Kinect and OpenPose) and inside the ``width`` x ``height`` frame.
    The box may reach outside the frame; :func:`crop_square` pads with black.
    Without valid points, or when they span less than :data:`MIN_BOX_EXTENT`
    pixels, the box is the whole frame centred in a square.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    valid = (np.isfinite(x) & np.isfinite(y) & ~((x == 0) & (y == 0))
             & (x >= 0) & (x < width) & (y >= 0) & (y < height))
    if valid.any():
        x_min, x_max = x[valid].min(), x[valid].max()
        y_min, y_max = y[valid].min(), y[valid].max()
        extent = max(x_max - x_min, y_max - y_min)
        if extent >= MIN_BOX_EXTENT:
            half = extent / 2.0 * (1.0 + BOX_ENLARGE)
            centre_x, centre_y = (x_min + x_max) / 2.0, (y_min + y_max) / 2.0
            side = max(1, int(np.floor(2.0 * half + 0.5)))
            return int(np.floor(centre_x - side / 2.0 + 0.5)), int(np.floor(centre_y - side / 2.0 + 0.5)), side
    side = max(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_square(frame: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Cut ``box`` out of an (H, W, 3) uint8 frame, black outside it, resized to (size, size, 3).

    Resizing uses FFmpeg's area-averaging scaler, so shrinking a 1080p crop to
    a few dozen pixels does not alias.
    """
    x0, y0, side = box
    height, width = frame.shape[:2]
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + side, width), min(y0 + side, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        canvas[src_y0 - y0:src_y1 - y0, src_x0 - x0:src_x1 - x0] = frame[src_y0:src_y1, src_x0:src_x1]
    if side == size:
        return canvas
    resized = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(
        width=size, height=size, interpolation="AREA")
    return resized.to_ndarray(format="rgb24")


def read_clip(path: str, indices: Sequence[int], box_for_size, size: int) -> np.ndarray:
    """Decode frames ``indices`` of a video, crop each and resize it.

    Args:
        path: the video file.
        indices: 0-based frame numbers, in any order, repeats allowed; frame
            ``i`` is the ``i``-th frame the decoder outputs from the start of
            the stream, whatever the container's timestamps say.
        box_for_size: ``(width, height) -> (x0, y0, side)``, the crop box for
            the decoded frame size (known only once the stream is open).
        size: side of the output frames.

    Returns:
        uint8 (len(indices), size, size, 3). A frame number past the end of the
        video takes the last frame that decoded.

    Raises:
        SampleError: the file does not open or no wanted frame decodes.
    """
    wanted = sorted({int(i) for i in indices})
    try:
        frames = _decode_wanted(path, wanted, box_for_size, size)
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as error:
        raise SampleError("video", path, f"video does not decode ({type(error).__name__}: {error})") from None
    if not frames:
        raise SampleError("video", path, "video does not decode: no frame could be read")
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    known = sorted(frames)
    for position, index in enumerate(indices):
        if index not in frames:
            earlier = [k for k in known if k <= index]
            index = earlier[-1] if earlier else known[0]
        out[position] = frames[index]
    return out


def _decode_wanted(path: str, wanted: list[int], box_for_size, size: int) -> dict[int, np.ndarray]:
    with av.open(path) as container:
        stream = _video_stream(container)
        rate = _exact_frame_rate(container, stream) if wanted[0] > _SEEK_AFTER_FRAMES else None
        if rate is None:
            return _decode_from_start(container, stream, wanted, box_for_size, size)
        found = _decode_after_seek(container, stream, rate, wanted, box_for_size, size)
        if found is not None:
            return found
    with av.open(path) as container:  # a fresh demuxer and decoder, exactly as for any other file
        return _decode_from_start(container, _video_stream(container), wanted, box_for_size, size)


def _video_stream(container):
    if not container.streams.video:
        raise ValueError("the file has no video stream")
    return container.streams.video[0]


def _exact_frame_rate(container, stream) -> Fraction | None:
    """The frame rate by which ``stream``'s timestamps number its frames, or None to count frames instead.

    Only containers in :data:`EXACT_TIMESTAMP_FORMATS` qualify, and only when
    the stream's duration is its frame count times one period of its frame
    rate (FFmpeg's ``r_frame_rate``, which its ``mov`` demuxer takes from the
    ``stts`` box when every frame but the last lasts the same), to within one
    period: a dropped or lengthened frame anywhere would shift every later
    timestamp.
    """
    if not EXACT_TIMESTAMP_FORMATS & set(container.format.name.split(",")):
        return None
    rate, time_base = stream.base_rate, stream.time_base
    if not rate or time_base is None or not stream.frames or not stream.duration:
        return None
    rate = Fraction(rate)
    if abs(stream.duration * Fraction(time_base) * rate - stream.frames) >= 1:
        return None
    return rate


def _decode_from_start(container, stream, wanted, box_for_size, size) -> dict[int, np.ndarray]:
    """Number frames by their position in the decoder's output; exact in any container."""
    return _collect(enumerate(container.decode(stream)), wanted, box_for_size, size)[0]


class _Unusable(Exception):
    """Timestamps do not number the frames after a seek: count frames from the start instead."""


def _decode_after_seek(container, stream, rate: Fraction, wanted, box_for_size, size):
    """Seek to a keyframe shortly before the first wanted frame and number frames by timestamp.

    Frame 0's timestamp is read from the first decoded frame. Returns None when
    the timestamps after the seek do not number the frames one by one.
    """
    time_base = Fraction(stream.time_base)
    first = next(container.decode(stream), None)
    if first is None or first.pts is None:
        return None
    origin = first.pts
    target = origin + int((wanted[0] - _SEEK_MARGIN_FRAMES) / rate / time_base)
    try:
        container.seek(max(target, origin), stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        return None

    def numbered():
        previous = None
        leading = 0
        for frame in container.decode(stream):
            if frame.pts is None:
                raise _Unusable("a frame has no timestamp")
            position = (frame.pts - origin) * time_base * rate
            index = round(position)
            if abs(position - index) > _GRID_TOLERANCE:
                raise _Unusable(f"timestamp {frame.pts} lies off the {rate} fps grid")
            if previous is None:
                if not frame.key_frame:  # may reference frames before the seek point
                    leading += 1
                    if leading > _LEADING_FRAMES_LIMIT:
                        raise _Unusable("the seek reached no keyframe")
                    continue
                if index > wanted[0]:
                    raise _Unusable("the seek landed past the first wanted frame")
            elif index != previous + 1:
                raise _Unusable(f"frame {previous} is followed by timestamp {frame.pts}")
            previous = index
            yield index, frame

    try:
        found, last = _collect(numbered(), wanted, box_for_size, size)
    except _Unusable as reason:
        _log.debug("%s: %s; decoding from the start", container.name, reason)
        return None
    return found if last is not None else None


def _collect(numbered, wanted, box_for_size, size):
    """Crop the wanted frames out of ``(index, frame)`` pairs, up to the last wanted one.

    Returns the frames found and the last pair read (None for an empty stream).
    A video that ends before some wanted frames gives its last frame for them.
    """
    found: dict[int, np.ndarray] = {}
    remaining = set(wanted)
    box = None
    last = None
    for index, frame in numbered:
        if box is None:
            box = box_for_size(frame.width, frame.height)
        if index in remaining:
            found[index] = crop_square(frame.to_ndarray(format="rgb24"), box, size)
            remaining.discard(index)
        last = (index, frame)
        if index >= wanted[-1]:
            break
    if remaining and last is not None and last[0] not in found:
        found[last[0]] = crop_square(last[1].to_ndarray(format="rgb24"), box, size)
    return found, last


def write_video(path: str | Path, frames: np.ndarray, codec: str = "mpeg4", fps: int = 30) -> Path:
    """Encode (T, H, W, 3) uint8 frames with PyAV (mpeg4 or mjpeg; the container follows the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
            stream.codec_context.gop_size = 12
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
