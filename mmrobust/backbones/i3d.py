"""I3D: Inception-v1 inflated to 3-D (Carreira & Zisserman, CVPR 2017).

Layer by layer as piergiaj/pytorch-i3d ``pytorch_i3d.py``: every unit is a
bias-free Conv3d with TensorFlow "same" padding, BatchNorm (eps 1e-3, momentum
0.01) and ReLU; max pools pad "same" too. At width 1 the backbone (without the
classifier) has 12,287,264 parameters. ``width`` scales every channel count,
so the same code runs at paper scale on a GPU and at tiny scale on a CPU.

Input: RGB clips (B, 3, T, H, W) in [0, 1]; normalised inside to [-1, 1] as
the reference does. The embedding is the global average of ``Mixed_5c``
(1024-d at width 1); the reference's avg_pool(2, 7, 7) followed by a 1×1×1
classifier averaged over time is the same linear map for the paper's input.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.backbones.base import Backbone
from mmrobust.memory import run_checkpointed
from mmrobust.registry import register_backbone

Triple = tuple[int, int, int]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (front, back) along one axis."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt, ph, pw = (_same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    if not any((*pt, *ph, *pw)):
        return x  # 1×1×1 convolutions: F.pad would only copy
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    """Conv3d (no bias, same padding) → BatchNorm3d → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1),
                 bn_momentum: float = 0.01):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(_pad_same(x, self.kernel, self.stride))))


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding is exact here: inputs are post-ReLU, hence non-negative.
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1×1×1; 1×1×1→3×3×3; 1×1×1→3×3×3; 3×3×3 max pool→1×1×1.

    Attributes:
        checkpointed: keep only the block's input for the backward and
            recompute the branches there (:func:`mmrobust.memory.checkpoint_blocks`).
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_momentum: float = 0.01):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        unit = functools.partial(Unit3D, bn_momentum=bn_momentum)
        self.b0 = unit(in_channels, b0)
        self.b1a = unit(in_channels, b1a)
        self.b1b = unit(b1a, b1b, (3, 3, 3))
        self.b2a = unit(in_channels, b2a)
        self.b2b = unit(b2a, b2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = unit(in_channels, b3)
        self.out_channels = b0 + b1b + b2b + b3
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            return run_checkpointed(self, self._branches, x)
        return self._branches(x)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# Branch widths (b0, b1a, b1b, b2a, b2b, b3) of each Inception block, at width 1.
_INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


@register_backbone("i3d")
class I3D(Backbone):
    """Inception-v1 I3D up to ``Mixed_5c``, with named stages.

    Args:
        in_channels: input channels (3 for RGB).
        width: channel multiplier (1.0 = the published network).
        bn_momentum: BatchNorm running-statistics momentum; 0.01 as the
            reference, larger for short CPU trainings with few iterations.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, bn_momentum: float = 0.01,
                 stem_pool: bool = True, stem_kernel: int = 7, blocks: tuple[str, ...] | None = None):
        super().__init__()
        unit = functools.partial(Unit3D, bn_momentum=bn_momentum)

        def c(n: int) -> int:
            return max(1, round(n * width))

        stages: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": unit(in_channels, c(64), (stem_kernel,) * 3, (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)) if stem_pool else nn.Identity(),
            "Conv3d_2b_1x1": unit(c(64), c(64)),
            "Conv3d_2c_3x3": unit(c(64), c(192), (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        channels = c(192)
        pools = {"4": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)), "5": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2))}
        for name, widths in _INCEPTION.items():
            if blocks is not None and name not in blocks:
                continue
            group = name[len("Mixed_")]
            if group in pools:  # the max pool opening this group of blocks
                pool_name, kernel, stride = pools.pop(group)
                stages[pool_name] = MaxPool3dSame(kernel, stride)
            block = InceptionModule(channels, tuple(c(w) for w in widths), bn_momentum)
            stages[name] = block
            channels = block.out_channels
        self.stages = nn.ModuleDict(stages)
        self.embedding_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                # He initialisation (fan-out) as torchvision's video models: with
                # PyTorch's default the first 7×7×7 layer starts with a tiny weight
                # norm and BatchNorm turns that into huge early updates.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_input_shape(cls, shape: tuple[int, ...], **kwargs) -> I3D:
        """Build for per-sample inputs of ``shape`` = (C, T, H, W)."""
        if len(shape) != 4:
            raise ValueError(f"i3d expects per-sample input (C, T, H, W), got shape {shape}")
        return cls(in_channels=shape[0], **kwargs)

    example_shape = (3, 8, 32, 32)

    @classmethod
    def example(cls) -> I3D:
        """The ``tiny`` preset's I3D (width 1/8, 3×3×3 stem, one Inception block per group), 8×32×32 clips."""
        return cls.from_input_shape(cls.example_shape, width=0.125, bn_momentum=0.1, stem_kernel=3,
                                    blocks=("Mixed_3c", "Mixed_4f", "Mixed_5c"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: the same numbers up to rounding, and on CPU a quarter
        # less time for an attack's forward+backward at 8×64×64 (mkldnn's
        # preferred layout).
        return (x * 2.0 - 1.0).contiguous(memory_format=torch.channels_last_3d)

    def pool_map(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.mean(dim=(2, 3, 4))
