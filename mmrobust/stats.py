"""Intervals and paired tests over training seeds and test samples.

A leaderboard number is a mean over two random draws: the training seed (the
model) and the test clips (the data it is scored on). Each column of a table
row is kept here as a ``(seeds, samples)`` matrix of per-sample scores (1 or 0
for an accuracy, the mean over targets for Avg, ``(✓ + Avg)`` minus the same
seed's reference for RI, all RI's terms being per-sample means), so that every
figure and every interval is recomputed from the outcomes a record keeps.

Intervals and tests use a two-level (hierarchical) bootstrap: each draw
resamples the seeds with replacement, then the test samples with replacement,
and takes the mean (Davison & Hinkley, *Bootstrap Methods and their
Application*, 1997, §3.8, for resampling at both levels of a nested design).
Two rows are compared on the same sample draws, since they are scored on the
same clips, and on the same seed draws where they were trained with the same
seeds, since one seed fixes the initial weights of the modules they share and
the order of the batches. A paired test on the difference therefore accounts
for both sources of variation. McNemar's test, the usual paired test for two
classifiers, conditions on two trained networks: it asks whether these two
models differ on this test set, not whether another seed would keep their
order, which is what a ranking has to survive.

With few seeds the seed level is coarse (3 seeds give 10 distinct resamples)
and the bootstrap's seed variance is ``(k - 1) / k`` of the unbiased one; the
interval then leans on the test samples, which is why the table also shows the
spread over seeds.

Example::

    scores = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=float)   # 2 seeds x 4 clips
    summary = summarize(scores)            # mean 75.0, spread over seeds, 95 % interval
    test = compare(scores, scores * 0)     # difference 75.0, its interval, p-value
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000   # bootstrap draws; the percentile bounds move by about 0.1 point between runs of other seeds
LEVEL = 0.95
BOOTSTRAP_SEED = 20_240_611  # fixed, so a table re-renders identically from the same records


@dataclass(frozen=True)
class Summary:
    """One column of one row: the mean over seeds and samples, the spread of the per-seed means, the interval."""

    mean: float
    spread: float        # standard deviation of the per-seed means (ddof 1); NaN with one seed
    low: float
    high: float
    seeds: int


@dataclass(frozen=True)
class Comparison:
    """Row A minus row B on one column: the mean difference, its interval and the two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def _check(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty (seeds, samples) matrix, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold a NaN or an infinity")
    return scores


@functools.lru_cache(maxsize=4)
def _sample_weights(samples: int, draws: int, seed: int) -> np.ndarray:
    """(draws, samples): how often each sample is drawn in each bootstrap draw, over ``samples``.

    The same draws serve every row and column of a table (common random
    numbers), so the intervals of two rows differ by their scores alone.
    """
    counts = np.random.default_rng([seed, samples]).multinomial(samples, np.full(samples, 1.0 / samples),
                                                               size=draws)
    weights = counts / samples
    weights.setflags(write=False)
    return weights


def _draws(matrices: Sequence[np.ndarray], joint: bool, draws: int, seed: int) -> np.ndarray:
    """(draws, len(matrices)) bootstrap means in percent: sample draws shared by all matrices, seed draws
    shared too where ``joint``."""
    samples = matrices[0].shape[1]
    if any(m.shape[1] != samples for m in matrices):
        raise ValueError(f"rows are scored on different numbers of samples: {[m.shape[1] for m in matrices]}")
    weights = _sample_weights(samples, draws, seed)
    rng = np.random.default_rng([seed, 1])
    out = np.empty((draws, len(matrices)))
    seed_draws = None
    for column, matrix in enumerate(matrices):
        per_seed = weights @ matrix.T                      # (draws, seeds): each seed's mean over the drawn samples
        seeds = matrix.shape[0]
        if seed_draws is None or not joint:
            seed_draws = rng.integers(0, seeds, size=(draws, seeds))
        out[:, column] = 100.0 * np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)
    return out


def summarize(scores: np.ndarray, draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> Summary:
    """Mean (percent), spread over seeds and the two-level bootstrap interval of a (seeds, samples) matrix."""
    scores = _check(scores)
    per_seed = 100.0 * scores.mean(axis=1)
    spread = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
    means = _draws([scores], True, draws, seed)[:, 0]
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Summary(float(per_seed.mean()), spread, float(low), float(high), len(per_seed))


def compare(first: np.ndarray, second: np.ndarray, paired_seeds: bool | None = None, draws: int = DRAWS,
            seed: int = BOOTSTRAP_SEED) -> Comparison:
    """``first`` minus ``second``: the two (seeds, samples) matrices are scored on the same samples.

    ``paired_seeds`` (default: when both have as many seeds) draws the same seed
    rows for both; the caller says False when row i of one was not trained
    with the seed of row i of the other.
    """
    first, second = _check(first), _check(second)
    if paired_seeds is None:
        paired_seeds = first.shape[0] == second.shape[0]
    if paired_seeds and first.shape[0] != second.shape[0]:
        raise ValueError(f"paired seeds need as many seeds on both sides, got {first.shape[0]} and "
                         f"{second.shape[0]}")
    means = _draws([first, second], paired_seeds, draws, seed)
    difference = means[:, 0] - means[:, 1]
    low, high = np.quantile(difference, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    # Two-sided bootstrap p-value: twice the smaller tail beyond 0 (ties count toward both tails).
    p_value = min(1.0, 2.0 * min(np.mean(difference <= 0), np.mean(difference >= 0)))
    observed = 100.0 * (first.mean(axis=1).mean() - second.mean(axis=1).mean())
    return Comparison(float(observed), float(low), float(high), float(p_value))
