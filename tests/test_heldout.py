"""Held-out curves: which samples are held out, that scoring them leaves training untouched, the
convergence rule and its flag, and `mmrobust plot-training`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmrobust.cli import cli
from mmrobust.config import RunConfig
from mmrobust.leaderboard import build_table, converged, load_records
from mmrobust.registry import DATASETS
from mmrobust.results import Record
from mmrobust.run import heldout_mask, hold_out, prepare
from mmrobust.sweep import publish
from mmrobust.training import convergence, recipe_convergence, train


@pytest.fixture(scope="module")
def bundle(small_synthetic_module):
    from mmrobust.presets import get_preset

    return DATASETS.get(small_synthetic_module)().load(get_preset("tiny").data_request())


def test_whole_subjects_are_held_out_the_same_for_every_seed(bundle):
    held = heldout_mask(bundle, 0.2)
    subjects = np.unique(bundle.train_subjects)
    chosen = np.unique(bundle.train_subjects[held])
    assert len(chosen) == round(0.2 * len(subjects))
    assert not np.isin(bundle.train_subjects[~held], chosen).any()   # whole subjects
    assert np.array_equal(held, heldout_mask(bundle, 0.2))           # from the data alone
    kept, heldout = hold_out(bundle, 0.2)
    assert len(kept) == int((~held).sum()) and len(heldout) == int(held.sum())
    assert np.array_equal(heldout.labels, bundle.train.labels[held])
    assert hold_out(bundle, 0.0) == (bundle.train, None) and heldout_mask(bundle, 0.0) is None


def test_holdout_needs_two_subjects(bundle):
    import dataclasses

    one = dataclasses.replace(bundle, train_subjects=np.zeros(len(bundle.train), dtype=np.int64))
    with pytest.raises(ValueError, match="at least 2 training subjects"):
        hold_out(one, 0.2)
    wrong = dataclasses.replace(bundle, train_subjects=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="3 training subjects for"):
        hold_out(wrong, 0.2)


def test_scoring_the_held_out_split_leaves_the_weights_unchanged(small_synthetic_module, tmp_path):
    """The validation pass forks the RNG and runs in eval mode: a run with it reaches the same weights."""
    config = RunConfig(dataset=small_synthetic_module, defense="none", epochs=1, seed=3)
    weights = []
    for index, validate in enumerate([None, lambda model: {"heldout_clean": float(torch.rand(1))}]):
        exp = prepare(config, progress=False)
        kept, _ = hold_out(exp.data, 0.2)
        run_dir = tmp_path / str(index)
        run_dir.mkdir()
        result = train(exp.model, exp.defense, kept, exp.config, 2, run_dir, device=torch.device("cpu"),
                       progress=False, validate=validate)
        weights.append({k: v.clone() for k, v in exp.model.state_dict().items()})
        assert ("heldout_clean" in result.history[-1]) == (validate is not None)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(("clean", "robust", "expected"), [
    ([10, 50, 70, 80, 80.5, 80.2, 80.9, 80.8], [0, 5, 20, 30, 31, 31.5, 31.2, 31.9], True),
    ([10, 50, 70, 80, 80.5, 80.2, 80.9, 81.6], [0, 5, 20, 30, 31, 31.5, 31.2, 31.9], False),   # clean +1.4
    ([10, 50, 70, 80, 80.5, 80.2, 80.9, 80.8], [0, 5, 20, 30, 31, 33.5, 31.2, 29.4], False),   # robust -4.1
])
def test_the_last_quarter_decides_convergence(clean, robust, expected):
    """Over a quarter of 2 epochs the line runs through the end points: the last epoch minus the one
    before the quarter."""
    history = [{"epoch": i, "loss": 1.0, "heldout_clean": c, "heldout_avg": r}
               for i, (c, r) in enumerate(zip(clean, robust, strict=True))]
    found = convergence(history)
    assert found["window"] == 2 and found["converged"] is expected
    assert found["changes"]["heldout_clean"] == pytest.approx(clean[-1] - clean[-3])
    assert found["changes"]["heldout_avg"] == pytest.approx(robust[-1] - robust[-3])


@pytest.mark.parametrize(("robust", "change", "expected"), [
    # a flat, noisy last quarter: the end points differ by 1.0 point, the line through all five by -0.8
    ([0, 20, 28, 30, 31, 31, 31, 31, 31, 31, 31, 31, 33, 31, 29, 32], -0.8, True),
    ([0, 20, 28, 30, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31.5, 32, 32.5], 1.6, False),  # a steady rise
    ([0, 20, 28, 30, 31, 31, 31, 31, 31, 31, 31, 31, 32, 31, 30, 29], -2.4, False),    # a steady fall
])
def test_convergence_reads_every_epoch_of_the_last_quarter(robust, change, expected):
    history = [{"epoch": i, "loss": 1.0, "heldout_clean": 90.0, "heldout_avg": r} for i, r in enumerate(robust)]
    found = convergence(history)
    assert found["window"] == 4 and found["converged"] is expected
    assert found["changes"]["heldout_avg"] == pytest.approx(change)
    assert found["changes"]["heldout_clean"] == pytest.approx(0.0)
    assert convergence([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]) is None


def test_a_run_with_holdout_logs_curves_and_an_unconverged_one_is_flagged(small_synthetic_module, tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--dataset", small_synthetic_module, "--epochs", "2", "--holdout",
                                      "0.2", "--holdout-steps", "2", "--attacks", "fgsm", "--run-dir",
                                      str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert {"heldout_clean", "heldout_R", "heldout_S", "heldout_RS", "heldout_avg"} <= set(rows[-1])
    (path,) = run_dir.glob("result-*.json")
    record = json.loads(path.read_text())
    heldout = record["training"]["heldout"]
    assert heldout["share"] == 0.2 and 0 < heldout["size"] < record["data"]["train_size"]
    assert record["training"]["convergence"]["window"] == 1
    # two epochs from scratch move the held-out accuracy by far more than a point: the leaderboard says so
    assert record["training"]["convergence"]["converged"] is False
    table = build_table(load_records([run_dir]), small_synthetic_module, protocol=record["protocol"],
                        attack="fgsm")
    assert "unconverged!" in table["flags"].iloc[0]

    # Published, the record carries its curves and their verdict by the rule as it is now, whatever
    # verdict the run's own record was made with.
    path.write_text(json.dumps({**record, "training": {**record["training"], "convergence": {"converged": True}}}))
    copy = publish(Record.load(path), run_dir, tmp_path / "records")
    assert copy.training["convergence"] == convergence(rows) and copy.training["convergence"]["converged"] is False
    assert (tmp_path / "records" / copy.training["log"]).read_bytes() == (run_dir / "train_log.jsonl").read_bytes()

    plotted = CliRunner().invoke(cli, ["plot-training", "--run-dir", str(run_dir), "--out",
                                       str(tmp_path / "curves.png")])
    assert plotted.exit_code == 0, plotted.output
    assert "not converged" in plotted.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_plot_training_names_a_folder_without_a_log(tmp_path):
    result = CliRunner().invoke(cli, ["plot-training", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "train_log.jsonl: no training log" in result.output


def test_holdout_out_of_range_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--holdout", "0.9", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--holdout" in result.output
    with pytest.raises(ValueError, match="holdout"):
        RunConfig(holdout=0.7)


def test_a_published_training_log_is_judged_by_the_rule_as_it_is_now(tmp_path):
    """A record made under an older rule says "converged"; the log published beside it says otherwise
    under today's rule, and the log decides. Without a log, the record's own verdict stands."""
    committed = Path(__file__).resolve().parent.parent / "leaderboards" / "synthetic" / "records"
    record = json.loads((committed / "none-tiny-s0.json").read_text())
    rising = [31.0] * 11 + [31.0, 31.5, 32.0, 32.5]  # +1.6 over the last quarter by the line, +0.5 per epoch
    log = "\n".join(json.dumps({"epoch": i, "loss": 1.0, "heldout_clean": 90.0, "heldout_avg": value})
                    for i, value in enumerate([0.0] + rising))
    (tmp_path / "run.train_log.jsonl").write_text(log + "\n")
    stale = {"window": 4, "changes": {"heldout_clean": 0.0, "heldout_avg": 0.5}, "limit": 1.0, "converged": True}
    for name, training in [("logged", {**record["training"], "convergence": stale, "log": "run.train_log.jsonl"}),
                           ("unlogged", {**record["training"], "convergence": stale})]:
        (tmp_path / f"{name}.json").write_text(json.dumps({**record, "training": training}))
    assert converged(Record.load(tmp_path / "logged.json")) is False
    assert converged(Record.load(tmp_path / "unlogged.json")) is True
    assert converged(Record.load(committed / "none-tiny-s0.json")) is None  # trained without a held-out part


def _seed_records(tmp_path: Path, curves: list[list[float]]) -> list[Record]:
    """The committed none-tiny-s0 record once per training seed, each with ``curves[seed]`` published as its
    held-out robust Avg (clean flat)."""
    committed = Path(__file__).resolve().parent.parent / "leaderboards" / "synthetic" / "records"
    record = json.loads((committed / "none-tiny-s0.json").read_text())
    folder = tmp_path / "records"
    folder.mkdir()
    for seed, robust in enumerate(curves):
        log = f"s{seed}.train_log.jsonl"
        (folder / log).write_text("".join(json.dumps({"epoch": i, "loss": 1.0, "heldout_clean": 90.0,
                                                        "heldout_avg": value}) + "\n"
                                            for i, value in enumerate(robust)))
        (folder / f"none-tiny-s{seed}.json").write_text(json.dumps({
            **record, "config": {**record["config"], "seed": seed},
            "provenance": {**record["provenance"], "seed": seed},
            "evaluation": {**record["evaluation"], "outcomes": None},
            "training": {**record["training"], "log": log}}))
    return load_records([folder])


FLAT = [0, 20, 28, 30] + [31.0] * 12
NOISY = [0, 20, 28, 30] + [31.0] * 8 + [30.5, 31.0, 31.5, 32.5]      # +1.6 by its line: noise of one seed
RISING = [0, 20, 28, 30] + [31.0] * 8 + [31.0, 31.5, 32.0, 32.5]     # +1.6: a recipe still learning


@pytest.mark.parametrize(("curves", "flagged"), [
    ([FLAT, FLAT, NOISY], False),       # one seed's trend over the line, the recipe's (+0.53) under it
    ([RISING, RISING, NOISY], True),    # every seed rising: the recipe has not converged
    ([NOISY], True),                    # one seed is the recipe
])
def test_a_recipe_is_judged_on_the_mean_curve_of_its_seeds(tmp_path, curves, flagged):
    records = _seed_records(tmp_path, curves)
    assert [converged(r) for r in sorted(records, key=lambda r: r.seed)] == [
        convergence([{"heldout_clean": 90.0, "heldout_avg": v} for v in c])["converged"] for c in curves]
    found = recipe_convergence([[{"heldout_clean": 90.0, "heldout_avg": v} for v in c] for c in curves])
    assert found["seeds"] == len(curves) and found["converged"] is not flagged
    assert found["changes"]["heldout_avg"] == pytest.approx(np.mean(
        [convergence([{"heldout_clean": 90.0, "heldout_avg": v} for v in c])["changes"]["heldout_avg"]
         for c in curves]))
    (row,) = build_table(records, "synthetic").to_dict("records")[:1]
    assert row["seeds"] == ",".join(str(seed) for seed in range(len(curves)))
    assert ("unconverged!" in row["flags"]) is flagged


def test_runs_of_different_lengths_are_not_averaged():
    short = [{"heldout_clean": 90.0, "heldout_avg": v} for v in FLAT[:8]]
    assert recipe_convergence([short, [{"heldout_clean": 90.0, "heldout_avg": v} for v in FLAT]]) is None
    assert recipe_convergence([[{"heldout_clean": 90.0}] * 16]) is None

