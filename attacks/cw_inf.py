"""CW∞: PGD on the Carlini–Wagner margin loss, L∞.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
IEEE S&P 2017, https://arxiv.org/abs/1608.04644, introduced the margin loss
max_{j≠y} z_j − z_y on the logits z. As in Madry et al. (2018) and TRADES
(Zhang et al., ICML 2019) practice, "CW∞" here is PGD that maximises this
margin inside the L∞ ball instead of solving CW's penalised L2 problem; the
AMR paper's "CW (optimized by PGD30)" is exactly this.

Distance: L∞.

Arguments:
    steps (int): sign-gradient steps. Default 30.
    rel_step (float): step size as a fraction of ε. Default 0.25 (α = 2/255 at
        ε = 8/255).
    random_start (bool): start from a uniform point of the ε-ball. Default True.
    restarts (int): attempts from fresh random starts. Default 1.
    early_stop (bool): stop a sample at its first misclassified iterate and keep
        it. Default True.

Input: the batch dict, every modality float in [0, 1] — ``rgb`` (B, 3, T, H, W),
``skeleton`` (B, C, T, V, M) — and ``label`` int64 (B,).

Example::

    from mmrobust.attack import build_attack

    cw = build_attack("cw-inf")
    result = cw(model, batch, targets=("skeleton",), eps=8 / 255)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mmrobust.attack import Attack, AttackResult, Eps, check_schedule, margin_loss, sign_gradient_attack
from mmrobust.model import Batch
from mmrobust.registry import register_attack


@dataclass(frozen=True)
class Params:
    steps: int = 30
    rel_step: float = 0.25
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = True

    def __post_init__(self) -> None:
        check_schedule(self.steps, self.rel_step, self.restarts, self.random_start)


@register_attack("cw-inf")
class CWInf(Attack):
    """PGD maximising the CW margin."""

    Params = Params

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, max_batch: int | None = None) -> AttackResult:
        p = self.params
        return sign_gradient_attack(model, batch, targets, eps, steps=p.steps, rel_step=p.rel_step,
                                    loss=margin_loss, random_start=p.random_start, restarts=p.restarts,
                                    early_stop=p.early_stop, clean_logits=clean_logits, generator=generator, max_batch=max_batch)
