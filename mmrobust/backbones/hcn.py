"""HCN: hierarchical co-occurrence network (Li et al., IJCAI 2018).

Layer by layer as hikvision-research/skelact ``skelact/models/backbones/hcn.py``
with the original paper's setting of 32 frames and a 256-unit fc7: two unshared
streams (joint positions and their frame differences) of

    conv1 1×1 → ReLU; conv2 (3, 1) over time; transpose joints into channels;
    conv3 3×3 → max pool 2; conv4 3×3 → max pool 2 → dropout 0.5,

concatenated, then conv5 3×3 → max pool 2 → ReLU → dropout 0.5 and conv6 3×3 →
max pool 2 → ReLU; the flattened map is max-pooled over persons and fc7 gives
the embedding. At width 1, 25 joints and 32 frames the backbone has 769,472
parameters (784,892 with skelact's 60-class classifier).

Input: skeletons (B, C, T, V, M) in [0, 1]; centred inside on the clip's mean
position of ``center_joint`` of the first person and rescaled by ``input_gain``. Persons are folded into the
batch, so every stage output is (B·M, C, T', W').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.backbones.base import Backbone
from mmrobust.registry import register_backbone


class _TwoStream(nn.Module):
    """Apply a position and a motion layer to the two channel halves."""

    def __init__(self, position: nn.Module, motion: nn.Module):
        super().__init__()
        self.position, self.motion = position, motion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, m = x.chunk(2, dim=1)
        return torch.cat([self.position(p), self.motion(m)], dim=1)


def _conv(in_channels: int, out_channels: int, kernel, padding=0, batch_norm: bool = False) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batch_norm else conv


class _Conv1(nn.Module):
    """Split input into position and frame-difference streams, then conv1 each."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        super().__init__()
        self.position = _conv(in_channels, out_channels, 1, batch_norm=batch_norm)
        self.motion = _conv(in_channels, out_channels, 1, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        motion = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, 1:] - x[:, :, :-1]], dim=2)
        return torch.cat([F.relu(self.position(x)), F.relu(self.motion(motion))], dim=1)


class _Conv2Transpose(nn.Module):
    """conv2 over time, then joints become channels (global co-occurrence)."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, (3, 1), padding=(1, 0), batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).permute(0, 3, 2, 1).contiguous()  # (N, C, T, V) -> (N, V, T, C)


def _conv_pool(in_channels: int, out_channels: int, *tail: nn.Module, batch_norm: bool = False) -> nn.Sequential:
    return nn.Sequential(_conv(in_channels, out_channels, 3, padding=1, batch_norm=batch_norm), nn.MaxPool2d(2), *tail)


@register_backbone("hcn")
class HCN(Backbone):
    """HCN up to fc7, with stages conv1 … conv6.

    Args:
        in_channels: coordinates per joint (3 for x, y, z).
        num_joints: V; becomes conv3's input channels.
        num_frames: T; fixes fc7's input width.
        num_persons: M; persons are max-pooled after conv6.
        width: channel multiplier (1.0 = the published network).
        center_joint: the joint whose mean position of person 0 is the origin.
        input_gain: factor applied after centring; 3 brings the [0, 1] cube
            of a room-sized scene (2.5–5 m per unit) back to about metres, the
            scale of the published network's inputs.
        batch_norm: skelact's BatchNorm variant (after every convolution);
            off in the published network, whose count is given above.
    """

    def __init__(self, in_channels: int = 3, num_joints: int = 25, num_frames: int = 32,
                 num_persons: int = 2, width: float = 1.0, center_joint: int = 1, fc7: int = 256,
                 input_gain: float = 3.0, batch_norm: bool = False):
        super().__init__()

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.num_persons, self.center_joint, self.input_gain = num_persons, center_joint, input_gain
        c1, c2, c3, c4, c5, c6 = c(64), c(32), c(32), c(64), c(128), c(256)
        bn = batch_norm
        self.stages = nn.ModuleDict({
            "conv1": _Conv1(in_channels, c1, bn),
            "conv2": _TwoStream(_Conv2Transpose(c1, c2, bn), _Conv2Transpose(c1, c2, bn)),
            "conv3": _TwoStream(_conv_pool(num_joints, c3, batch_norm=bn), _conv_pool(num_joints, c3, batch_norm=bn)),
            "conv4": _TwoStream(_conv_pool(c3, c4, nn.Dropout(0.5), batch_norm=bn),
                                _conv_pool(c3, c4, nn.Dropout(0.5), batch_norm=bn)),
            "conv5": _conv_pool(2 * c4, c5, nn.ReLU(), nn.Dropout(0.5), batch_norm=bn),
            "conv6": _conv_pool(c5, c6, nn.ReLU(), batch_norm=bn),
        })
        flat = c6 * (num_frames // 16) * (c2 // 16)
        if flat == 0:
            raise ValueError(f"HCN needs at least 16 frames and width ≥ 0.5; got num_frames={num_frames}, width={width}")
        self.fc7 = nn.Linear(flat, c(fc7))
        self.dropout = nn.Dropout(0.5)
        self.embedding_dim = c(fc7)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_input_shape(cls, shape: tuple[int, ...], **kwargs) -> HCN:
        """Build for per-sample inputs of ``shape`` = (C, T, V, M)."""
        if len(shape) != 4:
            raise ValueError(f"hcn expects per-sample input (C, T, V, M), got shape {shape}")
        c, t, v, m = shape
        return cls(in_channels=c, num_frames=t, num_joints=v, num_persons=m, **kwargs)

    example_shape = (3, 32, 25, 2)

    @classmethod
    def example(cls) -> HCN:
        """The ``tiny`` preset's HCN (half width, BatchNorm) for 32 frames of two 25-joint persons."""
        return cls.from_input_shape(cls.example_shape, width=0.5, batch_norm=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, v, m = x.shape
        center = x[:, :, :, self.center_joint, 0].mean(dim=2)  # (B, C)
        x = (x - center[:, :, None, None, None]) * self.input_gain
        # Channels-last: on CPU about 7 % less time for the two-stream model's
        # forward+backward than the default layout.
        return x.permute(0, 4, 1, 2, 3).reshape(b * m, c, t, v).contiguous(memory_format=torch.channels_last)

    def _unfold_persons(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(-1, self.num_persons, flat.shape[-1]).amax(dim=1)

    def pool_map(self, feature: torch.Tensor) -> torch.Tensor:
        return self._unfold_persons(feature.mean(dim=(2, 3)))

    def embed(self, feature: torch.Tensor) -> torch.Tensor:
        flat = self._unfold_persons(feature.flatten(1))
        return F.relu(self.fc7(self.dropout(flat)))
