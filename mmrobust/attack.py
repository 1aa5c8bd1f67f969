"""Attacks: the common contract and ``build_attack``.

An attack perturbs the modalities named in ``targets``, each inside its own L∞
ball of radius ε_m and inside [0, 1], and hands every other modality back as
the very same tensor object. Its result says, per sample, whether the model is
fooled; a sample the model already gets wrong on clean data counts as fooled
and is never attacked. A sample's random starts depend on (seed, sample id,
restart) alone (:class:`RandomStarts`), so outcomes do not depend on batching.

An attack is a class registered with ``@register_attack`` that owns a frozen
``Params`` dataclass and implements :meth:`Attack.__call__`. FGSM, PGD and CW∞
are settings of the native engine, :class:`mmrobust.engine.SignGradientAttack`.

Example::

    from mmrobust.attack import build_attack

    pgd = build_attack("pgd", steps=20)
    result = pgd(model, batch, targets=("rgb", "skeleton"), eps=8 / 255)
    robust_accuracy = 1.0 - result.fooled.float().mean().item()
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mmrobust.model import Batch, logits_of
from mmrobust.params import build_params
from mmrobust.registry import ATTACKS

LABEL = "label"

Eps = float | Mapping[str, float]


@dataclass
class AttackResult:
    """What an attack hands back.

    Attributes:
        batch: the adversarial batch; untargeted modalities and the label are the
            input's own tensor objects.
        fooled: (B,) bool, the model's prediction on ``batch`` differs from the
            label (true for every sample misclassified clean).
        gradient_passes: sample-level forward+backward passes spent (the sum
            over steps of the number of samples attacked at that step).
        forward_passes: sample-level forward-only passes spent (the clean
            forward when the caller gave no clean logits, the final check).
        no_gradient: (B,) bool or None: the sample's input gradient at the
            attack's start was zero or not finite on some targeted modality
            (None: the attack does not say; False for samples not attacked).
        flat_loss: (B,) bool or None: the sample was attacked, never fooled,
            and its loss never rose above the start's (the attack made no
            progress; an indicator of attack failure, Pintor et al. 2022).
    """

    batch: Batch
    fooled: torch.Tensor
    gradient_passes: int = 0
    forward_passes: int = 0
    no_gradient: torch.Tensor | None = None
    flat_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class RandomStarts:
    """Where each sample's random starts come from: (seed, sample id, restart), nothing else.

    A sample's start does not depend on the batch it shares, its position, the
    pool width or the chunking, so outcomes are the same at any batch size.
    ``sample_ids`` are the samples' indices in the dataset (the protocol's
    case) or any other stable ids.
    """

    seed: int
    sample_ids: torch.Tensor  # (B,) int64

    @classmethod
    def numbered(cls, size: int, seed: int = 0) -> RandomStarts:
        """Ids 0 … size−1: for a batch that is not part of a larger dataset."""
        return cls(seed, torch.arange(size))

    def seed_of(self, position: int, restart: int) -> int:
        """The seed of the start of the sample at ``position`` of the batch in ``restart``."""
        key = f"{self.seed}/{int(self.sample_ids[position])}/{restart}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def draw(self, position: int, restart: int, like: Mapping[str, torch.Tensor],
             eps: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Uniform noise in [−ε_m, ε_m] shaped like one sample of each modality in ``like``.

        Drawn on the CPU in sorted modality order, so any device gets the same starts.
        """
        generator = torch.Generator().manual_seed(self.seed_of(position, restart))
        return {m: torch.empty(like[m].shape, dtype=like[m].dtype).uniform_(-eps[m], eps[m], generator=generator)
                for m in sorted(like)}


@dataclass(frozen=True)
class NoParams:
    """An attack without parameters."""


