"""Attacks: the common contract, the native sign-gradient engine, ``build_attack``.

An attack perturbs the modalities named in ``targets``, each inside its own L∞
ball of radius ε_m and inside [0, 1], and hands every other modality back as
the very same tensor object. Its result says, per sample, whether the model is
fooled; a sample the model already gets wrong on clean data counts as fooled
and is never attacked.

FGSM, PGD and CW∞ all run through :func:`sign_gradient_attack`: per step one
forward and one backward on the samples still in play give the gradient with
respect to every targeted modality at once, and each modality moves by its own
step along the sign of its gradient before being projected back (Eq. 7 of the
AMR paper, the multimodal form of PGD)::

    x'_{m,t+1} = Π_{B_εm(x_m) ∩ [0,1]} ( x'_{m,t} + α_m · sign ∇_{x'_m} loss(f(x'_t), y) )

Any ``torchattacks`` attack runs through the adapter registered as
``torchattacks``; ``build_attack("ta:APGD", ...)`` is the short form.

Example::

    from mmrobust.attack import build_attack

    pgd = build_attack("pgd", steps=20)
    result = pgd(model, batch, targets=("rgb", "skeleton"), eps=8 / 255)
    robust_accuracy = 1.0 - result.fooled.float().mean().item()
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.model import Batch, logits_of
from mmrobust.registry import ATTACKS

LABEL = "label"
TORCHATTACKS_PREFIX = "ta:"
TORCHATTACKS_ADAPTER = "torchattacks"  # registry name of the adapter in attacks/torchattacks_adapter.py

Eps = float | Mapping[str, float]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> per-sample loss (B,)


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
    """

    batch: Batch
    fooled: torch.Tensor
    gradient_passes: int = 0
    forward_passes: int = 0


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

    def __init__(self, params: Any = None, name: str = "") -> None:
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(f"{type(self).__name__} takes a {self.Params.__qualname__}, "
                            f"got {type(self.params).__name__}")
        self.name = name

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


# -- losses --------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (B,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample Carlini–Wagner margin max_{j≠y} z_j − z_y (B,); positive means misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


# -- the native engine -----------------------------------------------------------

