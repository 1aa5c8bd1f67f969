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
    final_check (bool): as for ``pgd``. Default True.

Input: the batch dict, every modality float in [0, 1] — ``rgb`` (B, 3, T, H, W),
``skeleton`` (B, C, T, V, M) — and ``label`` int64 (B,).

Example::

    from mmrobust.attack import build_attack

    cw = build_attack("cw-inf")
    result = cw(model, batch, targets=("skeleton",), eps=8 / 255)
"""

from __future__ import annotations

from dataclasses import dataclass

from mmrobust.engine import Schedule, SignGradientAttack, margin_loss
from mmrobust.registry import register_attack


@dataclass(frozen=True)
class Params(Schedule):
    """The engine's schedule, with CW-30's step count."""

    steps: int = 30


@register_attack("cw-inf")
class CWInf(SignGradientAttack):
    """PGD maximising the CW margin: the same engine and schedule, another objective."""

    Params = Params
    example = {"steps": 5}
    loss = staticmethod(margin_loss)
