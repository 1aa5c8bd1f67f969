"""The contract every backbone meets, so mixers and fusion stay generic."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """An ordered list of named stages between input normalisation and pooling.

    Subclasses fill ``self.stages`` (an ``nn.ModuleDict`` in execution order)
    and set ``self.embedding_dim``; they implement :meth:`normalize`,
    :meth:`pool_map` and, if the embedding is more than a global pool,
    :meth:`embed`.
    """

    stages: nn.ModuleDict
    embedding_dim: int

    @classmethod
    def from_input_shape(cls, shape: tuple[int, ...], **kwargs) -> Backbone:
        """Build for per-sample inputs of ``shape`` (no batch axis)."""
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map the raw [0, 1] input to what the first stage expects."""
        raise NotImplementedError

    def pool_map(self, feature: torch.Tensor) -> torch.Tensor:
        """Global pooling of any stage output to one vector per sample, (B, C)."""
        raise NotImplementedError

    def embed(self, feature: torch.Tensor) -> torch.Tensor:
        """The embedding from the last stage's output, (B, embedding_dim)."""
        return self.pool_map(feature)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for stage in self.stages.values():
            x = stage(x)
        return self.embed(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
