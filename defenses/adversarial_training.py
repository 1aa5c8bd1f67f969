"""``at-r``, ``at-s``, ``at-rs``: Madry adversarial training on RGB, skeleton or both.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018; multimodal form as in the AMR
paper (Eq. 5–7). The training objective is the cross-entropy on the adversarial
batch only::

    min_θ  E_(x, y) [ max_{δ_m ∈ B_ε, m ∈ targets}  CE(f_θ(x + δ), y) ]

with the inner maximum approximated by PGD-10 (ε = 8/255, α = ε/4 = 2/255,
random start) on the entry's target modalities; the other modalities stay
clean. One class, three entries: ``at-r`` perturbs ``rgb``, ``at-s``
``skeleton``, ``at-rs`` both. A run must have every target modality.

Threat model: the L∞ attacker of the protocol (white-box, ε = 8/255 per
modality in the [0, 1] input domain). Robustness is expected on the trained
targets; a modality never perturbed in training is left as weak as ``none``.

The training adversary is core's :class:`mmrobust.defense.TrainingAdversary`
(every sample perturbed for all steps, last iterate kept, examples generated
in eval mode so the perturbation targets the network that will be evaluated;
train mode is restored for the loss, whose forward uses batch statistics and
dropout as usual), and its parameters are :class:`~mmrobust.defense.AdversaryParams`.

Example::

    mmrobust run --defense at-rs --dataset synthetic
    mmrobust run --defense at-r --dataset synthetic --defense-param steps=5
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.defense import AdversaryParams, Defense, TrainContext, TrainingAdversary
from mmrobust.model import Batch, logits_of
from mmrobust.registry import register_defense


class AdversarialTraining(Defense):
    """Cross-entropy on PGD examples of ``targets`` (set by each registered entry)."""

    Params = AdversaryParams
    targets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: AdversaryParams | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.adversary = TrainingAdversary(self.params)

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        attacked = self.adversary(model, batch, self.targets, ctx.generator)
        return F.cross_entropy(logits_of(model(attacked)), batch["label"])


@register_defense("at-r")
class RGBAdversarialTraining(AdversarialTraining):
    """Adversarial training with PGD examples of the RGB video only (paper: AT with ✗R)."""

    targets = requires = ("rgb",)


@register_defense("at-s")
class SkeletonAdversarialTraining(AdversarialTraining):
    """Adversarial training with PGD examples of the skeleton only (paper: AT with ✗S)."""

    targets = requires = ("skeleton",)


@register_defense("at-rs")
class MultimodalAdversarialTraining(AdversarialTraining):
    """Adversarial training with joint PGD examples of RGB and skeleton (paper: AT with ✗RS)."""

    targets = requires = ("rgb", "skeleton")
