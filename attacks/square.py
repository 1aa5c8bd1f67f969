"""Square Attack: score-based black-box random search, L∞, on every targeted modality at once.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020,
https://arxiv.org/abs/1912.00049. It reads only the logits, never a
gradient, so gradient masking does not stop it. Per sample:

* loss: the margin z_y − max_{j≠y} z_j, minimised; the sample is fooled as
  soon as its prediction differs from the label;
* start ("stripes"): x_m + ε_m · s, with a sign s = ±1 drawn per channel and
  index of the last grid axis and broadcast over the other axes, clamped to
  [0, 1]; one query;
* iteration i, one query: in each targeted modality a window covering a
  fraction p_i of the grid, at a random position; inside it every entry of
  channel c becomes x_m + ε_m · s_c, clamped to [0, 1], with one sign s_c = ±1
  per channel, drawn again (at most ⌈24 / C⌉ times) when the window would not
  change. The candidate replaces the best iterate only if its margin is lower.
  p_i follows the schedule of the reference implementation (AutoAttack's
  ``square.py``, ``p_selection``): p_i is p_init, halved once more after each
  of it = 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, where it = i as
  AutoAttack "standard" runs it (``resc_schedule=False``), or
  it = ⌊10000 · i / queries⌋ with ``rescale`` (the reference's default,
  which squeezes the schedule into a smaller budget).

Generalised from images to any modality (B, C, d_1, …, d_k): dim 1 holds
the channels and the rest is the grid, T × H × W for video and T × V × M for
a skeleton; a (B, D) tensor is one channel over a grid of D. A window has
side round(d_j · p^(1/k)) along each axis (at least 1, at most d_j), k
counting the axes longer than 1, so that a single-person skeleton's M = 1
axis does not inflate the others. Positions are uniform over all
d_j − side_j + 1 places (the reference never picks the last). Every
targeted modality gets its own window, signs and ε_m in the same query, so
one forward serves all of them.

A margin counts as lower only by more than 10⁻⁵ relative, as in ``apgd``: a
candidate the model cannot tell apart (a modality it ignores) would otherwise
be accepted or not depending on the last bits of a batch of another size. A
sample leaves at the first query that fools it, keeping that example; a
sample never fooled gets back its lowest-margin iterate. A sample spends at
most ``queries`` + 1 forwards (the start, then one per iteration), counted in
``forward_passes``; no gradient is taken.

Each sample draws its start, window positions and signs for every iteration
up front, on the CPU, from a generator of its own seeded by its
:class:`~mmrobust.attack.RandomStarts` (restart 0), so neither the batch it
shares nor ``max_batch`` changes its outcome. Samples move through a pool of
at most ``max_batch``: one that leaves is replaced by the next, at its own
iteration.

Arguments:
    queries (int): iterations after the start (the reference's
        ``n_queries``). Default 5000.
    p_init (float): fraction of the grid the first windows cover, in (0, 1].
        Default 0.8.
    rescale (bool): stretch the schedule's breakpoints (made for 10,000
        queries) to ``queries``. Default False, as in AutoAttack "standard".

Input: the batch dict, every modality float in [0, 1] — ``rgb`` (B, 3, T, H, W),
``skeleton`` (B, C, T, V, M) — and ``label`` int64 (B,).

Example::

    from mmrobust.attack import build_attack

    square = build_attack("square", queries=5000)
    result = square(model, batch, targets=("rgb", "skeleton"), eps=8 / 255)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mmrobust.attack import (LABEL, Attack, AttackResult, Eps, RandomStarts, check_starts, clean_fooled,
                             resolve_eps, resolve_targets, take)
from mmrobust.model import Batch, logits_of
from mmrobust.params import check_flag, check_number
from mmrobust.registry import register_attack

BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of it = ⌊10000 · i / queries⌋
TIE = 1e-5  # relative margin difference below which a candidate is no better
SIGN_BITS = 24  # sign draws per iteration: ⌈24 / C⌉ tries of C signs; all leave the window as it is w.p. 2⁻²⁴


def halvings(iteration: int, queries: int, rescale: bool = True) -> int:
    """How often p_init is halved at ``iteration`` (0-based) of ``queries``: 0 … 9 (the breakpoints are
    for 10,000 queries; ``rescale`` stretches them to ``queries``, otherwise they apply as they are)."""
    it = int(iteration / queries * 10000) if rescale else iteration
    return sum(it > mark for mark in BREAKPOINTS)


def window_fraction(iteration: int, queries: int, p_init: float, rescale: bool = True) -> float:
    """The fraction p of the grid a window covers at ``iteration`` (0-based) of ``queries``.

    The reference's ``p_selection``; ``rescale`` is its ``resc_schedule``.
    """
    return p_init / 2 ** halvings(iteration, queries, rescale)


def window_sides(grid: Sequence[int], p: float) -> tuple[int, ...]:
    """Sides of a window covering about a fraction ``p`` of ``grid``: round(d · p^(1/k)), k the axes longer than 1."""
    k = sum(d > 1 for d in grid)
    scale = p ** (1 / k) if k else 1.0
    return tuple(min(max(round(d * scale), 1), d) for d in grid)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per sample."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    return true - logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)


@dataclass(frozen=True)
class Params:
    queries: int = 5000
    p_init: float = 0.8
    rescale: bool = False

    def __post_init__(self) -> None:
        check_number("queries", self.queries, 1, integer=True)
        check_number("p_init", self.p_init, 0.0, 1.0, low_open=True)
        check_flag("rescale", self.rescale)


@dataclass
class _Draws:
    """One modality's random numbers for a group of samples, every iteration at once."""

    stripes: torch.Tensor  # (n, C, 1, …, 1, d_k) bool: the start's sign is +
    base: torch.Tensor  # (n, queries) int64: the window's first grid entry, as a flat grid index
    signs: torch.Tensor  # (n, queries, tries, C) bool: the candidate signs (+), tried in order

    def rows(self, keep: torch.Tensor) -> _Draws:
        return _Draws(self.stripes[keep], self.base[keep], self.signs[keep])

    def to(self, device: torch.device) -> _Draws:
        return _Draws(self.stripes.to(device), self.base.to(device), self.signs.to(device))

    @staticmethod
    def cat(parts: Sequence[_Draws]) -> _Draws:
        return _Draws(*(torch.cat([getattr(p, f) for p in parts]) for f in ("stripes", "base", "signs")))


