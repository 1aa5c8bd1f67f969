"""Seeds as an axis: intervals over seeds and samples, paired tests, one leaderboard row per defense, the
claims report, and `sweep --seeds`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmrobust import claims, stats
from mmrobust.cli import _seeds, cli
from mmrobust.leaderboard import build_table, load_records, render
from mmrobust.metrics import robust_metrics, wilson_interval
from mmrobust.results import SCHEMA

SAMPLES = 300


# -- statistics -------------------------------------------------------------------

def test_one_seed_interval_is_the_binomial_one():
    rng = np.random.default_rng(0)
    scores = (rng.random((1, 1000)) < 0.3).astype(float)
    summary = stats.summarize(scores)
    low, high = wilson_interval(int(scores.sum()), 1000)
    assert summary.mean == pytest.approx(100 * scores.mean())
    assert np.isnan(summary.spread) and summary.seeds == 1
    assert summary.low == pytest.approx(low, abs=0.6) and summary.high == pytest.approx(high, abs=0.6)


def test_the_interval_covers_at_its_level():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        summary = stats.summarize((rng.random((1, SAMPLES)) < 0.4).astype(float))
        covered += summary.low <= 40.0 <= summary.high
    assert 0.90 <= covered / 200 <= 0.99


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    base = (rng.random((3, SAMPLES)) < 0.5).astype(float)
    steady = stats.summarize(base)
    shifted = base.copy()  # same overall mean, seeds now far apart
    shifted[0, :60], shifted[2, :60] = 1.0, 0.0
    shifted[0, 60:120], shifted[2, 60:120] = 1.0, 0.0
    spread = stats.summarize(shifted)
    assert spread.spread > 3 * steady.spread
    assert spread.high - spread.low > 1.5 * (steady.high - steady.low)
    per_seed = 100 * shifted.mean(axis=1)
    assert spread.spread == pytest.approx(np.std(per_seed, ddof=1))


def test_paired_comparison():
    rng = np.random.default_rng(3)
    first = (rng.random((3, SAMPLES)) < 0.5).astype(float)
    same = stats.compare(first, first)
    assert (same.difference, same.low, same.high, same.p_value, same.significant) == (0.0, 0.0, 0.0, 1.0, False)
    better = first.copy()
    better[:, :45] = 1.0  # 15 points more on the same clips
    test = stats.compare(better, first)
    assert test.significant and test.p_value < 0.01 and test.low > 0
    assert test.difference == pytest.approx(100 * (better.mean() - first.mean()))
    # Pairing by sample is what resolves it: the same rows compared as unrelated samples would not be.
    noise = (rng.random((3, SAMPLES)) < 0.5).astype(float)
    assert not stats.compare(noise, first).significant
    assert stats.compare(first, better).high < 0


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="different numbers of samples"):
        stats.compare(np.ones((1, 3)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        stats.summarize(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="seeds, samples"):
        stats.summarize(np.ones(3))
    with pytest.raises(ValueError, match="as many seeds"):
        stats.compare(np.ones((2, 3)), np.ones((3, 3)), paired_seeds=True)


# -- records over seeds -------------------------------------------------------------

def write_record(root: Path, defense: str, seed: int, clean: np.ndarray, robust: dict[str, np.ndarray],
                 protocol: str = "standard-v1", attack: str = "pgd20") -> Path:
    """A record whose metrics come from outcome arrays it keeps beside it, as a run writes them."""
    directory = root / "records"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{defense.replace('+', '_')}-tiny-s{seed}" + ("" if protocol == "standard-v1" else f".{protocol}")
    robust = {target: correct & clean for target, correct in robust.items()}
    np.savez(directory / f"{stem}.outcomes.npz", labels=np.zeros(len(clean), dtype=np.int64), clean=clean,
             **{f"{attack}/{target}": correct for target, correct in robust.items()})
    record = {"schema": SCHEMA, "dataset": "synthetic", "split": "subject", "defense": defense, "preset": "tiny",
              "modalities": ["rgb", "skeleton"], "protocol": protocol, "protocol_settings": {"eps": 8 / 255},
              "config": {"seed": seed}, "metrics": robust_metrics(clean, {attack: robust}),
              "flags": {"surrogate_used": False}, "provenance": {"finished_at": 1000.0 + seed},
              "data": {"fingerprint": "abc"}, "evaluation": {"outcomes": f"{stem}.outcomes.npz"}}
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(record))
    return path


def outcomes(rng: np.random.Generator, clean: float, robust: dict[str, float]) -> tuple[np.ndarray, dict]:
    correct = rng.random(SAMPLES) < clean
    return correct, {target: rng.random(SAMPLES) < rate for target, rate in robust.items()}


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """none, at-r, at-s and amr over seeds 0-2; none's clean accuracy differs by seed."""
    rng = np.random.default_rng(4)
    plan = {"none": (0.95, {"R": 0.02, "S": 0.1, "RS": 0.0}),
            "at-r": (0.8, {"R": 0.7, "S": 0.05, "RS": 0.04}),
            "at-s": (0.8, {"R": 0.02, "S": 0.7, "RS": 0.02}),
            "amr": (0.8, {"R": 0.7, "S": 0.7, "RS": 0.6})}
    for seed in range(3):
        for defense, (clean, robust) in plan.items():
            if defense == "none":
                clean = 0.95 - 0.1 * seed
            write_record(tmp_path, defense, seed, *outcomes(rng, clean, robust))
    return tmp_path


