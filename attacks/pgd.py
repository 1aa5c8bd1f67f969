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

from dataclasses import dataclass

from mmrobust.engine import Schedule, SignGradientAttack, cross_entropy
from mmrobust.registry import register_attack


@dataclass(frozen=True)
class Params(Schedule):
    """The engine's schedule, with PGD-20's step count."""

    steps: int = 20


@register_attack("pgd")
class PGD(SignGradientAttack):
    """Iterated sign-gradient ascent on the cross-entropy with projection."""

    Params = Params
    example = {"steps": 5, "restarts": 2}
    loss = staticmethod(cross_entropy)