class _Windows:
    """One modality's windows: each sample (C, d_1, …, d_k) as C channels over the flattened grid."""

    def __init__(self, shape: Sequence[int], radius: float, levels: torch.Tensor, p_init: float,
                 device: torch.device) -> None:
        if not shape:
            raise ValueError("square needs modalities with at least one dimension per sample, got (B,)")
        self.channels, self.grid = (1, tuple(shape)) if len(shape) == 1 else (shape[0], tuple(shape[1:]))
        self.radius, self.volume = radius, math.prod(self.grid)
        self.stripe_shape = (self.grid[-1],) if len(shape) == 1 else (
            (self.channels,) + (1,) * (len(self.grid) - 1) + (self.grid[-1],))
        self.tries = -(-SIGN_BITS // self.channels)
        self.strides = torch.tensor([math.prod(self.grid[j + 1:]) for j in range(len(self.grid))])
        sides = {lv: window_sides(self.grid, p_init / 2 ** lv) for lv in levels.unique().tolist()}
        self.span = torch.tensor(self.grid) + 1 - torch.tensor([sides[lv] for lv in levels.tolist()])  # (queries, k)
        # level -> (C, W): flat offsets of a window's entries from its first entry, channel by channel
        self.pattern = {}
        for lv, side in sides.items():
            offsets = torch.zeros((), dtype=torch.long)
            for extent, stride in zip(side, self.strides.tolist()):
                offsets = offsets[..., None] + torch.arange(extent) * stride
            self.pattern[lv] = (torch.arange(self.channels)[:, None] * self.volume + offsets.flatten()).to(device)
        self.buffer, self.used = torch.empty(0, dtype=torch.long, device=device), 0

    def draw(self, generator: torch.Generator) -> _Draws:
        """One sample's start, window positions and signs for every iteration."""
        stripes = torch.randint(0, 2, (self.channels, self.grid[-1]), generator=generator).bool()
        uniform = torch.rand(self.span.shape, generator=generator, dtype=torch.float64)
        position = torch.minimum((uniform * self.span).long(), self.span - 1)
        base = (position * self.strides).sum(dim=1)
        signs = torch.rand((self.span.shape[0], self.tries, self.channels), generator=generator) < 0.5
        return _Draws(stripes.view(self.stripe_shape)[None], base[None], signs[None])

    def start(self, clean: torch.Tensor, stripes: torch.Tensor) -> torch.Tensor:
        """The stripes: x + ε where the start's sign is +, x − ε elsewhere, clamped to [0, 1]."""
        up, down = (clean + self.radius).clamp_(max=1.0), (clean - self.radius).clamp_(min=0.0)
        return torch.where(stripes, up, down).contiguous()

    def begin(self) -> None:
        """A new query: the index buffer is free again."""
        self.used = 0

    def propose(self, best: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor, level: int,
                base: torch.Tensor, signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the candidate windows of pool ``rows`` into ``best`` in place; returns (where, old, new).

        ``best`` and ``clean`` are the pool's tensors flattened; ``base`` (n,) and
        ``signs`` (n, tries, C) the rows' draws at their iteration; ``where`` (n, C, W)
        indexes the windows' entries in ``best``.
        """
        pattern = self.pattern[level]
        where = torch.add((rows * (self.channels * self.volume) + base)[:, None, None], pattern,
                          out=self._index(len(rows) * pattern.numel()).view(len(rows), *pattern.shape))
        index = where.view(-1)
        old = best.index_select(0, index).view(where.shape)
        clean = clean.index_select(0, index).view(where.shape)
        up = (clean + self.radius).clamp_(max=1.0)
        # Every entry of an iterate is x + ε or x − ε (clamped), and the two differ: a channel's window
        # stays as it is under + when all its entries are up, under − when none is.
        is_up = old == up
        unchanged = torch.where(signs, is_up.all(dim=2)[:, None], ~is_up.any(dim=2)[:, None]).all(dim=2)  # (n, tries)
        first = (~unchanged).to(torch.uint8).argmax(dim=1)  # the first try that changes the window (else 0)
        sign = signs[torch.arange(len(rows), device=rows.device), first]  # (n, C)
        new = torch.where(sign[:, :, None], up, clean.sub_(self.radius).clamp_(min=0.0))
        best.scatter_(0, index, new.view(-1))
        return where, old, new

    def _index(self, size: int) -> torch.Tensor:
        """``size`` int64 from a buffer kept across queries: an index of tens of MB allocated afresh
        at every query costs more in page faults than all the arithmetic on it."""
        if self.used + size > self.buffer.numel():  # slices handed out earlier in this query keep the old one
            self.buffer = torch.empty(self.used + size, dtype=torch.long, device=self.buffer.device)
        part = self.buffer[self.used:self.used + size]
        self.used += size
        return part


@register_attack("square")
class Square(Attack):
    """Square Attack (L∞): random search over windows on the margin, one query per iteration."""

    Params: ClassVar[type] = Params
    example: ClassVar[dict] = {"queries": 50}
    gradient_free: ClassVar[bool] = True

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None, starts: RandomStarts | None = None,
                 max_batch: int | None = None) -> AttackResult:
        targets = resolve_targets(batch, targets)
        radius = resolve_eps(eps, targets, batch)
        fooled, forward_passes = clean_fooled(model, batch, clean_logits)
        size, device = fooled.shape[0], fooled.device
        starts = starts if starts is not None else RandomStarts.numbered(size)
        check_starts(starts, size)
        adversarial = {m: batch[m].clone() for m in targets}
        queue = (~fooled).nonzero().squeeze(1)  # samples waiting, in batch order
        queries = self.params.queries
        levels = torch.tensor([halvings(i, queries, self.params.rescale)  # windows shrink level by level
                               for i in range(queries)])
        windows = {m: _Windows(tuple(batch[m].shape[1:]), radius[m], levels, self.params.p_init, device)
                   for m in targets}
        width = size if max_batch is None else max(1, min(max_batch, size))

        pool = queue[:0]
        best = {m: batch[m][:0] for m in targets}  # the pool's best iterates; the candidates during a query
        draws: dict[str, _Draws] = {}
        best_margin = torch.empty(0, dtype=torch.float64, device=device)
        spent = torch.zeros(0, dtype=torch.long)  # queries per pool sample (CPU); 0: its start is not evaluated yet
        sub = None  # the clean batch at the pool's samples; rebuilt only when the pool changes

        while pool.numel() or queue.numel():
            if pool.numel() < width and queue.numel():
                entering, queue = queue[:width - pool.numel()], queue[width - pool.numel():]
                fresh = self._draw(starts, entering.tolist(), windows, device)
                for m in targets:
                    best[m] = torch.cat([best[m], windows[m].start(batch[m][entering], fresh[m].stripes)])
                    draws[m] = _Draws.cat([draws[m], fresh[m]]) if m in draws else fresh[m]
                pool = torch.cat([pool, entering])
                best_margin = torch.cat([best_margin, torch.full((len(entering),), math.inf, dtype=torch.float64,
                                                                 device=device)])
                spent = torch.cat([spent, torch.zeros(len(entering), dtype=torch.long)])
                sub = None
            if sub is None:
                sub = take(batch, pool)
                clean = {m: sub[m].reshape(-1) for m in targets}

            # The candidates: each sample's windows (none for a start), grouped by window size.
            changes = []
            for m in targets:
                windows[m].begin()
            moving = (spent > 0).nonzero().squeeze(1)
            iteration = spent[moving] - 1
            level = levels[iteration]
            for lv in level.unique().tolist():
                chosen = level == lv
                rows, at = moving[chosen].to(device), iteration[chosen].to(device)
                for m in targets:
                    change = windows[m].propose(best[m].view(-1), clean[m], rows, lv, draws[m].base[rows, at],
                                                draws[m].signs[rows, at])
                    changes.append((m, rows, *change))

            with torch.no_grad():
                logits = logits_of(model({**sub, **best}))
            forward_passes += len(pool)
            labels = sub[LABEL]
            value = margin(logits, labels).double()
            hit = logits.argmax(dim=1) != labels
            accept = hit | (spent == 0).to(device) | (value < best_margin - TIE * (1 + best_margin.abs()))
            for m, rows, where, old, new in changes:  # every window back as it was, then the accepted ones again
                flat = best[m].view(-1)
                flat.scatter_(0, where.view(-1), old.view(-1))
                accepted = accept[rows]
                if bool(accepted.any()):
                    flat.scatter_(0, where[accepted].view(-1), new[accepted].view(-1))
            best_margin = torch.where(accept, value, best_margin)
            spent += 1

            # Leaving the pool: a fooled sample keeps the query that fooled it, the others their best iterate.
            done = hit | (spent > queries).to(device)
            if bool(done.any()):
                for m in targets:
                    adversarial[m][pool[done]] = best[m][done]
                fooled[pool[hit]] = True
                keep = ~done
                pool, sub, best_margin, spent = pool[keep], None, best_margin[keep], spent[keep.cpu()]
                best = {m: best[m][keep] for m in targets}
                draws = {m: draws[m].rows(keep) for m in targets}

        return AttackResult({**batch, **adversarial}, fooled, 0, forward_passes)

    @staticmethod
    def _draw(starts: RandomStarts, positions: list[int], windows: dict[str, _Windows],
              device: torch.device) -> dict[str, _Draws]:
        """The draws of the samples at ``positions``, each from its own generator, modalities in sorted order."""
        per_sample = []
        for position in positions:
            generator = torch.Generator().manual_seed(starts.seed_of(position, 0))
            per_sample.append({m: windows[m].draw(generator) for m in sorted(windows)})
        return {m: _Draws.cat([d[m] for d in per_sample]).to(device) for m in windows}
