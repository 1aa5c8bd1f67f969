"""The standard-v1 protocol: per-sample outcomes, resumable cells, names, and the user-facing commands."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mmrobust
from mmrobust import protocol as protocol_module
from mmrobust.cli import cli
from mmrobust.datasets.base import Split
from mmrobust.files import write_json
from mmrobust.metrics import robust_metrics
from mmrobust.presets import PRESETS, build_model
from mmrobust.protocol import AttackSetting, Protocol, evaluate, get_protocol, parse_eps, target_sets
from mmrobust.results import OutcomeStore, outcome_key

SHAPES = {"rgb": (3, 8, 32, 32), "skeleton": (3, 32, 25, 1)}
# standard-v1's attacks with fewer steps, to keep these tests quick
QUICK = Protocol("quick", 8 / 255, (
    AttackSetting("fgsm", "fgsm"),
    AttackSetting("pgd20", "pgd", (("steps", 4), ("rel_step", 0.25), ("random_start", True))),
    AttackSetting("cw30", "cw-inf", (("steps", 4), ("rel_step", 0.25), ("random_start", True))),
))


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def small_problem():
    """A tiny two-stream model and 24 clips it mostly gets right (labels are its own predictions,
    with a few flipped so some samples are misclassified clean)."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], SHAPES, 4).eval()
    arrays = {m: np.random.default_rng(1).random((24, *s), dtype=np.float32) for m, s in SHAPES.items()}
    with torch.no_grad():
        predicted = model({m: torch.from_numpy(a) for m, a in arrays.items()}).logits.argmax(1).numpy()
    labels = predicted.copy()
    labels[:4] = (labels[:4] + 1) % 4
    return model, Split({**arrays, "label": labels.astype(np.int64)})


def test_targets_are_each_modality_then_all():
    assert target_sets(("rgb", "skeleton")) == {"R": ("rgb",), "S": ("skeleton",), "RS": ("rgb", "skeleton")}
    assert target_sets(("rgb",)) == {"R": ("rgb",)}


def test_outcomes_are_kept_per_sample_and_metrics_follow_from_them(small_problem):
    model, data = small_problem
    result = evaluate(model, data, QUICK, batch_size=8)
    assert result.clean.shape == (24,) and not result.clean[:4].any() and result.clean[4:].all()
    assert set(result.robust) == {"fgsm", "pgd20", "cw30"}
    for per_target in result.robust.values():
        assert set(per_target) == {"R", "S", "RS"}
        for robust in per_target.values():
            assert robust.shape == (24,) and not (robust & ~result.clean).any()  # wrong clean ⇒ not robust
    metrics = robust_metrics(result.clean, result.robust)
    assert metrics["clean"] == pytest.approx(100 * 20 / 24)
    assert metrics["attacks"]["pgd20"]["RS"] == pytest.approx(100 * result.robust["pgd20"]["RS"].mean())
    assert result.audit["within_budget"] and result.audit["untargeted_untouched"]
    assert result.cost["gradient_passes"] > 0


def test_results_do_not_depend_on_the_evaluation_batch_size(small_problem):
    model, data = small_problem
    runs = [evaluate(model, data, QUICK, batch_size=size) for size in (1, 7, 64)]
    for other in runs[1:]:
        for key in runs[0].robust:
            for code in runs[0].robust[key]:
                assert np.array_equal(runs[0].robust[key][code], other.robust[key][code]), (key, code)


