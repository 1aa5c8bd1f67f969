"""``label-smoothing``: cross-entropy against smoothed labels (Szegedy et al., CVPR 2016, Sec. 7).

The target puts 1 − s on the true class and s / K on every class, so the
loss is ``(1 − s) · CE(f(x), y) + s · mean_k −log p_k(x)``. Smoothing is
known to raise robustness to weak attacks only by flattening the logits,
which a stronger attack undoes: a useful negative control for a benchmark.

Modalities: any. Threat model: none assumed in training.

Example::

    mmrobust run --defense label-smoothing --defense-param smoothing=0.2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.defense import Defense, TrainContext
from mmrobust.model import Batch, logits_of
from mmrobust.params import check_number


@dataclass(frozen=True)
class Params:
    """Attributes:
        smoothing: s, the probability mass spread over all classes.
    """

    smoothing: float = 0.1

    def __post_init__(self) -> None:
        check_number("smoothing", self.smoothing, 0.0, 1.0)


class LabelSmoothing(Defense):
    """Cross-entropy on clean data with smoothed labels; inference unchanged."""

    Params = Params

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        return F.cross_entropy(logits_of(model(batch)), batch["label"], label_smoothing=self.params.smoothing)
