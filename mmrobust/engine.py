"""The native sign-gradient engine: FGSM, PGD and CW∞ are settings of one loop.

Per step, one forward and one backward on the samples still in play give the
gradient with respect to every targeted modality at once, and each modality
moves by its own step along the sign of its gradient before being projected
back (Eq. 7 of the AMR paper, the multimodal form of PGD; Madry et al., ICLR
2018)::

    x'_{m,t+1} = Π_{B_εm(x_m) ∩ [0,1]} ( x'_{m,t} + α_m · sign ∇_{x'_m} loss(f(x'_t), y) ),
    α_m = rel_step · ε_m

An attack built on it is a subclass of :class:`SignGradientAttack` that sets
its ``Params`` (a :class:`Schedule`) and its ``loss``; see ``attacks/pgd.py``.
The training adversary of :mod:`mmrobust.defense` runs the same loop with
``attack_all``.

Example::

    from mmrobust.engine import sign_gradient_attack

    result = sign_gradient_attack(model, batch, ("rgb", "skeleton"), 8 / 255, steps=10, rel_step=0.25,
                                  random_start=True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.attack import (LABEL, Attack, AttackResult, Eps, RandomStarts, check_starts, clean_fooled, labels_of,
                             resolve_eps, resolve_targets, take)
from mmrobust.model import Batch, logits_of
from mmrobust.params import check_flag, check_number

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> per-sample loss (B,)


# -- losses --------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (B,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample Carlini–Wagner margin max_{j≠y} z_j − z_y (B,); positive means misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def input_gradients(objective: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of ``objective`` with respect to each leaf; zero where the model does not differentiate
    through an input (a detached or non-differentiable defense): no step is taken there, and the
    protocol's checks flag it."""
    if not objective.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    found = torch.autograd.grad(objective, list(leaves), allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, found)]


@dataclass(frozen=True)
class Schedule:
    """How the engine iterates.

    Attributes:
        steps: sign-gradient steps per restart.
        rel_step: step size as a fraction of each modality's ε (α_m = rel_step·ε_m).
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
    """

    steps: int = 10
    rel_step: float = 0.25
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = True
    final_check: bool = True

    def __post_init__(self) -> None:
        check_number("steps", self.steps, 1, integer=True)
        check_number("rel_step", self.rel_step, 0.0, low_open=True)
        check_flag("random_start", self.random_start)
        check_number("restarts", self.restarts, 1, integer=True)
        check_flag("early_stop", self.early_stop)
        check_flag("final_check", self.final_check)
        if self.restarts > 1 and not self.random_start:
            raise ValueError(f"restarts={self.restarts} without random_start would repeat the same attack")
        if not self.final_check and (self.early_stop or self.restarts > 1):
            raise ValueError("final_check=False needs early_stop=False and restarts=1: "
                             "both decide from the check it skips")


class SignGradientAttack(Attack):
    """Multimodal iterated sign-gradient ascent on ``loss`` with projection (the engine).

    Samples move through a *pool* of at most ``max_batch`` samples, each at its
    own step: a sample that is fooled (early stop) or finishes its steps leaves
    and the next one enters, so every forward/backward runs at full width
    however early the samples stop. A sample's trajectory does not depend on
    the pool it shares (the loss is summed, the model is in eval mode), and its
    random start depends only on (seed, sample id, restart).

    Subclasses set ``Params`` (a :class:`Schedule` or a dataclass with a
    :meth:`schedule` that maps it to one) and ``loss``.
    """

    Params: ClassVar[type] = Schedule
    loss: ClassVar[Loss] = staticmethod(cross_entropy)  # per-sample objective to maximise

    def schedule(self) -> Schedule:
        """The engine's settings for this attack's parameters."""
        return self.params

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None, starts: RandomStarts | None = None,
                 max_batch: int | None = None, attack_all: bool = False) -> AttackResult:
        """Attack ``targets`` of ``batch`` within ``eps`` (the :class:`~mmrobust.attack.Attack` contract).

        ``attack_all`` perturbs every sample, including those misclassified
        clean, with no clean forward (the training adversary's setting).
        """
        p = self.schedule()
        steps, rel_step, restarts, early_stop, final_check = (p.steps, p.rel_step, p.restarts, p.early_stop,
                                                              p.final_check)
        targets = resolve_targets(batch, targets)
        radius = resolve_eps(eps, targets, batch)
        if attack_all:
            fooled, forward_passes = torch.zeros_like(labels_of(batch), dtype=torch.bool), 0
        else:
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
            if not p.random_start:
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
                    objective = self.loss(logits, labels).sum()  # summed: a sample's gradient ignores the others
                    grads = dict(zip(targets, input_gradients(objective, [leaves[m] for m in targets])))
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


def sign_gradient_attack(model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *, steps: int,
                         rel_step: float, loss: Loss = cross_entropy, random_start: bool = False, restarts: int = 1,
                         early_stop: bool = True, final_check: bool = True, clean_logits: torch.Tensor | None = None,
                         starts: RandomStarts | None = None, max_batch: int | None = None,
                         attack_all: bool = False) -> AttackResult:
    """The engine as a function: a :class:`SignGradientAttack` with these settings, called once."""
    attack = SignGradientAttack(Schedule(steps, rel_step, random_start, restarts, early_stop, final_check))
    attack.loss = loss
    return attack(model, batch, targets, eps, clean_logits=clean_logits, starts=starts, max_batch=max_batch,
                  attack_all=attack_all)
