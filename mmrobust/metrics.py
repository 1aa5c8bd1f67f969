"""Accuracies, confidence intervals and relative improvement from per-sample outcomes.

Everything here is a pure function of boolean arrays (True = classified
correctly), so any aggregate in a result record can be recomputed from the
per-sample outcomes a run keeps. Accuracies are in percent.

The record layout built by :func:`robust_metrics`::

    {"clean": 95.2, "clean_ci": [92.1, 97.0], "n": 270,
     "attacks": {"pgd20": {"R": 40.1, "S": 80.2, "RS": 30.0, "avg": 50.1, "ri": None,
                           "ci": {"R": [lo, hi], "S": [lo, hi], "RS": [lo, hi]}},
                 ...,
                 "worst": {...}}}

``worst`` is the pointwise worst case: a sample counts as robust on a target
only if it survives every attack on that target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

WORST = "worst"
Z_95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, in percent.

    Unlike the normal approximation it stays inside [0, 100] and is sensible
    at 0 or n successes.

    Raises:
        ValueError: ``n`` is 0 (an accuracy over no samples is a bug upstream,
            and a NaN could not be written to a JSON record) or ``successes``
            is outside [0, n].
    """
    if n <= 0:
        raise ValueError(f"a confidence interval needs at least one sample, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 100; say so rather than keep rounding residue.
    lower = 0.0 if successes == 0 else 100 * (center - half_width)
    upper = 100.0 if successes == n else 100 * (center + half_width)
    return lower, upper


def accuracy(correct: np.ndarray) -> float:
    """Percentage of True entries; raises ValueError on an empty array."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise ValueError("accuracy of an empty array")
    return 100.0 * float(correct.mean())


def _accuracy_and_interval(correct: np.ndarray) -> tuple[float, list[float]]:
    return accuracy(correct), list(wilson_interval(int(correct.sum()), int(correct.size)))


def _attack_metrics(per_target: Mapping[str, np.ndarray]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    intervals: dict[str, list[float]] = {}
    for target, correct in per_target.items():
        entry[target], intervals[target] = _accuracy_and_interval(correct)
    entry["avg"] = float(np.mean([entry[target] for target in per_target]))
    entry["ri"] = None
    entry["ci"] = intervals
    return entry


def robust_metrics(clean: np.ndarray, robust: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """The ``metrics`` dict of a result record (``ri`` left None; see :func:`fill_ri`).

    Args:
        clean: bool (n,), True where sample i is classified correctly without attack.
        robust: ``robust[attack][target][i]`` is True where sample i is still
            classified correctly under ``attack`` on ``target`` (e.g. ``"R"``,
            ``"S"``, ``"RS"``). A sample misclassified clean is never robust.

    Raises:
        ValueError: empty or mismatched arrays, an attack named ``worst``, an
            attack without targets, or a sample robust but wrong when clean.
    """
    clean = np.asarray(clean, dtype=bool)
    if clean.ndim != 1 or clean.size == 0:
        raise ValueError(f"clean must be a non-empty 1-D array, got shape {clean.shape}")
    if WORST in robust:
        raise ValueError(f"{WORST!r} is reserved for the worst case over attacks; rename that attack")
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    for attack, per_target in robust.items():
        if not per_target:
            raise ValueError(f"attack {attack!r} has no targets")
        outcomes[attack] = {}
        for target, correct in per_target.items():
            correct = np.asarray(correct, dtype=bool)
            if correct.shape != clean.shape:
                raise ValueError(f"{attack}/{target}: {correct.shape[0] if correct.ndim else 0} outcomes "
                                 f"for {clean.size} samples")
            if np.any(correct & ~clean):
                raise ValueError(f"{attack}/{target}: {int(np.sum(correct & ~clean))} samples robust under "
                                 "attack but misclassified clean; outcomes are misaligned")
            outcomes[attack][target] = correct

    worst: dict[str, np.ndarray] = {}
    for per_target in outcomes.values():
        for target, correct in per_target.items():
            worst[target] = worst[target] & correct if target in worst else correct

    clean_accuracy, clean_interval = _accuracy_and_interval(clean)
    attacks = {attack: _attack_metrics(per_target) for attack, per_target in outcomes.items()}
    if worst:
        attacks[WORST] = _attack_metrics(worst)
    return {"clean": clean_accuracy, "clean_ci": clean_interval, "n": int(clean.size), "attacks": attacks}


def relative_improvement(clean: float, avg: float, clean_ref: float, avg_ref: float) -> float:
    """RI = (✓RS + Avg) − (✓RS + Avg of the reference), in percentage points.

    Tian & Xu, CVPR 2021; Eq. 14 of the AMR paper. The reference is the
    undefended model (``none``), so a defense that costs clean accuracy pays
    for it here.
    """
    return (clean + avg) - (clean_ref + avg_ref)


def fill_ri(metrics: Mapping[str, Any], reference_metrics: Mapping[str, Any],
            reference_run: str | None = None) -> dict[str, Any]:
    """A copy of ``metrics`` with ``ri`` set per attack against ``reference_metrics``.

    Each attack is compared with the same attack of the reference. Where the
    reference lacks that attack, or attacked other targets (so its Avg means
    something else), ``ri`` stays None and ``ri_reference.note`` says why.
    """
    filled = copy.deepcopy(dict(metrics))
    reference_attacks = reference_metrics.get("attacks", {})
    problems = []
    for attack, entry in filled.get("attacks", {}).items():
        reference = reference_attacks.get(attack)
        entry["ri"] = None
        if reference is None:
            problems.append(f"reference has no {attack}")
        elif _targets(reference) != _targets(entry):
            problems.append(f"{attack}: targets {'/'.join(_targets(entry))} vs reference "
                            f"{'/'.join(_targets(reference))}")
        else:
            entry["ri"] = relative_improvement(filled["clean"], entry["avg"],
                                               reference_metrics["clean"], reference["avg"])
    filled["ri_reference"] = {"run": reference_run, "clean": reference_metrics["clean"],
                              "note": "; ".join(problems) or None}
    return filled


def _targets(entry: Mapping[str, Any]) -> list[str]:
    return sorted(key for key in entry if key not in ("avg", "ri", "ci"))
