"""PGD: projected gradient descent on the cross-entropy, L∞.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083.
Multimodal form as in the AMR paper (Eq. 7): one forward and one backward per
step give the gradient for every targeted modality, and each modality m steps
by its own α_m = rel_step · ε_m before projection onto its ε_m-ball and [0, 1].

Distance: L∞.

Arguments:
    steps (int): sign-gradient steps. Default 20 (PGD-20 of the protocol).
    rel_step (float): step size as a fraction of ε. Default 0.25, which at
        ε = 8/255 is the usual α = 2/255.
    random_start (bool): start from a uniform point of the ε-ball. Default True.
    restarts (int): attempts from fresh random starts for samples not yet
        fooled. Default 1.
    early_stop (bool): a sample stops at the first step it is misclassified and
        keeps that adversarial input (exact for robust accuracy, cheaper).
        Default True; False reproduces torchattacks.PGD, which keeps only the
        last iterate.
    final_check (bool): with early_stop off, False skips the forward that
        checks the last iterate (``fooled`` then marks only clean errors).
        Default True; adversarial training sets False.

Input: the batch dict, every modality float in [0, 1] — ``rgb`` (B, 3, T, H, W),
``skeleton`` (B, C, T, V, M) — and ``label`` int64 (B,).

Example::

    from mmrobust.attack import build_attack

    pgd = build_attack("pgd", steps=20)
    result = pgd(model, batch, targets=("rgb", "skeleton"), eps={"rgb": 8 / 255, "skeleton": 4 / 255},
                 starts=RandomStarts.numbered(len(batch["label"]), seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mmrobust.attack import (Attack, AttackResult, Eps, RandomStarts, check_schedule, cross_entropy,
                             sign_gradient_attack)
from mmrobust.model import Batch
from mmrobust.registry import register_attack


@dataclass(frozen=True)
class Params:
    steps: int = 20
    rel_step: float = 0.25
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = True
    final_check: bool = True

    def __post_init__(self) -> None:
        check_schedule(self.steps, self.rel_step, self.restarts, self.random_start)
        if not self.final_check and (self.early_stop or self.restarts > 1):
            raise ValueError("final_check=False needs early_stop=False and restarts=1")


@register_attack("pgd")
class PGD(Attack):
    """Iterated sign-gradient ascent on the cross-entropy with projection."""

    Params = Params
    loss = staticmethod(cross_entropy)  # per-sample objective to maximise

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None,
                 starts: RandomStarts | None = None, max_batch: int | None = None) -> AttackResult:
        p = self.params
        return sign_gradient_attack(model, batch, targets, eps, steps=p.steps, rel_step=p.rel_step,
                                    loss=self.loss, random_start=p.random_start, restarts=p.restarts,
                                    early_stop=p.early_stop, final_check=p.final_check,
                                    clean_logits=clean_logits, starts=starts, max_batch=max_batch)
