"""``pgd-dlr``: PGD on the difference-of-logits-ratio loss, L∞.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020, Eq. 4: with z the logits
sorted so that z_π1 ≥ z_π2 ≥ …,

    DLR(x, y) = − (z_y − max_{i≠y} z_i) / (z_π1 − z_π3)

which, unlike the cross-entropy, does not change when the logits are scaled,
so a defense that only inflates its logits does not hide from it. Needs at
least three classes. The steps are the native engine's (sign of the gradient,
one α per modality, projection), so only the loss is new here.

Arguments: those of ``pgd`` (steps, rel_step, random_start, restarts,
early_stop, final_check); 20 steps by default.

Example::

    mmrobust eval --run-dir runs/synthetic/none-tiny-s0 --attacks pgd-dlr
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrobust.engine import Schedule, SignGradientAttack


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR loss (B,); positive means misclassified."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return (others - true) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


@dataclass(frozen=True)
class Params(Schedule):
    steps: int = 20


class PGDDLR(SignGradientAttack):
    """Iterated sign-gradient ascent on the DLR loss with projection."""

    Params = Params
    example = {"steps": 5}
    loss = staticmethod(dlr_loss)
