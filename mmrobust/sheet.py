"""Contact sheets: a few clips as rows of frames, skeletons drawn on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmrobust.datasets.base import DatasetBundle


def contact_sheet(data: DatasetBundle, out: str | Path, *, split: str = "test", per_class: int = 1,
                  max_rows: int = 18) -> Path:
    """Draw one row per clip (first ``per_class`` clips of each class) to ``out`` (PNG).

    RGB frames are shown with the dataset's skeleton projected on top when the
    dataset can place its joints in the frames; a skeleton-only dataset is
    drawn as joint tracks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmrobust.datasets.synthetic import PARENTS  # NTU topology, shared by ntu60

    part = getattr(data, split)
    labels = part.labels
    rows = [int(i) for c in range(data.num_classes) for i in np.flatnonzero(labels == c)[:per_class]][:max_rows]
    if not rows:
        raise ValueError(f"{data.name} {split} split is empty")
    has_rgb = "rgb" in part.arrays
    frames = part.arrays["rgb"].shape[2] if has_rgb else 8
    fig, axes = plt.subplots(len(rows), frames, figsize=(frames * 1.1, len(rows) * 1.2), squeeze=False)
    for r, index in enumerate(rows):
        clip = part.arrays["rgb"][index] if has_rgb else None
        joints = data.joints_in_frames(split, index) if data.joints_in_frames and has_rgb else None
        for f in range(frames):
            ax = axes[r][f]
            ax.set_axis_off()
            if clip is not None:
                ax.imshow(np.moveaxis(clip[:, f], 0, -1), interpolation="nearest")
                ax.set_xlim(-0.5, clip.shape[-1] - 0.5)
                ax.set_ylim(clip.shape[-2] - 0.5, -0.5)
            if joints is not None and len(PARENTS) == joints.shape[1]:
                for child, parent in enumerate(PARENTS):
                    ax.plot(joints[f, [child, parent], 0] - 0.5, joints[f, [child, parent], 1] - 0.5,
                            color="white", linewidth=0.6, alpha=0.8)
                ax.scatter(joints[f, :, 0] - 0.5, joints[f, :, 1] - 0.5, s=1.5, color="lime")
        axes[r][0].set_title(data.class_names[labels[index]], fontsize=6, loc="left")
    fig.suptitle(f"{data.name} ({split}): one clip per row, frames left to right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
