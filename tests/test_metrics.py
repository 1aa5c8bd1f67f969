"""Accuracies, Wilson intervals, the worst case over attacks, and RI (AMR paper Eq. 14)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmrobust.metrics import accuracy, fill_ri, relative_improvement, robust_metrics, wilson_interval


def test_ri_reproduces_amr_on_ntu_from_table_2():
    # AMR: ✓RS 81.65, Avg 71.82; none: ✓RS 88.09, Avg 4.69; RI printed as 60.69.
    assert math.isclose(relative_improvement(81.65, 71.82, 88.09, 4.69), 60.69, rel_tol=1e-9)


@pytest.mark.parametrize("successes, n, expected", [
    (8, 10, (49.02, 94.33)),
    (0, 10, (0.00, 27.75)),
    (10, 10, (72.25, 100.00)),
    (500, 1000, (46.91, 53.09)),
])
def test_wilson_interval_matches_known_values(successes, n, expected):
    lower, upper = wilson_interval(successes, n)
    assert (round(lower, 2), round(upper, 2)) == expected


def test_wilson_interval_is_exact_at_the_ends_and_contains_the_estimate():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 100.0
    for n in (1, 7, 270):
        for successes in range(n + 1):
            lower, upper = wilson_interval(successes, n)
            assert 0.0 <= lower <= 100 * successes / n <= upper <= 100.0


@pytest.mark.parametrize("successes, n", [(0, 0), (3, 2), (-1, 5)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


def test_accuracy_is_a_percentage_and_refuses_empty_input():
    assert accuracy(np.array([True, False, True, True])) == 75.0
    with pytest.raises(ValueError, match="empty"):
        accuracy(np.array([], dtype=bool))


def _outcomes(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < 0.9
    survival = {"fgsm": (0.6, 0.8, 0.5), "pgd20": (0.3, 0.7, 0.2), "cw30": (0.35, 0.6, 0.25)}
    return clean, {attack: {target: clean & (rng.random(n) < keep)
                            for target, keep in zip(("R", "S", "RS"), keeps, strict=True)}
                   for attack, keeps in survival.items()}


def test_robust_metrics_layout_and_values():
    clean, robust = _outcomes()
    metrics = robust_metrics(clean, robust)
    assert metrics["n"] == 200
    assert metrics["clean"] == pytest.approx(100 * clean.mean())
    assert metrics["clean_ci"][0] <= metrics["clean"] <= metrics["clean_ci"][1]
    assert list(metrics["attacks"]) == ["fgsm", "pgd20", "cw30", "worst"]
    for attack, per_target in robust.items():
        entry = metrics["attacks"][attack]
        for target, correct in per_target.items():
            assert entry[target] == pytest.approx(100 * correct.mean())
            assert entry["ci"][target][0] <= entry[target] <= entry["ci"][target][1]
        assert entry["ri"] is None


def test_avg_is_the_mean_of_the_targets():
    metrics = robust_metrics(*_outcomes())
    for entry in metrics["attacks"].values():
        assert entry["avg"] == pytest.approx(np.mean([entry["R"], entry["S"], entry["RS"]]))


def test_worst_case_is_per_sample_and_below_every_attack():
    clean, robust = _outcomes()
    metrics = robust_metrics(clean, robust)
    worst = metrics["attacks"]["worst"]
    for target in ("R", "S", "RS"):
        for attack in robust:
            assert worst[target] <= metrics["attacks"][attack][target]
        survived_all = np.logical_and.reduce([robust[a][target] for a in robust])
        assert worst[target] == pytest.approx(100 * survived_all.mean())
    # Pointwise, not the minimum of the aggregates: two attacks fooling disjoint halves leave nothing.
    clean = np.ones(4, dtype=bool)
    split = robust_metrics(clean, {"a": {"R": np.array([1, 1, 0, 0], bool)}, "b": {"R": np.array([0, 0, 1, 1], bool)}})
    assert split["attacks"]["worst"]["R"] == 0.0


def test_unimodal_model_has_only_its_targets():
    clean = np.array([True, True, False, True])
    metrics = robust_metrics(clean, {"pgd20": {"R": np.array([True, False, False, False])}})
    assert set(metrics["attacks"]["pgd20"]) == {"R", "avg", "ri", "ci"}
    assert metrics["attacks"]["pgd20"]["avg"] == 25.0


@pytest.mark.parametrize("robust, message", [
    ({"pgd20": {"R": np.ones(3, bool)}}, "outcomes for 4 samples"),
    ({"pgd20": {"R": np.array([1, 1, 1, 1], bool)}}, "misclassified clean"),
    ({"worst": {"R": np.zeros(4, bool)}}, "reserved"),
    ({"pgd20": {}}, "no targets"),
])
def test_robust_metrics_rejects_inconsistent_outcomes(robust, message):
    with pytest.raises(ValueError, match=message):
        robust_metrics(np.array([True, True, False, True]), robust)


def test_fill_ri_uses_the_same_attack_of_the_reference_and_copies():
    clean, robust = _outcomes(seed=1)
    defended = robust_metrics(clean, robust)
    reference = robust_metrics(*_outcomes(seed=2))
    filled = fill_ri(defended, reference, reference_run="runs/synthetic/none-tiny-s0")
    for attack, entry in filled["attacks"].items():
        expected = (defended["clean"] + entry["avg"]) - (reference["clean"] + reference["attacks"][attack]["avg"])
        assert entry["ri"] == pytest.approx(expected)
    assert filled["ri_reference"] == {"run": "runs/synthetic/none-tiny-s0", "clean": reference["clean"], "note": None}
    assert all(entry["ri"] is None for entry in defended["attacks"].values())  # input untouched
    assert fill_ri(reference, reference)["attacks"]["pgd20"]["ri"] == 0.0


def test_fill_ri_leaves_ri_empty_where_the_reference_cannot_compare():
    clean = np.array([True, True, True, False])
    model = robust_metrics(clean, {"pgd20": {"R": clean}, "fgsm": {"R": clean}})
    reference = robust_metrics(clean, {"pgd20": {"R": clean, "S": clean, "RS": clean}})
    filled = fill_ri(model, reference)
    assert filled["attacks"]["pgd20"]["ri"] is None and filled["attacks"]["fgsm"]["ri"] is None
    assert "reference has no fgsm" in filled["ri_reference"]["note"]
    assert "targets" in filled["ri_reference"]["note"]
