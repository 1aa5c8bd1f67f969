"""``synthetic``: procedurally generated RGB + 3-D skeleton action clips.

The embedded default dataset: no download, generated from a seed in seconds,
deterministic, and cached on disk. Each clip is one simulated person with the
NTU RGB+D 25-joint topology (joint order and bone parents of
shahroudy/NTURGB-D), sized by a per-subject body shape, performing one of 18
actions. The skeleton is the 3-D joint track in metres with tracking noise and
occasionally mis-tracked joints; the video is an orthographic rendering of the
same body (limbs, head, an optional held object) on a cluttered background with
random lighting, sensor noise and camera jitter.

The classes are built so that fusion matters:

* 6 actions differ in their 2-D motion and are visible to both modalities;
* 3 pairs share the motion and differ only in the held object (a round warm
  object versus a long cool one): visible to RGB, not to the joints;
* 3 pairs differ only in the sign of the motion in depth (toward or away from
  the camera): visible to the 3-D skeleton, lost in the orthographic rendering.

A perfect unimodal model therefore tops out at 15/18 = 83.3 %; a fused model
can reach 100 %. Subjects (body shapes) are disjoint between train and test.

Skeletons enter the model in [0, 1]: camera-space metres are mapped by
``(p - origin) / SKELETON_SCALE + 0.5`` with one scale for all axes, so an
L∞ budget ε on the skeleton is ε · SKELETON_SCALE metres.

Calibration: on both real datasets of the AMR paper the undefended model's
skeleton stream is the more robust one (Fig. 2, Table 1: ✗S well above ✗R
under FGSM and PGD). Three realistic properties carry that ordering here:
Kinect-like tracking error (:data:`TRACKING`); video with far more values than
the skeleton (8×64×64×3 against 32×25×3 at the ``tiny`` preset), since an L∞
attack's reach grows with the number of values it may move; and a skeleton
cube no larger than the scene (8/255 is 7.8 cm). With 32×32 video, or with
1 cm of jitter, the ordering reversed. ``tests/test_synthetic_properties.py``
checks it on the default recipe.

Example::

    from mmrobust.datasets.base import DataRequest
    from mmrobust.registry import DATASETS
    data = DATASETS.get("synthetic")().load(DataRequest(seed=0))
    batch = data.test.batch(range(8))       # {"rgb", "skeleton", "label"}
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmrobust.datasets.base import (
    RGB,
    SKELETON,
    DataRequest,
    Dataset,
    DatasetBundle,
    Split,
    cache_root,
    describe_modalities,
    fingerprint_arrays,
)
from mmrobust.files import atomic_write
from mmrobust.registry import register_dataset

log = logging.getLogger(__name__)

GENERATOR_VERSION = 4

# NTU RGB+D joint order (0-based) and each joint's parent; joint 0 is the root.
JOINTS = (
    "spine_base", "spine_mid", "neck", "head", "shoulder_left", "elbow_left", "wrist_left",
    "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left",
    "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right", "ankle_right",
    "foot_right", "spine_shoulder", "hand_tip_left", "thumb_left", "hand_tip_right", "thumb_right",
)
PARENTS = (0, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11)

CLASSES = (
    "wave right hand", "raise both arms", "side kick", "squat", "clap", "jumping jacks",
    "hand to head with cup", "hand to head with phone",
    "swing arm with ball", "swing arm with racket",
    "circle hand with ball", "circle hand with racket",
    "step forward", "step back", "lean forward", "lean back",
    "reach forward", "reach back",
)
# Held object per class: 0 none, 1 round and warm, 2 long and cool.
_OBJECT = np.array([0, 0, 0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 0, 0, 0, 0, 0, 0])

# The [0, 1] skeleton cube: the smallest cube (one scale for all axes) that
# holds the people of the scene, from the feet to hands raised over a 1.95 m
# head; a mis-tracked joint outside it is clipped (about 3 coordinates in 10,000).
# An L∞ budget of 8/255 is thus 7.8 cm of joint displacement.
SKELETON_SCALE = 2.5                           # metres per unit of the cube
SKELETON_ORIGIN = np.array([-0.1, 0.05, 3.1])  # camera-space point mapped to 0.5


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything the generated data depends on (part of the cache key)."""

    seed: int = 0
    train_subjects: int = 10
    test_subjects: int = 5
    train_repeats: int = 5   # clips per class and subject
    test_repeats: int = 3
    skeleton_frames: int = 32
    rgb_frames: int = 8
    rgb_size: int = 32
    version: int = GENERATOR_VERSION

    def key(self) -> str:
        return "-".join(f"{v}" for v in asdict(self).values())