def test_interrupted_evaluation_resumes_from_finished_cells(small_problem, tmp_path, monkeypatch):
    model, data = small_problem
    state = tmp_path / "outcomes.npz"
    uninterrupted = evaluate(model, data, QUICK, batch_size=8)

    real = protocol_module._attack_cell
    calls = []
    crash = [True]

    def crash_on_fourth(*args, **kwargs):
        calls.append(args[2].key)
        if crash[0] and len(calls) == 4:
            crash[0] = False
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol_module, "_attack_cell", crash_on_fourth)
    store_key = outcome_key(model, QUICK, "d", len(data))
    with pytest.raises(Interrupted):
        evaluate(model, data, QUICK, batch_size=8, store=OutcomeStore(state, store_key))
    assert state.is_file()
    calls.clear()
    resumed = evaluate(model, data, QUICK, batch_size=8, store=OutcomeStore(state, store_key))
    assert len(calls) == 9 - 3  # the three finished cells were not attacked again
    for key in uninterrupted.robust:
        for code in uninterrupted.robust[key]:
            assert np.array_equal(resumed.robust[key][code], uninterrupted.robust[key][code])
    # The reused cells keep their checks: the flags are those of an uninterrupted evaluation.
    assert resumed.audit == uninterrupted.audit and resumed.disagreements == uninterrupted.disagreements
    calls.clear()
    store = OutcomeStore(state, store_key)
    store["pgd20/S#checks"] = np.array([0, 1, 2])  # as if that cell had left the budget once
    again = evaluate(model, data, QUICK, batch_size=8, store=store)
    assert calls == [] and again.audit["within_budget"] is False
    assert again.disagreements == uninterrupted.disagreements + 2 and again.audit["verdicts_confirmed"] is False
    calls.clear()
    evaluate(model, data, QUICK, batch_size=8, store=OutcomeStore(state, outcome_key(model, QUICK, "other", len(data))))
    assert len(calls) == 9  # outcomes of other data are never reused


def test_changed_settings_change_the_protocol_name():
    assert get_protocol("standard-v1").name == "standard-v1"
    assert get_protocol("standard-v1", eps=8 / 255).name == "standard-v1"
    changed = get_protocol("standard-v1", eps=4 / 255)
    assert changed.name.startswith("standard-v1~") and changed.eps == pytest.approx(4 / 255)
    assert get_protocol("standard-v1", attacks=("pgd20",)).name != changed.name
    assert get_protocol("standard-v1", attacks=("pgd20",)).name.startswith("standard-v1~")


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.5", 0.5), ("1", 1.0)])
def test_eps_accepts_fractions(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-1/255", "2", "abc", "1/0"])
def test_eps_outside_the_unit_interval_is_refused_by_name(text):
    with pytest.raises(ValueError, match=repr(text).replace("/", "/")):
        parse_eps(text)


def test_unknown_attack_in_a_protocol_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="pgd"):
        get_protocol("standard-v1", attacks=("pdg",))


def test_python_api_evaluates_a_plain_module(small_problem):
    model, data = small_problem

    class Plain(torch.nn.Module):  # returns bare logits, takes the batch dict
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, batch):
            return self.inner(batch).logits

    arrays = {k: torch.from_numpy(np.asarray(v)) for k, v in data.arrays.items()}
    metrics = mmrobust.evaluate(Plain(), arrays, QUICK)
    assert metrics["n"] == 24 and metrics["clean"] == pytest.approx(100 * 20 / 24)
    assert {"fgsm", "pgd20", "cw30", "worst"} <= set(metrics["attacks"])
    assert metrics["attacks"]["pgd20"]["RS"] <= metrics["attacks"]["fgsm"]["RS"] + 100 / 24