class Attack:
    """Base class of every attack: a callable built from a frozen ``Params``.

    Subclasses set ``Params`` and implement :meth:`__call__`.
    """

    Params: ClassVar[type] = NoParams
    #: Parameters of a quick instance (few steps), which the contract tests run.
    example: ClassVar[Mapping[str, Any]] = {}
    #: True for an attack that only queries the model's outputs (a black-box attack); protocols run
    #: those after the gradient attacks and flag it when they break more.
    gradient_free: ClassVar[bool] = False

    def __init__(self, params: Any = None, name: str = "") -> None:
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(f"{type(self).__name__} takes a {self.Params.__qualname__}, "
                            f"got {type(self.params).__name__}")
        self.name = name

    def check_classes(self, classes: int) -> None:
        """Raise ValueError if this attack cannot run on a model of ``classes`` classes (default: it can)."""

    @classmethod
    def create(cls, name: str, values: Mapping[str, Any]) -> Attack:
        """The attack registered as ``name`` with parameters ``values``, each checked (:func:`build_params`)."""
        return cls(build_params(cls.Params, values, owner=f"attack {name!r}"), name=name)

    def __call__(
        self,
        model: nn.Module,
        batch: Batch,
        targets: Sequence[str],
        eps: Eps,
        *,
        clean_logits: torch.Tensor | None = None,
        starts: RandomStarts | None = None,
        max_batch: int | None = None,
    ) -> AttackResult:
        """Attack ``targets`` of ``batch`` within ``eps``.

        Args:
            model: any module taking the batch dict and returning logits or a
                :class:`~mmrobust.model.ModelOutput`; its train/eval mode is left
                as the caller set it.
            batch: modality tensors in [0, 1] plus ``label``.
            targets: the modalities to perturb (non-empty).
            eps: one L∞ radius for every target, or one per target.
            clean_logits: (B, K) logits of the clean batch, if already computed.
            starts: source of each sample's random starts (default: seed 0,
                ids 0 … B−1).
            max_batch: most samples run through the model at once (an
                execution setting; results do not depend on it).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


# -- checking what the caller hands in -----------------------------------------

def modalities_of(batch: Mapping[str, Any]) -> tuple[str, ...]:
    """The modality names of a batch: its floating-point tensors except the label."""
    return tuple(k for k, v in batch.items()
                 if k != LABEL and isinstance(v, torch.Tensor) and v.is_floating_point())


def resolve_targets(batch: Mapping[str, Any], targets: Sequence[str] | str) -> tuple[str, ...]:
    """Validate ``targets`` against the batch; returns them in batch order, once each.

    Raises:
        ValueError: empty, or a name that is not a modality of the batch.
    """
    available = modalities_of(batch)
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError(f"targets must name at least one modality; available: {', '.join(available)}")
    for target in targets:
        if target not in available:
            raise ValueError(f"target {target!r} is not a modality of the batch; available: {', '.join(available)}")
    return tuple(m for m in available if m in targets)


def _check_radius(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ValueError(f"{where} must be in (0, 1] (inputs live in [0, 1]), got {value!r}")
    return value


def resolve_eps(eps: Eps, targets: Sequence[str], batch: Mapping[str, Any] | None = None) -> dict[str, float]:
    """One L∞ radius per target, from a number or a modality → number mapping.

    Raises:
        ValueError: a radius outside (0, 1], a target without a radius, or a
            mapping key that is not a modality of the batch.
    """
    if isinstance(eps, Mapping):
        if batch is not None:
            available = modalities_of(batch)
            for key in eps:
                if key not in available:
                    raise ValueError(f"eps names {key!r}, which is not a modality of the batch; "
                                     f"available: {', '.join(available)}")
        missing = [m for m in targets if m not in eps]
        if missing:
            raise ValueError(f"eps has no radius for target {missing[0]!r} (eps given for: {', '.join(eps)})")
        return {m: _check_radius(eps[m], f"eps[{m!r}]") for m in targets}
    radius = _check_radius(eps, "eps")
    return {m: radius for m in targets}


def check_starts(starts: RandomStarts, size: int) -> None:
    """Raises ValueError unless ``starts`` has one sample id per sample of the batch."""
    if starts.sample_ids.dim() != 1 or starts.sample_ids.shape[0] != size:
        raise ValueError(f"starts has {tuple(starts.sample_ids.shape)} sample ids for a batch of {size}")


def labels_of(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's labels, checked to be an integer tensor (B,)."""
    labels = batch.get(LABEL)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        found = "nothing" if labels is None else (
            f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise ValueError(f"batch[{LABEL!r}] must be an integer tensor (B,), found {found}")
    return labels


def clean_fooled(model: nn.Module, batch: Batch, clean_logits: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Which samples the model gets wrong on clean data, and the forward passes spent."""
    labels = labels_of(batch)
    passes = 0
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = logits_of(model(batch))
        passes = labels.shape[0]
    if clean_logits.dim() != 2 or clean_logits.shape[0] != labels.shape[0]:
        raise ValueError(f"clean_logits must be (B, K) with B = {labels.shape[0]}, got {tuple(clean_logits.shape)}")
    return clean_logits.detach().argmax(dim=1) != labels, passes


def take(batch: Mapping[str, Any], index: torch.Tensor | slice) -> Batch:
    """The samples ``index`` (indices, a mask or a slice) of every per-sample tensor (others as they are)."""
    size = labels_of(batch).shape[0]
    return {k: v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in batch.items()}


# -- building attacks by name --------------------------------------------------

def build_attack(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` (or resolved by a name family such as ``ta:<Class>``).

    Example::

        build_attack("pgd", steps=10, restarts=2)
        build_attack("ta:PGD", steps=10, alpha=2 / 255)

    Raises:
        ValueError: unknown attack (with suggestions), unknown parameter,
            wrong type or value out of range (named).
    """
    return ATTACKS.get(name).create(name, params)