def sign_gradient_attack(
    model: nn.Module,
    batch: Batch,
    targets: Sequence[str],
    eps: Eps,
    *,
    steps: int,
    rel_step: float,
    loss: Loss = cross_entropy,
    random_start: bool = False,
    restarts: int = 1,
    early_stop: bool = True,
    final_check: bool = True,
    clean_logits: torch.Tensor | None = None,
    starts: RandomStarts | None = None,
    max_batch: int | None = None,
) -> AttackResult:
    """Multimodal iterated sign-gradient ascent (FGSM, PGD, CW∞ are settings of it).

    Samples move through a *pool* of at most ``max_batch`` samples, each at its
    own step: a sample that is fooled (early stop) or finishes its steps leaves
    and the next one enters, so every forward/backward runs at full width
    however early the samples stop. A sample's trajectory does not depend on
    the pool it shares (the loss is summed, the model is in eval mode).

    Args:
        model: module taking the batch dict; its mode is left as it is.
        batch: modality tensors in [0, 1] plus ``label``.
        targets: modalities to perturb.
        eps: L∞ radius, one for all targets or one per target.
        steps: sign-gradient steps per restart.
        rel_step: step size as a fraction of each modality's ε (α_m = rel_step·ε_m).
        loss: per-sample loss to maximise, ``loss(logits, labels) -> (B,)``.
        random_start: start from a uniform point of the ε-ball (clamped to [0, 1]).
        restarts: attempts; a sample still not fooled is attacked again from a
            new random start.
        early_stop: a sample leaves the attack at the first step its current
            adversarial input is misclassified, keeping exactly that input.
            Off: every clean-correct sample runs all steps and only the last
            iterate counts (as torchattacks does).
        final_check: with ``early_stop`` off and one restart, False skips the
            forward that checks each final iterate, and ``fooled`` then marks
            only the samples misclassified clean. For adversarial training,
            which needs the examples, not the outcome.
        clean_logits: (B, K) clean logits if the caller has them.
        starts: source of each sample's random start per restart (default:
            seed 0, ids 0 … B−1); a start depends on its sample alone.
        max_batch: pool width (default: the whole batch).
    """
    targets = resolve_targets(batch, targets)
    radius = resolve_eps(eps, targets, batch)
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    if not final_check and (early_stop or restarts > 1):
        raise ValueError("final_check=False needs early_stop=False and one restart: "
                         "both decide from the check it skips")
    fooled, forward_passes = clean_fooled(model, batch, clean_logits)
    size = fooled.shape[0]
    width = size if max_batch is None else max(1, min(max_batch, size))
    device = fooled.device
    adversarial = {m: batch[m].clone() for m in targets}
    starts = starts if starts is not None else RandomStarts.numbered(size)
    check_starts(starts, size)
    one_sample = {m: batch[m][0] for m in targets} if size else {}

    def start_point(index: torch.Tensor, restart: int) -> dict[str, torch.Tensor]:
        clean = {m: batch[m][index] for m in targets}
        if not random_start:
            return clean
        noise = [starts.draw(i, restart, one_sample, radius) for i in index.tolist()]
        return {m: torch.clamp(clean[m] + torch.stack([n[m] for n in noise]).to(device), min=0, max=1)
                for m in targets}

    queue = (~fooled).nonzero().squeeze(1)  # samples waiting, in batch order
    restart_of = torch.zeros(size, dtype=torch.long, device=device)
    step_of = torch.zeros(size, dtype=torch.long, device=device)
    pool = queue[:0]
    x = {m: batch[m][:0] for m in targets}
    gradient_passes = 0
    sub = None  # the batch at the pool's samples; rebuilt only when the pool changes

    while pool.numel() or queue.numel():
        if pool.numel() < width and queue.numel():
            sub = None
            entering, queue = queue[:width - pool.numel()], queue[width - pool.numel():]
            step_of[entering] = 0
            fresh = start_point(entering, 0) if not bool((restart_of[entering] > 0).any()) else None
            if fresh is None:  # restarted samples: each from the start of its own restart
                fresh = {m: torch.empty_like(batch[m][entering]) for m in targets}
                for r in restart_of[entering].unique().tolist():
                    chosen = restart_of[entering] == r
                    part = start_point(entering[chosen], r)
                    for m in targets:
                        fresh[m][chosen] = part[m]
            pool = torch.cat([pool, entering])
            x = {m: torch.cat([x[m], fresh[m]]) for m in targets}
        if sub is None:
            sub = take(batch, pool)
        labels = sub[LABEL]
        checking = step_of[pool] == steps  # in the pool only for the check after their last step
        if bool(checking.all()):  # nobody needs a gradient: a forward is enough
            with torch.no_grad():
                logits = logits_of(model({**sub, **x}))
            forward_passes += pool.numel()
            grads = None
        else:
            with torch.enable_grad():
                leaves = {m: x[m].detach().requires_grad_(True) for m in targets}
                logits = logits_of(model({**sub, **leaves}))
                objective = loss(logits, labels).sum()  # summed: a sample's gradient ignores the others
                grads = dict(zip(targets, torch.autograd.grad(objective, [leaves[m] for m in targets])))
            gradient_passes += pool.numel()
        hit = logits.detach().argmax(dim=1) != labels
        counted = hit if early_stop else hit & checking
        # Leaving the pool: fooled samples keep the input that fooled them; samples
        # past their last step keep their final iterate, or start a new restart.
        done = counted | checking
        if bool(done.any()):
            for m in targets:
                adversarial[m][pool[done]] = x[m][done].detach()
            fooled[pool[counted]] = True
            again = checking & ~counted & (restart_of[pool] + 1 < restarts)
            if bool(again.any()):
                restart_of[pool[again]] += 1
                queue = torch.cat([pool[again], queue])
            keep = ~done  # the pool shrinks; otherwise nothing needs re-indexing
            pool, sub, x = pool[keep], take(sub, keep), {m: x[m][keep] for m in targets}
            if grads is not None:
                grads = {m: grads[m][keep] for m in targets}
        if grads is None or pool.numel() == 0:
            continue
        with torch.no_grad():
            for m in targets:
                # Same arithmetic as torchattacks.PGD, so both agree bit for bit:
                # x + α·sign(g), clamped to the ε-ball around the clean input, then
                # to [0, 1]. In place on the gradient: no 100 MB of fresh buffers
                # per step at video sizes.
                step = grads[m].sign_().mul_(rel_step * radius[m]).add_(x[m])
                step.sub_(sub[m]).clamp_(min=-radius[m], max=radius[m])
                x[m] = step.add_(sub[m]).clamp_(min=0, max=1)
        step_of[pool] += 1
        if not final_check:  # samples past their last step leave without a checking forward
            finished = step_of[pool] == steps
            if bool(finished.any()):
                for m in targets:
                    adversarial[m][pool[finished]] = x[m][finished]
                keep = ~finished
                pool, sub, x = pool[keep], take(sub, keep), {m: x[m][keep] for m in targets}

    return AttackResult({**batch, **adversarial}, fooled, gradient_passes, forward_passes)


# -- building attacks by name --------------------------------------------------

def check_schedule(steps: int, rel_step: float, restarts: int, random_start: bool) -> None:
    """Range checks shared by the ``Params`` of the iterative attacks."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (rel_step > 0 and math.isfinite(rel_step)):
        raise ValueError(f"rel_step must be > 0, got {rel_step}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if restarts > 1 and not random_start:
        raise ValueError(f"restarts={restarts} without random_start would repeat the same attack")


def _check_type(name: str, key: str, value: Any, expected: Any) -> None:
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is str:
        ok = isinstance(value, str)
    else:
        return  # containers and unions: left to the Params' own checks
    if not ok:
        raise ValueError(f"attack {name!r}: parameter {key!r} must be {expected.__name__}, got {value!r}")


def make_params(name: str, params_type: type, values: Mapping[str, Any]) -> Any:
    """Build ``params_type(**values)``, naming any unknown or ill-typed parameter."""
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    hints = typing.get_type_hints(params_type)
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            valid = f"valid: {', '.join(fields)}" if fields else "it takes no parameters"
            raise ValueError(f"attack {name!r} has no parameter {key!r}; {hint}{valid}")
        _check_type(name, key, value, hints.get(key))
    try:
        return params_type(**{k: float(v) if hints.get(k) is float else v for k, v in values.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"attack {name!r}: {error}") from None


def build_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack, or a torchattacks one as ``"ta:<ClassName>"``.

    Example::

        build_attack("pgd", steps=10, restarts=2)
        build_attack("ta:PGD", steps=10, alpha=2 / 255)

    Raises:
        ValueError: unknown attack (with suggestions) or unknown parameter.
    """
    if name.startswith(TORCHATTACKS_PREFIX):
        adapter = ATTACKS.get(TORCHATTACKS_ADAPTER)
        return adapter.from_class_name(name[len(TORCHATTACKS_PREFIX):], **params)
    factory = ATTACKS.get(name)
    return factory(make_params(name, factory.Params, params), name=name)