def test_one_row_per_defense_with_mean_spread_and_interval(seeded):
    records = load_records([seeded])
    table = build_table(records, "synthetic").set_index("defense")
    assert sorted(table.index) == ["amr", "at-r", "at-s", "none"]
    per_seed = [r for r in records if r.defense == "amr"]
    values = [r.metrics["attacks"]["pgd20"]["avg"] for r in per_seed]
    amr = table.loc["amr"]
    assert amr["Avg"] == pytest.approx(np.mean(values))
    assert amr["Avg sd"] == pytest.approx(np.std(values, ddof=1))
    assert amr["Avg low"] < amr["Avg"] < amr["Avg high"]
    assert amr["seeds"] == "0,1,2"
    assert amr["run"].endswith("records/amr-tiny-s{0,1,2}.json")


def test_ri_is_per_seed_against_the_same_seeds_reference(seeded):
    records = load_records([seeded])
    table = build_table(records, "synthetic").set_index("defense")
    by = {(r.defense, r.seed): r.metrics for r in records}
    expected = np.mean([(by["amr", s]["clean"] + by["amr", s]["attacks"]["pgd20"]["avg"])
                        - (by["none", s]["clean"] + by["none", s]["attacks"]["pgd20"]["avg"]) for s in range(3)])
    assert table.loc["amr", "RI"] == pytest.approx(expected)
    # none's clean accuracy moves 10 points a seed: against seed 0's none for every seed RI would differ
    wrong = np.mean([(by["amr", s]["clean"] + by["amr", s]["attacks"]["pgd20"]["avg"])
                     - (by["none", 0]["clean"] + by["none", 0]["attacks"]["pgd20"]["avg"]) for s in range(3)])
    assert abs(wrong - expected) > 5
    assert table.loc["none", "RI"] == pytest.approx(0.0) and table.loc["none", "RI sd"] == pytest.approx(0.0)


def test_vs_above_marks_only_resolved_differences(seeded, tmp_path):
    table = build_table(load_records([seeded]), "synthetic")
    assert list(table["defense"][:3]) == ["amr", "at-r", "at-s"] or list(table["defense"][:3]) == \
        ["amr", "at-s", "at-r"]
    assert table["vs above"].iloc[0] == ""
    assert table["vs above"].iloc[1].startswith("< ")   # amr is far above both
    assert table["vs above"].iloc[2].startswith("≈ ")   # at-r and at-s are the same recipe, mirrored
    text = render(table, "md")
    assert "± " in text and "95 % intervals" in text


def test_one_seed_without_outcomes_still_ranks(tmp_path):
    rng = np.random.default_rng(5)
    path = write_record(tmp_path, "amr", 0, *outcomes(rng, 0.8, {"R": 0.5, "S": 0.5, "RS": 0.4}))
    (path.parent / "amr-tiny-s0.outcomes.npz").unlink()
    table = build_table(load_records([tmp_path]), "synthetic")
    row = table.iloc[0]
    stored = json.loads(path.read_text())["metrics"]
    assert row["✓RS"] == pytest.approx(stored["clean"]) and np.isnan(row["✓RS sd"])
    assert [row["✓RS low"], row["✓RS high"]] == pytest.approx(stored["clean_ci"])   # the record's own interval
    assert np.isnan(row["Avg low"])  # no per-sample scores: no interval is invented


def test_tampered_metrics_lose_their_interval(tmp_path):
    rng = np.random.default_rng(6)
    path = write_record(tmp_path, "amr", 0, *outcomes(rng, 0.8, {"R": 0.5, "S": 0.5, "RS": 0.4}))
    record = json.loads(path.read_text())
    record["metrics"]["attacks"]["pgd20"]["avg"] += 10  # no longer what the outcomes say
    path.write_text(json.dumps(record))
    row = build_table(load_records([tmp_path]), "synthetic").iloc[0]
    assert np.isnan(row["Avg low"])


# -- claims --------------------------------------------------------------------------

def test_claims_report(seeded):
    report = claims.judge(load_records([seeded]), "synthetic")
    verdicts = {v.label: v.verdict for v in report.verdicts}
    assert verdicts["b"] == claims.HOLDS          # at-r gains ✗R only, at-s ✗S only
    assert verdicts["c"] == claims.UNMEASURED     # no at-rs records
    assert verdicts["d"] == claims.UNMEASURED
    assert verdicts["e"] == claims.HOLDS          # amr best on ✗RS, Avg and RI by far
    assert report.seeds == "0,1,2" and report.samples == SAMPLES
    text = claims.render([report])
    assert "| (b) at-r is robust on ✗R only, at-s on ✗S only | **holds** |" in text
    assert "at-r ✗R − none: +" in text


