"""APGD-CE and APGD-T: Auto-PGD with its step-size schedule and momentum, L∞, on every targeted modality at once.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020, Sec. 3 (APGD) and Sec. 4
(APGD-T, the targeted DLR loss over the top classes; AutoAttack "standard"
uses 100 iterations and 9 target classes). The schedule, per sample:

* start: x⁰_m = x_m + ε_m · t_m / ‖t_m‖∞, t_m uniform in [−1, 1], clamped
  to [0, 1] (one draw per sample, modality and restart; :class:`RandomStarts`);
* step: z = P(xᵏ + η · ε_m · sign ∇_m f(xᵏ)), then the momentum step
  xᵏ⁺¹ = P(xᵏ + α (z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹)), α = 0.75 (α = 1 for the
  first step); η starts at 2 and is one number per sample, so every modality
  moves by the same fraction of its own ε_m;
* checkpoints after 22 % of the iterations, then ever closer (the window
  shrinks by 3 % of the iterations per checkpoint, down to 6 %): η is halved
  and the iterate goes back to the best point so far when, since the last
  checkpoint, the loss rose in at most ρ = 0.75 of the steps, or neither the
  best loss improved nor η was halved at the last checkpoint.

The oscillation count compares each step's loss with the one before it (the
start's for the first step), as the paper states it. A loss counts as higher
only by more than 10⁻⁵ relative: the same point evaluated in a batch of
another size gets logits that differ in the last bits, and a tie broken by
rounding would make a sample's trajectory depend on its batch. A sample leaves at the
first iterate that is misclassified, keeping it (exact for robust accuracy);
a sample never fooled gets back its highest-loss iterate, which is inside
the ε-ball and classified correctly. Restarts (APGD-CE) and target classes
(APGD-T) run only on the samples not fooled yet.

Losses: ``apgd-ce`` maximises the cross-entropy; ``apgd-t`` minimises, for
each target class t among the most likely wrong ones (the 2nd, 3rd, … highest
clean logits), the targeted DLR loss
−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2), which needs at least four classes.

Distance: L∞, one ε per modality. Samples are attacked in chunks of at most
``max_batch``; a sample's trajectory does not depend on the others.

Arguments:
    steps (int): iterations per restart or target. Default 100.
    rho (float): ρ of the oscillation check. Default 0.75.
    restarts (int): ``apgd-ce``: random restarts, default 1; ``apgd-t``:
        target classes, default 9 (fewer when the dataset has fewer).

Example::

    from mmrobust.attack import build_attack

    apgd = build_attack("apgd-ce", steps=100)
    result = apgd(model, batch, targets=("rgb", "skeleton"), eps=8 / 255)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.attack import (Attack, AttackResult, Eps, RandomStarts, check_starts, clean_fooled, labels_of,
                             resolve_eps, resolve_targets, take)
from mmrobust.engine import input_gradients
from mmrobust.model import Batch, logits_of
from mmrobust.params import check_number
from mmrobust.registry import register_attack

MOMENTUM = 0.75
FIRST_STEP = 2.0  # η at the start, in units of ε_m
TIE = 1e-5  # relative loss difference below which two iterates count as equally good

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (logits, labels, target) -> (B,)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2): rises as the target class overtakes the true one."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - other) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """The iterations (0-based, after their step) at which the step size may be halved."""
    first, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, window, at = [], first, -1
    while at + window < steps:
        at += window
        marks.append(at)
        window = max(window - shrink, shortest)
    return marks


@dataclass(frozen=True)
class Params:
    steps: int = 100
    rho: float = 0.75
    restarts: int = 1

    def __post_init__(self) -> None:
        check_number("steps", self.steps, 1, integer=True)
        check_number("rho", self.rho, 0.0, 1.0)
        check_number("restarts", self.restarts, 1, integer=True)


@dataclass(frozen=True)
class TargetedParams(Params):
    restarts: int = 9


class _Run:
    """One APGD run (one restart or one target class) on a chunk of samples, all still robust."""

    def __init__(self, model: nn.Module, sub: Batch, targets: Sequence[str], radius: dict[str, float],
                 loss: Loss, target: torch.Tensor | None, start: dict[str, torch.Tensor], p: Params) -> None:
        self.model, self.targets, self.radius, self.loss, self.p = model, targets, radius, loss, p
        self.sub, self.target = sub, target
        self.x = {m: (sub[m] + radius[m] * start[m]).clamp(0, 1) for m in targets}
        self.gradient_passes = 0

    def value(self, index: torch.Tensor, x: dict[str, torch.Tensor]):
        """Loss, gradient and misclassification at ``x`` for the samples ``index`` of the chunk."""
        part = take(self.sub, index)
        with torch.enable_grad():
            leaves = {m: x[m].detach().requires_grad_(True) for m in self.targets}
            logits = logits_of(self.model({**part, **leaves}))
            target = None if self.target is None else self.target[index]
            values = self.loss(logits, part["label"], target)
            grads = input_gradients(values.sum(), [leaves[m] for m in self.targets])
        self.gradient_passes += len(index)
        return values.detach(), dict(zip(self.targets, grads)), logits.detach().argmax(1) != part["label"]

    def project(self, index: torch.Tensor, m: str, value: torch.Tensor) -> torch.Tensor:
        clean = self.sub[m][index]
        return torch.min(torch.max(value, clean - self.radius[m]), clean + self.radius[m]).clamp(0, 1)

    def run(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The examples (first misclassified iterate, else the highest-loss one), which samples were fooled,
        which had no usable gradient at the start, and which never raised their loss above the start's."""
        size = len(self.sub["label"])
        result = {m: self.x[m].clone() for m in self.targets}
        fooled = torch.zeros(size, dtype=torch.bool, device=self.sub["label"].device)
        active = torch.arange(size, device=fooled.device)
        x = self.x
        loss, grad, hit = self.value(active, x)
        no_gradient = torch.zeros_like(fooled)
        for m in self.targets:
            g = grad[m].flatten(1)
            no_gradient |= ~torch.isfinite(g).all(dim=1) | (g.abs().sum(dim=1) == 0)
        no_gradient &= ~hit  # a start already misclassified needs no gradient
        start_loss = loss.clone()
        if bool(hit.any()):
            fooled[active[hit]] = True
        keep = ~hit
        active, x, loss, grad = active[keep], _rows(x, keep), loss[keep], _rows(grad, keep)
        best_x, best_grad, best_loss = dict(x), dict(grad), loss.clone()
        previous_x, previous_loss = dict(x), loss.clone()
        step = torch.full_like(loss, FIRST_STEP)
        rises = torch.zeros_like(loss)  # steps since the last checkpoint whose loss rose
        best_at_check, halved_at_check = best_loss.clone(), torch.ones_like(loss, dtype=torch.bool)
        marks, window_start = checkpoints(self.p.steps), 0
        for i in range(self.p.steps):
            if active.numel() == 0:
                break
            with torch.no_grad():
                momentum = MOMENTUM if i > 0 else 1.0
                new = {}
                for m in self.targets:
                    shape = (-1,) + (1,) * (x[m].dim() - 1)
                    z = self.project(active, m, x[m] + (step * self.radius[m]).view(shape) * grad[m].sign())
                    new[m] = self.project(active, m, x[m] + momentum * (z - x[m])
                                          + (1 - momentum) * (x[m] - previous_x[m]))
            previous_x = x
            x = new
            loss, grad, hit = self.value(active, x)
            rises += _above(loss, previous_loss).float()
            previous_loss = loss
            if bool(hit.any()):
                where = active[hit]
                for m in self.targets:
                    result[m][where] = x[m][hit]
                fooled[where] = True
            better = _above(loss, best_loss)
            best_loss = torch.where(better, loss, best_loss)
            for m in self.targets:
                mask = better.view((-1,) + (1,) * (x[m].dim() - 1))
                best_x[m] = torch.where(mask, x[m], best_x[m])
                best_grad[m] = torch.where(mask, grad[m], best_grad[m])
            if i in marks:
                window = i - window_start + 1
                halve = (rises <= self.p.rho * window) | (~halved_at_check & (best_at_check >= best_loss))
                halved_at_check, best_at_check, window_start = halve, best_loss.clone(), i + 1
                rises = torch.zeros_like(rises)
                step = torch.where(halve, step / 2, step)
                for m in self.targets:
                    mask = halve.view((-1,) + (1,) * (x[m].dim() - 1))
                    x[m] = torch.where(mask, best_x[m], x[m])
                    grad[m] = torch.where(mask, best_grad[m], grad[m])
            keep = ~hit
            if not bool(keep.all()):
                active, loss, best_loss, previous_loss, step, rises = (
                    t[keep] for t in (active, loss, best_loss, previous_loss, step, rises))
                best_at_check, halved_at_check = best_at_check[keep], halved_at_check[keep]
                x, grad, previous_x = _rows(x, keep), _rows(grad, keep), _rows(previous_x, keep)
                best_x, best_grad = _rows(best_x, keep), _rows(best_grad, keep)
        for m in self.targets:  # samples never fooled: their highest-loss iterate
            result[m][active] = best_x[m]
        flat_loss = torch.zeros_like(fooled)
        flat_loss[active] = ~_above(best_loss, start_loss[active])
        return result, fooled, no_gradient, flat_loss


