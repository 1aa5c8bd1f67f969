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

How the training adversary runs (shared with ``minsim`` and ``amr``):

* it is the registered ``pgd`` attack with ``early_stop=False``, so every
  sample runs all steps and keeps the last iterate, as in Madry et al.
  (``final_check=False``: the training needs the examples, not whether they
  fool the model, so no forward checks them);
* it attacks the model in eval mode (BatchNorm running statistics, no dropout),
  so the perturbation targets the network that will be evaluated and the
  inner loop leaves the running statistics alone; train mode is restored for
  the loss, whose forward uses batch statistics and dropout as usual;
* it differentiates with respect to the inputs only, so the parameters'
  ``.grad`` are untouched;
* its random starts come from the training context's generator, so a run is
  reproducible.

Example::

    mmrobust run --defense at-rs --dataset synthetic
    mmrobust run --defense at-r --dataset synthetic --defense-param steps=5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.attack import Attack, RandomStarts, build_attack
from mmrobust.defense import Defense, TrainContext
from mmrobust.model import Batch, logits_of
from mmrobust.registry import register_defense


@dataclass(frozen=True)
class Params:
    """Training adversary of the AT entries (paper: PGD-10, ε = 8/255, α = 2/255).

    Attributes:
        eps: L∞ radius per target modality, in the [0, 1] input domain.
        rel_step: PGD step as a fraction of ``eps`` (0.25 → α = 2/255).
        steps: PGD iterations.
        random_start: start from a uniform point of the ε-ball.
    """

    eps: float = 8 / 255
    rel_step: float = 0.25
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        check_number("eps", self.eps, 0.0, 1.0, low_open=True)
        check_number("rel_step", self.rel_step, 0.0, low_open=True)
        check_number("steps", self.steps, 1, integer=True)
        check_flag("random_start", self.random_start)


def check_number(name: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = False, integer: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` lies in its allowed range.

    The range is [low, high] (or (low, high] with ``low_open``); ``integer``
    asks for an ``int``. Booleans are never numbers here.
    """
    left = "(" if low_open else "["
    right = ")" if math.isinf(high) else "]"
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} in {left}{low:g}, {high:g}{right}"
    numeric = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value) or not (value > low if low_open else value >= low) or value > high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def training_adversary(params: Params) -> Attack:
    """PGD as Madry trains with it: all steps for every sample, last iterate kept."""
    return build_attack("pgd", steps=params.steps, rel_step=params.rel_step,
                        random_start=params.random_start, early_stop=False, final_check=False)


def adversarial_batch(model: nn.Module, batch: Batch, targets: tuple[str, ...], attack: Attack, eps: float,
                      generator: torch.Generator | None) -> Batch:
    """The batch with ``targets`` replaced by their PGD examples against ``model`` in eval mode.

    Untargeted modalities and the label are the input's own tensors; the model's
    train/eval mode is restored on return.
    """
    labels = batch["label"]
    # The engine never attacks a sample the model gets wrong on clean data (exact
    # for robust accuracy). Madry's inner maximisation perturbs every sample, so
    # hand it "clean logits" that put each sample on its own label.
    every_sample = F.one_hot(labels, int(labels.max()) + 1).float()
    was_training = model.training
    model.eval()
    try:
        result = attack(model, batch, targets, eps, clean_logits=every_sample, starts=_starts(generator, len(labels)))
    finally:
        model.train(was_training)
    return {k: (v.detach() if k in targets else v) for k, v in result.batch.items()}


def _starts(generator: torch.Generator | None, size: int) -> RandomStarts:
    """Random starts for one training batch, seeded from the training context's generator (else the global RNG)."""
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return RandomStarts.numbered(size, seed)


class AdversarialTraining(Defense):
    """Cross-entropy on PGD examples of ``targets`` (set by each registered entry)."""

    Params = Params
    targets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.adversary = training_adversary(self.params)

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        attacked = adversarial_batch(model, batch, self.targets, self.adversary, self.params.eps, ctx.generator)
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