def test_claims_judge_the_defenses_of_one_recipe_against_their_reference(seeded):
    """A warm-start leaderboard with a held-out part: every defense but the reference trained by one recipe,
    the reference from scratch with the same held-out share. A row of another recipe is not judged."""
    for path in (seeded / "records").glob("*.json"):
        record = json.loads(path.read_text())
        start = "scratch" if record["defense"] == "none" else "warm-start"
        record["config"] = {**record["config"], "recipe": start, "holdout": 0.2}
        path.write_text(json.dumps(record))
    rng = np.random.default_rng(9)
    write_record(seeded / "scratch", "at-rs", 0, *outcomes(rng, 0.9, {"R": 0.8, "S": 0.8, "RS": 0.8}))
    report = claims.judge(load_records([seeded]), "synthetic")
    verdicts = {v.label: v.verdict for v in report.verdicts}
    assert report.recipe == "warm-start, holdout 0.2"
    assert (verdicts["b"], verdicts["c"], verdicts["e"]) == (claims.HOLDS, claims.UNMEASURED, claims.HOLDS)
    assert f"{SAMPLES} test clips, recipe warm-start, holdout 0.2 (`none` from scratch)" in claims.render([report])


def test_a_claim_fails_when_its_numbers_contradict_it(seeded):
    rng = np.random.default_rng(7)
    for seed in range(3):  # at-rs far better than amr on ✗RS: claim (e) cannot hold
        write_record(seeded, "at-rs", seed, *outcomes(rng, 0.9, {"R": 0.8, "S": 0.8, "RS": 0.8}))
    verdicts = {v.label: v.verdict for v in claims.judge(load_records([seeded]), "synthetic").verdicts}
    assert verdicts["e"] == claims.FAILS
    assert verdicts["c"] == claims.HOLDS


def test_too_few_samples_leave_a_claim_open(tmp_path):
    def hits(count: int) -> np.ndarray:
        return np.arange(20) < count

    # 20 clips: at-r gains 15 points on ✗R and at-s on ✗S, each interval still reaching below 0
    rates = {"none": (1, 2, 0), "at-r": (4, 2, 0), "at-s": (1, 5, 0)}
    for defense, (r, s, rs) in rates.items():
        write_record(tmp_path, defense, 0, np.ones(20, dtype=bool), {"R": hits(r), "S": hits(s), "RS": hits(rs)})
    report = claims.judge(load_records([tmp_path]), "synthetic")
    (b,) = [v for v in report.verdicts if v.label == "b"]
    assert b.verdict == claims.OPEN, b.evidence


def test_leaderboard_claims_command(seeded, tmp_path):
    out = tmp_path / "boards"
    result = CliRunner().invoke(cli, ["leaderboard", "--dataset", "synthetic", "--claims", "--records",
                                      str(seeded), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AMR has the best ✗RS, Avg and RI | **holds**" in result.output
    assert (out / "synthetic" / "claims.md").read_text() == claims.render(
        claims.report_protocols(load_records([seeded]), "synthetic"))


# -- sweep --seeds -----------------------------------------------------------------------

@pytest.mark.parametrize(("option", "seed", "more", "expected"), [
    (None, None, (), [0]), (None, 3, (), [3]), ("0", None, (1, 2), [0, 1, 2]), ("0,1,2", None, (), [0, 1, 2])])
def test_seed_options(option, seed, more, expected):
    assert _seeds(option, seed, more) == expected


@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "1", "1"], "distinct"), (["--seeds", "a"], "not a list of integers"),
    (["--seeds", "0", "--seed", "1"], "not both"), (["5"], "seeds go after --seeds")])
def test_bad_seed_options_are_refused_before_any_work(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["sweep", "--runs", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "runs").exists()


def test_gradient_masking_found_by_strong_v1_is_shown_beside_the_standard_row(tmp_path):
    rng = np.random.default_rng(9)
    clean, robust = outcomes(rng, 0.9, {"R": 0.1, "S": 0.7, "RS": 0.05})
    write_record(tmp_path, "minsim", 0, clean, robust)
    strong = write_record(tmp_path, "minsim", 0, clean, {t: v & (rng.random(SAMPLES) < 0.5)
                                                         for t, v in robust.items()},
                          protocol="strong-v1", attack="apgd-ce")
    record = json.loads(strong.read_text())
    record["flags"]["indicators"] = {"gradients_available": False, "loss_rises": True}
    strong.write_text(json.dumps(record))
    row = build_table(load_records([tmp_path]), "synthetic").iloc[0]
    assert row["flags"] == "strong-v1:attack-failure!(gradients_available)"
    assert not np.isnan(row["strong-v1 Avg"])