# ---------------------------------------------------------------------------
# Bodies and motion
# ---------------------------------------------------------------------------

def _bump(tau: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Smooth 0 → 1 → 0 over [start, start + length], zero elsewhere."""
    u = np.clip((tau - start[:, None]) / length[:, None], 0.0, 1.0)
    return np.sin(np.pi * u) ** 2


def _limb(abduction: np.ndarray, flexion: np.ndarray, side: float) -> np.ndarray:
    """Unit direction of a limb segment from two angles in degrees.

    (0, 0) hangs straight down; abduction swings it out to ``side`` (+1 the
    person's left, which is +x), flexion swings it forward (+z, toward the camera).
    """
    a, f = np.radians(abduction), np.radians(flexion)
    return np.stack([side * np.sin(a) * np.cos(f), -np.cos(a) * np.cos(f), np.sin(f)], axis=-1)


def _controls(labels: np.ndarray, frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame pose controls (N, T) for each clip's action."""
    n = len(labels)
    speed = rng.uniform(0.8, 1.2, n)
    tau = np.clip(np.linspace(0, 1, frames)[None] * speed[:, None] + rng.uniform(-0.05, 0.05, n)[:, None], 0, 1.2)
    start, length = rng.uniform(0.0, 0.2, n), rng.uniform(0.6, 0.8, n)
    bump = _bump(tau, start, length)
    cycles = rng.uniform(1.6, 2.4, n)[:, None]
    osc = np.sin(2 * np.pi * cycles * tau + rng.uniform(0, 2 * np.pi, n)[:, None])
    amp = rng.uniform(0.8, 1.15, n)[:, None]
    zeros = np.zeros((n, frames))

    def idle(scale: float) -> np.ndarray:  # slow random sway of idle limbs, in degrees
        return scale * np.sin(2 * np.pi * rng.uniform(0.2, 0.6, n)[:, None] * tau + rng.uniform(0, 6.3, n)[:, None])

    c = {
        "root": np.zeros((n, frames, 3)), "lean": idle(3.0),
        "l_upper_a": 8 + idle(4), "l_upper_f": idle(5), "l_fore_a": 5 + idle(4), "l_fore_f": 10 + idle(5),
        "r_upper_a": 8 + idle(4), "r_upper_f": idle(5), "r_fore_a": 5 + idle(4), "r_fore_f": 10 + idle(5),
        "l_thigh_a": 3 + zeros, "l_thigh_f": zeros.copy(), "l_shin_a": 3 + zeros, "l_shin_f": zeros.copy(),
        "r_thigh_a": 3 + zeros, "r_thigh_f": zeros.copy(), "r_shin_a": 3 + zeros, "r_shin_f": zeros.copy(),
    }

    def put(name: str, mask: np.ndarray, value: np.ndarray) -> None:
        c[name][mask] = value[mask] if np.ndim(value) else value

    # The sign of depth-only actions: +1 toward the camera, -1 away from it.
    depth_sign = np.where(np.isin(labels, [13, 15, 17]), -1.0, 1.0)[:, None]
    for label in np.unique(labels):
        m = labels == label
        if label == 0:  # wave right hand: forearm up, swinging side to side
            put("r_upper_a", m, 85 + zeros); put("r_upper_f", m, 10 + zeros)
            put("r_fore_a", m, 150 + 25 * amp * osc)
        elif label == 1:  # raise both arms over the head and back
            for s in "lr":
                put(f"{s}_upper_a", m, 10 + 150 * amp * bump); put(f"{s}_fore_a", m, 12 + 160 * amp * bump)
        elif label == 2:  # side kick with the right leg, twice
            kick = 45 * amp * np.abs(osc) * (bump > 0.05)
            put("r_thigh_a", m, 3 + kick); put("r_shin_a", m, 3 + kick)
        elif label == 3:  # squat: knees bend, hips drop, arms forward
            put("l_thigh_f", m, 75 * amp * bump); put("r_thigh_f", m, 75 * amp * bump)
            put("l_shin_f", m, -10 * bump); put("r_shin_f", m, -10 * bump)
            for s in "lr":
                put(f"{s}_upper_f", m, 80 * bump); put(f"{s}_fore_f", m, 80 * bump)
            c["root"][m, :, 1] -= (0.28 * amp * bump)[m]
        elif label == 4:  # clap in front of the chest
            clap = np.abs(osc)
            for s in "lr":
                put(f"{s}_upper_a", m, 20 + zeros); put(f"{s}_upper_f", m, 45 + zeros)
                put(f"{s}_fore_a", m, -70 + 45 * clap); put(f"{s}_fore_f", m, 70 + zeros)
        elif label == 5:  # jumping jacks
            jack = (1 - np.cos(2 * np.pi * cycles * tau)) / 2
            for s in "lr":
                put(f"{s}_upper_a", m, 15 + 140 * amp * jack); put(f"{s}_fore_a", m, 15 + 150 * amp * jack)
                put(f"{s}_thigh_a", m, 3 + 18 * jack); put(f"{s}_shin_a", m, 3 + 18 * jack)
            c["root"][m, :, 1] += (0.06 * np.abs(np.sin(2 * np.pi * cycles * tau)))[m]
        elif label in (6, 7):  # bring the right hand (holding the object) to the head
            put("r_upper_a", m, 25 + zeros); put("r_upper_f", m, 35 * bump)
            put("r_fore_a", m, 5 + 150 * amp * bump); put("r_fore_f", m, 10 + 20 * bump)
        elif label in (8, 9):  # swing the right arm out sideways
            swing = 55 + 45 * amp * osc
            put("r_upper_a", m, swing); put("r_fore_a", m, swing + 15)
        elif label in (10, 11):  # circle the right hand in front of the body
            phase = 2 * np.pi * cycles * tau
            put("r_upper_a", m, 35 + 25 * amp * np.cos(phase)); put("r_upper_f", m, 50 + zeros)
            put("r_fore_a", m, 60 + 35 * amp * np.sin(phase)); put("r_fore_f", m, 60 + zeros)
        elif label in (12, 13):  # step toward / away from the camera
            c["root"][m, :, 2] += (depth_sign * 0.4 * amp * np.clip((tau - start[:, None]) / length[:, None], 0, 1))[m]
            stride = 25 * amp * bump
            put("r_thigh_f", m, depth_sign * stride); put("r_shin_f", m, depth_sign * stride * 0.6)
            put("l_thigh_f", m, -depth_sign * stride * 0.5); put("l_shin_f", m, -depth_sign * stride * 0.5)
        elif label in (14, 15):  # lean the torso toward / away from the camera
            put("lean", m, depth_sign * 40 * amp * bump)
        elif label in (16, 17):  # reach both arms toward / away from the camera
            for s in "lr":
                put(f"{s}_upper_f", m, depth_sign * 80 * amp * bump); put(f"{s}_fore_f", m, depth_sign * 85 * amp * bump)
    return c


def _pose(controls: dict[str, np.ndarray], body: np.ndarray) -> np.ndarray:
    """Forward kinematics: joint positions (N, T, 25, 3) in the body frame, metres.

    ``body`` (N, 10) holds height and proportions. Body frame: y up, x to the
    person's left (the viewer's right), z toward the camera; origin on the floor.
    """
    spine, neck, head, shoulder, upper, fore, hand, hip, thigh, shin = (body[:, i + 1][:, None] for i in range(10))
    n, t = controls["lean"].shape
    joints = np.zeros((n, t, 25, 3))
    h = body[:, 0][:, None]  # (N, 1)

    def vec(x, y, z):
        return np.stack(np.broadcast_arrays(x, y, z), axis=-1)

    base = controls["root"] + vec(0.0, (thigh + shin + 0.04) * h, 0.0)  # hips above the floor
    joints[:, :, 0] = base
    # Torso, leaning about the x axis at the spine base.
    lean = np.radians(controls["lean"])
    up = vec(0.0, np.cos(lean), np.sin(lean))
    joints[:, :, 1] = base + up * (spine * h)[..., None] / 2
    joints[:, :, 20] = base + up * (spine * h)[..., None]
    joints[:, :, 2] = joints[:, :, 20] + up * (neck * h)[..., None]
    joints[:, :, 3] = joints[:, :, 2] + up * (head * h)[..., None]
    lateral = vec(1.0, 0.0, 0.0)
    down_rel = -up
    for side, sign, (sh, el, wr, ha, tip, th) in (("l", 1.0, (4, 5, 6, 7, 21, 22)), ("r", -1.0, (8, 9, 10, 11, 23, 24))):
        joints[:, :, sh] = joints[:, :, 20] + sign * lateral * (shoulder * h)[..., None] + down_rel * (0.02 * h)[..., None]
        upper_dir = _limb(controls[f"{side}_upper_a"], controls[f"{side}_upper_f"], sign)
        fore_dir = _limb(controls[f"{side}_fore_a"], controls[f"{side}_fore_f"], sign)
        joints[:, :, el] = joints[:, :, sh] + upper_dir * (upper * h)[..., None]
        joints[:, :, wr] = joints[:, :, el] + fore_dir * (fore * h)[..., None]
        joints[:, :, ha] = joints[:, :, wr] + fore_dir * (hand * h)[..., None]
        joints[:, :, tip] = joints[:, :, ha] + fore_dir * (0.035 * h)[..., None]
        thumb_dir = fore_dir + vec(0.0, 0.0, 0.8)
        thumb_dir /= np.linalg.norm(thumb_dir, axis=-1, keepdims=True)
        joints[:, :, th] = joints[:, :, wr] + thumb_dir * (0.04 * h)[..., None]
    for side, sign, (hp, kn, an, ft) in (("l", 1.0, (12, 13, 14, 15)), ("r", -1.0, (16, 17, 18, 19))):
        joints[:, :, hp] = base + sign * lateral * (hip * h)[..., None] - vec(0, 1, 0) * (0.03 * h)[..., None]
        thigh_dir = _limb(controls[f"{side}_thigh_a"], controls[f"{side}_thigh_f"], sign)
        shin_dir = _limb(controls[f"{side}_shin_a"], controls[f"{side}_shin_f"], sign)
        joints[:, :, kn] = joints[:, :, hp] + thigh_dir * (thigh * h)[..., None]
        joints[:, :, an] = joints[:, :, kn] + shin_dir * (shin * h)[..., None]
        joints[:, :, ft] = joints[:, :, an] + vec(0, -0.3, 1.0) / np.hypot(0.3, 1.0) * (0.07 * h)[..., None]
    return joints


def _bodies(count: int, rng: np.random.Generator) -> np.ndarray:
    """Body shapes (count, 10): height, then segment lengths as fractions of it."""
    height = rng.uniform(1.5, 1.95, count)
    #                 spine neck  head  shoulder upper fore  hand  hip   thigh shin
    mean = np.array([0.28, 0.05, 0.08, 0.105, 0.17, 0.15, 0.045, 0.06, 0.245, 0.245])
    shape = mean[None] * rng.uniform(0.9, 1.1, (count, 10))
    return np.concatenate([height[:, None], shape], axis=1)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

# Segments drawn: (joint a, joint b, radius in metres, colour slot); drawn in order.
_SEGMENTS = (
    [(a, b, 0.09, 1) for a, b in ((12, 13), (13, 14), (16, 17), (17, 18))]
    + [(14, 15, 0.06, 1), (18, 19, 0.06, 1)]
    + [(0, 1, 0.15, 0), (1, 20, 0.16, 0), (4, 8, 0.09, 0), (12, 16, 0.11, 1)]
    + [(a, b, 0.08, 0) for a, b in ((4, 5), (8, 9))]
    + [(a, b, 0.07, 2) for a, b in ((5, 6), (9, 10))]
    + [(6, 7, 0.06, 2), (10, 11, 0.06, 2), (20, 2, 0.06, 2), (2, 3, 0.12, 2)]
)


def _render(joints_cam: np.ndarray, objects: np.ndarray, rng: np.random.Generator, size: int,
            frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render (N, 3, F, S, S) uint8 frames; return them and the projection (N, F, 3)."""
    n = len(joints_cam)
    f = len(frame_index)
    pts = joints_cam[:, frame_index]  # (N, F, 25, 3)
    # Orthographic camera with per-clip zoom and framing, per-frame shake.
    scale = size / rng.uniform(2.05, 2.35, n)                       # pixels per metre
    centre = size / 2 + rng.uniform(-0.04, 0.04, (n, 2)) * size
    shake = rng.normal(0, 0.2, (n, f, 2))
    proj = np.concatenate([np.repeat(scale[:, None, None], f, 1), centre[:, None] + shake], axis=2)
    u = proj[..., 1:2] + pts[..., 0] * proj[..., 0:1]
    v = proj[..., 2:3] - pts[..., 1] * proj[..., 0:1]

    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    # Background: a dim two-colour gradient, faint static clutter blobs and stripes,
    # fine surface texture.
    c0 = rng.uniform(0.08, 0.45, (n, 3))
    c1 = np.clip(c0 + rng.uniform(-0.12, 0.12, (n, 3)), 0, 1)
    angle = rng.uniform(0, 2 * np.pi, n)
    ramp = ((np.cos(angle)[:, None, None] * (xx - size / 2) + np.sin(angle)[:, None, None] * (yy - size / 2)) / size + 0.5)
    image = c0[:, :, None, None] * (1 - ramp[:, None]) + c1[:, :, None, None] * ramp[:, None]  # (N, 3, S, S)
    for _ in range(3):
        cx, cy = rng.uniform(0, size, (2, n))
        radius = rng.uniform(1.0, 3.5, n)
        colour = rng.uniform(0.05, 0.6, (n, 3))
        blob = 0.6 * np.clip(radius[:, None, None] - np.hypot(xx - cx[:, None, None], yy - cy[:, None, None]), 0, 1)
        image = image * (1 - blob[:, None]) + colour[:, :, None, None] * blob[:, None]
    stripe = (np.sin(xx[None] * rng.uniform(0.3, 1.2, n)[:, None, None] + rng.uniform(0, 6, n)[:, None, None]) > 0.6)
    image = image * (1 - 0.08 * stripe[:, None])
    image = image + 0.06 * rng.normal(0, 1, image.shape)  # static fine texture of the scene's surfaces
    frames = np.repeat(image[:, :, None], f, axis=2)  # (N, 3, F, S, S)

    # Clothes and skin colours are random per clip, never tied to the class.
    # Clothes are brighter than the background, as a lit person in front of a wall.
    colours = np.stack([rng.uniform(0.45, 1.0, (n, 3)), rng.uniform(0.45, 1.0, (n, 3)),
                        np.array([0.95, 0.75, 0.6]) * rng.uniform(0.8, 1.05, (n, 1))], axis=1)  # (N, 3 slots, 3)

    # Compositing runs in float32, in place: it is most of the generation time.
    frames = frames.astype(np.float32)
    scratch = np.empty_like(frames)
    gx, gy = xx.astype(np.float32), yy.astype(np.float32)

    def paint(alpha: np.ndarray, colour: np.ndarray) -> None:  # alpha (N, F, S, S), colour (N, 3)
        np.subtract(colour.astype(np.float32)[:, :, None, None, None], frames, out=scratch)
        np.multiply(scratch, alpha[:, None], out=scratch)
        np.add(frames, scratch, out=frames)

    def capsule(ua, va, ub, vb, radius_px):  # coverage (N, F, S, S) of a round-capped segment
        ua, va, ub, vb = (np.asarray(c, dtype=np.float32)[..., None, None] for c in (ua, va, ub, vb))
        dx, dy = ub - ua, vb - va
        px, py = gx - ua, gy - va
        t = px * dx
        t += py * dy
        t /= np.maximum(dx * dx + dy * dy, np.float32(1e-9))
        np.clip(t, 0, 1, out=t)
        px -= t * dx
        py -= t * dy
        np.multiply(px, px, out=px)
        np.multiply(py, py, out=py)
        dist = np.sqrt(np.add(px, py, out=px), out=px)
        return np.clip(np.float32(0.5) + np.asarray(radius_px, dtype=np.float32)[..., None, None] - dist, 0, 1)

    for a, b, radius, slot in _SEGMENTS:
        r = np.broadcast_to((radius * scale)[:, None], (n, f))
        paint(capsule(u[..., a], v[..., a], u[..., b], v[..., b], r), colours[:, slot])

    # Held object in the right hand: a warm ball or a long cool bar along the forearm.
    hue_jitter = rng.uniform(-0.1, 0.1, (n, 3))
    warm = np.clip(np.array([0.95, 0.35, 0.1]) + hue_jitter, 0, 1)
    cool = np.clip(np.array([0.1, 0.45, 0.95]) + hue_jitter, 0, 1)
    ball = capsule(u[..., 11], v[..., 11], u[..., 11], v[..., 11], np.broadcast_to((0.13 * scale)[:, None], (n, f)))
    direction_u, direction_v = u[..., 11] - u[..., 10], v[..., 11] - v[..., 10]
    norm = np.maximum(np.hypot(direction_u, direction_v), 1e-6)
    bar_end_u = u[..., 11] + direction_u / norm * 0.4 * scale[:, None]
    bar_end_v = v[..., 11] + direction_v / norm * 0.4 * scale[:, None]
    bar = capsule(u[..., 11], v[..., 11], bar_end_u, bar_end_v, np.broadcast_to((0.05 * scale)[:, None], (n, f)))
    paint(ball * (objects == 1)[:, None, None, None], warm)
    paint(bar * (objects == 2)[:, None, None, None], cool)

    # Lighting: per-clip gain and colour cast, per-frame flicker, sensor noise.
    gain = rng.uniform(0.8, 1.2, (n, 1, 1, 1, 1)) * rng.uniform(0.93, 1.07, (n, 3, 1, 1, 1))
    flicker = rng.uniform(0.97, 1.03, (n, 1, f, 1, 1))
    frames *= (gain * flicker).astype(np.float32)
    frames += np.float32(0.01) * rng.standard_normal(frames.shape, dtype=np.float32)  # sensor noise
    return np.clip(np.round(frames * 255), 0, 255).astype(np.uint8), proj


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------

def _yaw(joints: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x, y, z = joints[..., 0], joints[..., 1], joints[..., 2]
    return np.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


# Depth-sensor tracking error, in metres: slowly drifting jitter whose size grows
# from the torso to the extremities, as for Kinect v2 skeletons (hands, hand tips,
# thumbs and feet are the least reliable), plus joints mis-tracked for a frame.
TRACKING = {"torso": 0.02, "limbs": 0.04, "extremities": 0.08, "lost_rate": 0.05, "lost_error": 0.15}
_EXTREMITIES = (7, 11, 15, 19, 21, 22, 23, 24)
_TORSO = (0, 1, 2, 3, 20, 4, 8, 12, 16)


def _tracking_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Temporally correlated jitter (N, T, V, 3): white noise smoothed over ~3 frames."""
    sigma = np.full(shape[2], TRACKING["limbs"])
    sigma[list(_TORSO)] = TRACKING["torso"]
    sigma[list(_EXTREMITIES)] = TRACKING["extremities"]
    white = rng.normal(0, 1, (shape[0], shape[1] + 2, *shape[2:]))
    smooth = (white[:, :-2] + white[:, 1:-1] + white[:, 2:]) / np.sqrt(3)
    return smooth * sigma[None, None, :, None]


def _generate_split(spec: SyntheticSpec, subject_ids: np.ndarray, repeats: int, bodies: np.ndarray,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    k = len(CLASSES)
    labels = np.tile(np.repeat(np.arange(k), repeats), len(subject_ids))
    subjects = np.repeat(subject_ids, k * repeats)
    n = len(labels)
    controls = _controls(labels, spec.skeleton_frames, rng)
    body = _pose(controls, bodies[subjects])
    # Stand somewhere in front of the camera, turned slightly; camera space has
    # z = depth from the camera, so the body's forward (+z) becomes -z.
    body = _yaw(body, np.radians(rng.uniform(-8, 8, n)))
    offset = np.stack([rng.uniform(-0.25, 0.25, n), rng.uniform(-0.95, -0.85, n), rng.uniform(2.9, 3.5, n)], axis=1)
    cam = body * np.array([1.0, 1.0, -1.0]) + offset[:, None, None]
    # Tracking: jitter on every joint, and now and then a joint snaps to a wrong
    # guess near its parent for a frame (as depth trackers do under occlusion).
    tracked = cam + _tracking_noise(cam.shape, rng)
    lost = rng.random(cam.shape[:3]) < TRACKING["lost_rate"]
    guess = tracked[:, :, PARENTS] + rng.normal(0, TRACKING["lost_error"], cam.shape)
    tracked = np.where(lost[..., None], guess, tracked)
    skeleton = (tracked - SKELETON_ORIGIN) / SKELETON_SCALE + 0.5
    skeleton = np.clip(skeleton, 0, 1).astype(np.float32).transpose(0, 3, 1, 2)[..., None]  # (N, 3, T, V, 1)

    frame_index = np.linspace(0, spec.skeleton_frames - 1, spec.rgb_frames * 2 + 1)[1::2].round().astype(int)
    rgb, proj = [], []
    for start in range(0, n, 128):  # bounded memory while rendering
        part = slice(start, start + 128)
        frames, projection = _render(cam[part], _OBJECT[labels[part]], rng, spec.rgb_size, frame_index)
        rgb.append(frames)
        proj.append(projection)
    return {
        "rgb": np.concatenate(rgb), "skeleton": skeleton, "label": labels.astype(np.int64),
        "subject": subjects.astype(np.int64), "projection": np.concatenate(proj).astype(np.float32),
        "frame_index": np.broadcast_to(frame_index, (n, len(frame_index))).astype(np.int64),
    }


def generate(spec: SyntheticSpec) -> dict[str, dict[str, np.ndarray]]:
    """Generate both splits from ``spec``; pure function of the spec."""
    rng = np.random.default_rng([spec.seed, spec.version])
    subjects = spec.train_subjects + spec.test_subjects
    bodies = _bodies(subjects, rng)
    train_ids = np.arange(spec.train_subjects)
    test_ids = np.arange(spec.train_subjects, subjects)
    return {
        "train": _generate_split(spec, train_ids, spec.train_repeats, bodies, rng),
        "test": _generate_split(spec, test_ids, spec.test_repeats, bodies, rng),
    }


def _cache_path(spec: SyntheticSpec, cache_dir: str | None) -> Path:
    return cache_root(cache_dir) / "synthetic" / f"synthetic-{spec.key()}.npz"


def _save(path: Path, splits: dict[str, dict[str, np.ndarray]], meta: dict) -> None:
    flat = {f"{split}/{name}": array for split, arrays in splits.items() for name, array in arrays.items()}
    flat["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda handle: np.savez(handle, **flat))


def _load_cached(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict] | None:
    try:
        with np.load(path) as archive:
            splits: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
            for key in archive.files:
                if key != "meta":
                    split, name = key.split("/")
                    splits[split][name] = archive[key]
            meta = json.loads(archive["meta"].tobytes().decode())
        return splits, meta
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged cache is regenerated, never trusted
        log.warning("ignoring unreadable synthetic cache %s (%s); regenerating", path, error)
        return None


@register_dataset("synthetic")
class Synthetic(Dataset):
    """The embedded synthetic dataset: RGB video and 3-D skeletons of 18 actions, generated from a seed."""

    modalities = (RGB, SKELETON)

    def load(self, request: DataRequest) -> DatasetBundle:
        """The embedded synthetic dataset at the request's input sizes.

        Generated on first use (seconds) and cached under ``request.cache_dir``
        (default :func:`mmrobust.datasets.base.cache_root`); ``request.split`` must be None or
        "subject" (the only split: disjoint body shapes).
        """
        if request.split not in (None, "subject"):
            raise ValueError(f"synthetic has one split, 'subject'; got {request.split!r}")
        spec = SyntheticSpec(seed=request.seed, skeleton_frames=request.skeleton_frames,
                             rgb_frames=request.rgb_frames, rgb_size=request.rgb_size)
        if spec.skeleton_frames < spec.rgb_frames:
            raise ValueError("synthetic needs skeleton_frames ≥ rgb_frames (video frames are a subset)")
        path = _cache_path(spec, request.cache_dir)
        cached = _load_cached(path)
        if cached is None:
            log.info("generating synthetic dataset -> %s", path)
            splits = generate(spec)
            fingerprint = fingerprint_arrays({f"{s}/{k}": v for s, a in splits.items() for k, v in a.items()
                                              if k in ("rgb", "skeleton", "label")})
            meta = {"spec": asdict(spec), "fingerprint": fingerprint}
            _save(path, splits, meta)
        else:
            splits, meta = cached

        def split(arrays: dict[str, np.ndarray]) -> Split:
            return Split({"rgb": arrays["rgb"], "skeleton": arrays["skeleton"], "label": arrays["label"]})

        def joints_in_frames(split_name: str, index: int) -> np.ndarray:
            arrays = splits[split_name]
            frames = arrays["frame_index"][index]
            joints = arrays["skeleton"][index, :, frames, :, 0]  # (F, 3, V) after fancy indexing
            metres = (np.moveaxis(joints, 1, 2) - 0.5) * SKELETON_SCALE + SKELETON_ORIGIN  # (F, V, 3)
            scale, cx, cy = (arrays["projection"][index][:, i:i + 1] for i in range(3))
            return np.stack([cx + metres[..., 0] * scale, cy - metres[..., 1] * scale], axis=-1)

        return DatasetBundle(
            name="synthetic", train=split(splits["train"]), test=split(splits["test"]),
            num_classes=len(CLASSES), class_names=CLASSES, skeleton_scale=SKELETON_SCALE, skeleton_unit="m",
            fingerprint=meta["fingerprint"], default_epochs=8, split="subject",
            info={"cache": str(path), "spec": meta["spec"]},
            joints_in_frames=joints_in_frames,
            modality_info=describe_modalities(self.modalities, ("rgb", "skeleton")),
            train_subjects=np.asarray(splits["train"]["subject"]),
        )