def test_a_crash_while_writing_a_record_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json(path, {"version": 1})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# -- commands ------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, small_synthetic_module):
    run_dir = tmp_path_factory.mktemp("protocol") / "runs" / "synthetic" / "none"
    result = invoke("run", "--dataset", small_synthetic_module, "--epochs", 1, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    return result, run_dir


def test_run_prints_the_table_and_writes_the_record(evaluated_run):
    result, run_dir = evaluated_run
    for header in ("✓RS", "✗R", "✗S", "✗RS", "Avg", "RI", "pgd20", "cw30", "fgsm", "worst"):
        assert header in result.output
    record = json.loads((run_dir / "result.json").read_text())
    assert record["protocol"] == "standard-v1"
    for attack in ("fgsm", "pgd20", "cw30", "worst"):
        for target in ("R", "S", "RS", "avg"):
            assert isinstance(record["metrics"]["attacks"][attack][target], float)
        assert "ri" in record["metrics"]["attacks"][attack]
    assert record["metrics"]["attacks"]["pgd20"]["ri"] == 0.0  # none is its own reference
    outcomes = np.load(run_dir / "outcomes.npz")
    assert 100 * outcomes["pgd20/RS"].mean() == pytest.approx(record["metrics"]["attacks"]["pgd20"]["RS"])
    assert all(record["flags"]["sanity"].values()), record["flags"]


def test_eval_reevaluates_without_training_under_another_protocol_name(evaluated_run):
    _, run_dir = evaluated_run
    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    result = invoke("eval", "--run-dir", run_dir, "--eps", "4/255", "--attacks", "fgsm", "--quiet")
    assert result.exit_code == 0, result.output
    records = sorted(p.name for p in run_dir.glob("result-standard-v1~*.json"))
    assert len(records) == 1
    record = json.loads((run_dir / records[0]).read_text())
    assert record["protocol_settings"]["eps"] == pytest.approx(4 / 255)
    assert set(record["metrics"]["attacks"]) == {"fgsm", "worst"}
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == before


def test_leaderboard_shows_the_record_and_never_mixes_protocols(evaluated_run, tmp_path):
    _, run_dir = evaluated_run
    result = invoke("leaderboard", "--records", run_dir, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "synthetic-small" / "standard-v1.md").read_text()
    ranking, intervals = text.split("95 % intervals", 1)  # the ranking, then its interval table
    rows = [line for line in ranking.splitlines() if line.startswith("| none")]
    assert len(rows) == 1 and "| measured" in rows[0]
    assert len([line for line in intervals.splitlines() if line.startswith("| none")]) == 1


@pytest.mark.parametrize("args, needle", [
    (("--attacks", "pdg"), "pdg"),
    (("--eps", "2"), "'2'"),
    (("--eps", "0"), "'0'"),
])
def test_bad_protocol_settings_are_one_line_errors(args, needle, tmp_path):
    result = invoke("run", "--epochs", 1, "--run-dir", tmp_path / "r", "--quiet", *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert needle in result.output
    assert not (tmp_path / "r" / "result.json").exists()


def test_eval_of_a_directory_without_a_model_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    result = invoke("eval", "--run-dir", tmp_path)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "model.pt" in result.output


def test_old_schema_records_are_reported_not_ranked(evaluated_run, tmp_path):
    _, run_dir = evaluated_run
    old = json.loads((run_dir / "result.json").read_text())
    old["schema"] = 1
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "old.json").write_text(json.dumps(old))
    result = CliRunner().invoke(cli, ["leaderboard", "--records", str(tmp_path / "records"),
                                                      "--out", str(tmp_path / "lb")])
    assert result.exit_code != 0
    assert "old.json" in result.stderr and "mmrobust eval" in result.stderr


def test_amr_weights_command_prints_table_3_and_plots_figure_4(small_synthetic_module, tmp_path):
    run_dir = tmp_path / "amr"
    result = invoke("run", "--dataset", small_synthetic_module, "--defense", "amr", "--epochs", 1,
                    "--attacks", "fgsm", "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("amr-weights", "--run-dir", run_dir, "--out", tmp_path / "amr.png")
    assert result.exit_code == 0, result.output
    assert "Mixed_5c" in result.output and "conv6" in result.output and "mean" in result.output
    assert (tmp_path / "amr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    none_dir = tmp_path / "none"
    assert invoke("run", "--dataset", small_synthetic_module, "--epochs", 1, "--attacks", "fgsm",
                  "--run-dir", none_dir, "--quiet").exit_code == 0
    result = invoke("amr-weights", "--run-dir", none_dir)
    assert result.exit_code != 0 and "has no AMR: it was trained with defense 'none'" in result.output


def test_a_store_whose_clean_outcomes_differ_is_emptied_first(small_problem, caplog):
    model, data = small_problem
    fresh = evaluate(model, data, QUICK, batch_size=8)
    wrong = np.zeros(len(data), dtype=bool)
    store = {"clean": wrong, "fgsm/R": wrong, "fgsm/R#checks": np.array([1, 1, 0])}
    with caplog.at_level(logging.WARNING):
        result = evaluate(model, data, QUICK, batch_size=8, store=store)
    assert "evaluating every cell afresh" in caplog.text
    assert np.array_equal(result.robust["fgsm"]["R"], fresh.robust["fgsm"]["R"]) and result.clean.any()
    assert np.array_equal(store["clean"], fresh.clean)
