"""The contract every backbone meets, so mixers and fusion stay generic."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Backbone(nn.Module):
    """An ordered list of named stages between input normalisation and pooling.

    Subclasses fill ``self.stages`` (an ``nn.ModuleDict`` in execution order)
    and set ``self.embedding_dim``; they implement :meth:`from_input_shape`,
    :meth:`normalize`, :meth:`pool_map` and, if the embedding is more than a
    global pool, :meth:`embed`. For the contract tests
    (``tests/test_contract_backbones.py``) they set :attr:`example_shape` and
    implement :meth:`example`.
    """

    stages: nn.ModuleDict
    embedding_dim: int
    #: Per-sample input shape (no batch axis) of the instance :meth:`example` builds.
    example_shape: ClassVar[tuple[int, ...]] = ()

    @classmethod
    def example(cls) -> Backbone:
        """A small instance for :attr:`example_shape`, as the ``tiny`` preset builds it (for tests)."""
        raise NotImplementedError(f"{cls.__name__} defines no example instance")

    @classmethod
    def example_input(cls, batch: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform random input in [0, 1] for :meth:`example`: (batch, *example_shape)."""
        if not cls.example_shape:
            raise NotImplementedError(f"{cls.__name__} defines no example_shape")
        return torch.rand((batch, *cls.example_shape), generator=generator)

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
