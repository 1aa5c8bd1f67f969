"""FGSM: fast gradient sign method.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples",
ICLR 2015, https://arxiv.org/abs/1412.6572.

Distance: L∞. One step of size ε_m along the sign of the cross-entropy
gradient, on every targeted modality at once, then clamped to [0, 1]; no
random start. On a multimodal batch one forward and one backward give the
gradient for all targets.

Arguments: none (ε and targets are given per call).

Input: the batch dict, every modality float in [0, 1] — ``rgb`` (B, 3, T, H, W),
``skeleton`` (B, C, T, V, M) — and ``label`` int64 (B,).

Example::

    from mmrobust.attack import build_attack

    fgsm = build_attack("fgsm")
    result = fgsm(model, batch, targets=("rgb",), eps=8 / 255)
    result.fooled            # (B,) bool
"""

from __future__ import annotations

from dataclasses import dataclass

from mmrobust.engine import Schedule, SignGradientAttack, cross_entropy
from mmrobust.registry import register_attack


@dataclass(frozen=True)
class Params:
    """FGSM has no parameters."""


@register_attack("fgsm")
class FGSM(SignGradientAttack):
    """One sign-gradient step of size ε on the cross-entropy."""

    Params = Params
    loss = staticmethod(cross_entropy)

    def schedule(self) -> Schedule:
        return Schedule(steps=1, rel_step=1.0, random_start=False)