def _above(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``loss`` higher than ``reference`` by more than rounding (relative 1e-5): the same point evaluated in
    batches of other sizes gives logits that differ in the last bits, and that must not change a decision."""
    return loss > reference + TIE * (1 + reference.abs())


def _rows(tensors: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {m: t[keep] for m, t in tensors.items()}


class APGD(Attack):
    """APGD on the cross-entropy (``targeted`` False) or on the targeted DLR loss over the top classes."""

    Params: ClassVar[type] = Params
    example: ClassVar[dict] = {"steps": 10}
    targeted: ClassVar[bool] = False

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None, starts: RandomStarts | None = None,
                 max_batch: int | None = None) -> AttackResult:
        targets = resolve_targets(batch, targets)
        radius = resolve_eps(eps, targets, batch)
        labels = labels_of(batch)
        size = labels.shape[0]
        starts = starts if starts is not None else RandomStarts.numbered(size)
        check_starts(starts, size)
        forward_passes = 0
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = logits_of(model(batch))
            forward_passes = size
        fooled, _ = clean_fooled(model, batch, clean_logits)
        runs = self.params.restarts
        if self.targeted:
            classes = clean_logits.shape[1]
            self.check_classes(classes)
            runs = min(runs, classes - 1)
            ranked = clean_logits.detach().argsort(dim=1, descending=True)
        adversarial = {m: batch[m].clone() for m in targets}
        no_gradient, flat_loss = torch.zeros_like(fooled), torch.zeros_like(fooled)
        width = size if max_batch is None else max(1, min(max_batch, size))
        gradient_passes = 0
        one_sample = {m: batch[m][0] for m in targets} if size else {}
        for restart in range(runs):
            waiting = (~fooled).nonzero().squeeze(1)
            for begin in range(0, waiting.numel(), width):
                index = waiting[begin:begin + width]
                sub = take(batch, index)
                start = self._start(starts, index, restart, one_sample, radius)
                target = ranked[index, restart + 1] if self.targeted else None
                run = _Run(model, sub, targets, radius, targeted_dlr if self.targeted else cross_entropy, target,
                           start, self.params)
                examples, hit, blind, flat = run.run()
                gradient_passes += run.gradient_passes
                if restart == 0:
                    no_gradient[index], flat_loss[index] = blind, flat
                # Fooled samples keep their example; the last run's examples stand for the rest.
                chosen = torch.ones_like(hit) if restart == runs - 1 else hit
                for m in targets:
                    adversarial[m][index[chosen]] = examples[m][chosen]
                fooled[index[hit]] = True
        return AttackResult({**batch, **adversarial}, fooled, gradient_passes, forward_passes,
                            no_gradient=no_gradient, flat_loss=flat_loss & ~fooled)

    @staticmethod
    def _start(starts: RandomStarts, index: torch.Tensor, restart: int, like: dict[str, torch.Tensor],
               radius: dict[str, float]) -> dict[str, torch.Tensor]:
        """t_m / ‖t_m‖∞ per sample, t_m uniform in [−1, 1] drawn from the sample's own seed."""
        noise = [starts.draw(i, restart, like, {m: 1.0 for m in radius}) for i in index.tolist()]
        out = {}
        for m in radius:
            t = torch.stack([n[m] for n in noise]).to(like[m].device)
            norm = t.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
            out[m] = t / norm.view((-1,) + (1,) * (t.dim() - 1))
        return out


@register_attack("apgd-ce")
class APGDCE(APGD):
    """APGD maximising the cross-entropy (AutoAttack's first attack)."""


@register_attack("apgd-t")
class APGDT(APGD):
    """APGD minimising the targeted DLR loss, one run per target class (AutoAttack's second attack)."""

    Params = TargetedParams
    example = {"steps": 10, "restarts": 3}
    targeted = True

    def check_classes(self, classes: int) -> None:
        if classes < 4:
            raise ValueError(f"attack {self.name or 'apgd-t'!r} needs at least 4 classes (its DLR loss uses the "
                             f"4th highest logit); the model has {classes}")
