"""``mmrobust study``: the paper's studies as commands, and the committed studies re-rendered from their files.

Each study runs end to end on a one-epoch copy of ``synthetic-small``; the
runs it trains are reused by a second study, and by a sweep of the same
configuration. The committed studies of ``leaderboards/synthetic/studies``
are collected again from their records and rendered again, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mmrobust.cli import cli
from mmrobust.config import RunConfig
from mmrobust.registry import STUDIES
from mmrobust.study import FOLDER, build_study, make_params, reference_from_scratch, rerender, warm_start_sources

COMMITTED = Path(__file__).resolve().parent.parent / "leaderboards" / "synthetic" / FOLDER


@pytest.fixture(scope="module")
def one_epoch(one_epoch_module):
    return one_epoch_module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("studies")


def _study(workspace, dataset, *args):
    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["study", *args, "--dataset", dataset, "--device", "cpu", "--quiet",
                                      "--runs", str(workspace / "runs"), "--out", str(workspace / "boards")])
    assert result.exit_code == 0, result.output
    return result


def _files(workspace, dataset, name):
    folder = workspace / "boards" / dataset / FOLDER
    return folder, {p.suffix: p for p in folder.glob(f"{name}.*")}


@pytest.mark.slow
def test_curves_evaluate_one_model_at_every_eps(workspace, one_epoch):
    result = _study(workspace, one_epoch, "curves", "--eps", "0", "2", "4")
    folder, files = _files(workspace, one_epoch, "curves")
    assert set(files) == {".json", ".md", ".csv", ".png", ".svg"}
    manifest = json.loads(files[".json"].read_text())
    data = manifest["data"]
    assert data["eps"] == [0, 2, 4] and data["clean"]
    runs = {row["record"] for row in manifest["rows"]}
    assert len(runs) == 2  # one evaluation per ε > 0, of one trained model
    assert (workspace / "runs" / one_epoch / "none-tiny-s0" / "result.json").is_file()  # 4×2/255 is standard-v1
    for curve in data["curves"]:
        at_zero, *rest = curve["values"]
        assert at_zero == data["clean"]  # ε = 0 is the clean accuracy
        assert all(v[0] <= data["clean"][0] for v in rest)  # an attack never raises accuracy
    pgd = {c["target"]: [v[0] for v in c["values"]] for c in data["curves"] if c["attack"] == "pgd20"}
    assert pgd["RS"][2] <= min(pgd["R"][2], pgd["S"][2]) + 1e-9
    assert "| 2 " in result.output and "skeleton ε (cm)" in files[".md"].read_text()
    assert files[".svg"].read_text().lstrip().startswith("<?xml")
    # re-rendered from the files alone, byte for byte
    _, again, rendered = rerender(folder, "curves")
    assert again == data
    assert rendered["md"] == files[".md"].read_text() and rendered["svg"] == files[".svg"].read_text()
    assert rendered["png"] == files[".png"].read_bytes()


@pytest.mark.slow
def test_amr_count_reuses_runs_and_computes_ri_per_seed(workspace, one_epoch):
    _study(workspace, one_epoch, "amr-count", "--counts", "0", "2")
    runs = workspace / "runs" / one_epoch
    assert (runs / "at-rs-tiny-s0" / "result.json").is_file() and (runs / "amr-tiny-s0-amrs2").is_dir()
    folder, files = _files(workspace, one_epoch, "amr-count")
    data = json.loads(files[".json"].read_text())["data"]
    assert [row["key"] for row in data["rows"]] == ["none", "0 AMR (at-rs)", "2 AMRs"] and data["attack"] == "cw30"
    by_key = {row["key"]: row for row in data["rows"]}
    none, amr = by_key["none"], by_key["2 AMRs"]
    assert none["ri"] == [0.0]
    assert amr["ri"][0] == pytest.approx((amr["clean"][0] - none["clean"][0]) + (amr["avg"][0] - none["avg"][0]))
    record = json.loads((runs / "amr-tiny-s0-amrs2" / "result.json").read_text())
    assert record["config"]["defense_params"] == {"amrs": 2}
    assert by_key["2 AMRs"]["robust"]["RS"] == [record["metrics"]["attacks"]["cw30"]["RS"]]
    # another study of the same model trains nothing (and `none` above was the curves' run)
    before = (runs / "amr-tiny-s0-amrs2" / "result.json").stat().st_mtime_ns
    result = _study(workspace, one_epoch, "amr-weights", "--amrs", "2")
    assert "amr seed 0: finished earlier" in result.output and "running" not in result.output
    assert (runs / "amr-tiny-s0-amrs2" / "result.json").stat().st_mtime_ns == before
    weights = json.loads(_files(workspace, one_epoch, "amr-weights")[1][".json"].read_text())["data"]
    assert len(weights["amrs"]) == 2 and set(weights["amrs"][0]["weights"]) == {"rgb", "skeleton"}
    _, again, rendered = rerender(folder, "amr-count")
    assert again == data and rendered["csv"] == files[".csv"].read_text()


@pytest.mark.parametrize("name", STUDIES.names())
def test_contract_every_study_plans_valid_runs(name):
    """A registered study: frozen Params with defaults, and runs of registered defenses under valid protocols,
    with distinct keys, the same for every seed."""
    from mmrobust.config import RunConfig
    from mmrobust.registry import DEFENSES

    study = STUDIES.get(name)()
    params = study.Params()
    assert dataclasses.is_dataclass(params) and study.title
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, dataclasses.fields(params)[0].name, None)
    jobs = study.jobs(RunConfig(seed=0), params)
    assert jobs and len({job.key for job in jobs}) == len(jobs)
    assert [job.key for job in study.jobs(RunConfig(seed=3), params)] == [job.key for job in jobs]
    for job in jobs:
        assert job.config.defense in DEFENSES.names() and job.config.seed == 0
        DEFENSES.get(job.config.defense).Params(**job.config.defense_params)
        job.evaluation()


def test_every_registered_study_documents_itself_and_checks_its_parameters():
    for name in STUDIES.names():
        result = CliRunner().invoke(cli, ["study", name, "--help"])
        assert result.exit_code == 0 and "Example" in result.output and "--seeds" in result.output
    bad = CliRunner().invoke(cli, ["study", "amr-count", "--counts", "0", "7"])
    assert bad.exit_code == 1 and "counts must be distinct integers from 0 to 3" in bad.output
    bad = CliRunner().invoke(cli, ["study", "lambda", "--attack", "pgd10"])
    assert bad.exit_code == 1 and "'pgd10' is not a column of standard-v1; it has fgsm, pgd20, cw30" in bad.output
    bad = CliRunner().invoke(cli, ["study", "curves", "--eps", "two"])
    assert bad.exit_code == 2 and "are not int values" in bad.output
    unknown = CliRunner().invoke(cli, ["study", "curve"])
    assert unknown.exit_code == 2 and "curves" in unknown.output


def test_a_finished_run_is_reused_only_for_the_same_model(one_epoch, tmp_path):
    from mmrobust.config import RunConfig
    from mmrobust.results import SCHEMA
    from mmrobust.run import RunDirError, default_run_dir, load_data
    from mmrobust.sweep import train_or_reuse

    data = load_data(RunConfig(dataset=one_epoch), progress=False)
    stored = RunConfig(dataset=one_epoch, defense="amr", defense_params={"amrs": 2}, modalities=("rgb", "skeleton"),
                       epochs=data.default_epochs, split=data.split)
    folder = tmp_path / default_run_dir(RunConfig(dataset=one_epoch, defense="amr", defense_params={"amrs": 2})
                                        ).relative_to("runs")
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "schema": SCHEMA, "dataset": one_epoch, "defense": "amr", "protocol": "standard-v1", "config": stored.to_dict(),
        "metrics": {"clean": 50.0, "attacks": {}}, "data": {"fingerprint": data.fingerprint}}))

    def reuse(**changes):
        lines = []
        wanted = RunConfig(dataset=one_epoch, defense="amr", defense_params={"amrs": 2}).replace(**changes)
        return train_or_reuse(wanted, tmp_path, progress=False, say=lines.append), lines

    # where, how fast and how it is evaluated do not make another model; the defaults a run fills in neither
    for same in ({}, {"device": "cpu", "eval_batch_size": 7, "attacks": ("fgsm",)}, {"epochs": 1},
                 {"defense_params": {"amrs": 2, "lam": 1.0}}):
        directory, lines = reuse(**same)
        assert directory == folder and lines == ["amr seed 0: finished earlier"], same
    for other, named in (({"lr": 0.5}, "lr 0.01 not 0.5"), ({"epochs": 3}, "epochs 1 not 3"),
                         ({"batch_size": 8}, "batch_size 16 not 8")):
        with pytest.raises(RunDirError, match=f"another configuration .*{named}"):
            reuse(**other)


COMMITTED_STUDIES = sorted(p.stem for p in COMMITTED.glob("*.json")) if COMMITTED.is_dir() else []


def test_the_synthetic_studies_are_committed():
    assert set(COMMITTED_STUDIES) == set(STUDIES.names())


@pytest.mark.parametrize("name", COMMITTED_STUDIES)
def test_committed_study_rerenders_from_its_records(name):
    manifest, data, rendered = rerender(COMMITTED, name)
    assert data == manifest["data"], f"{name}: its records no longer give its data; re-run `mmrobust study {name}`"
    for suffix in ("md", "csv"):
        assert rendered[suffix] == (COMMITTED / f"{name}.{suffix}").read_text(), \
            f"{name}.{suffix} does not re-render from {name}.json"


@pytest.mark.parametrize("name", COMMITTED_STUDIES)
def test_committed_study_figures_redraw_identically(name):
    import matplotlib

    manifest, _, rendered = rerender(COMMITTED, name)
    if manifest.get("matplotlib") != matplotlib.__version__:
        pytest.skip(f"{name}'s figures were drawn by matplotlib {manifest['matplotlib']}, this is "
                    f"{matplotlib.__version__}: their bytes differ between versions")
    assert {"svg", "png"} <= set(rendered)
    assert rendered["svg"] == (COMMITTED / f"{name}.svg").read_text()
    assert rendered["png"] == (COMMITTED / f"{name}.png").read_bytes()


def test_under_warm_start_the_reference_trains_from_scratch_and_the_rest_from_it():
    base = RunConfig(dataset="synthetic", recipe="warm-start", holdout=0.2, seed=3)
    jobs = reference_from_scratch(build_study("lambda").jobs(base, make_params(build_study("lambda"), {})))
    assert [(job.config.defense, job.config.recipe) for job in jobs] == [("none", "scratch")] + [("amr", "warm-start")] * 5
    (source,) = warm_start_sources(jobs)  # one reference for the five λ values
    assert source == jobs[0].config and (source.holdout, source.seed) == (0.2, 3)
    assert warm_start_sources(reference_from_scratch(build_study("lambda").jobs(
        base.replace(recipe="scratch"), make_params(build_study("lambda"), {})))) == []


@pytest.mark.slow
def test_a_study_trains_with_the_sweeps_recipe(tmp_path, one_epoch):
    """amr-weights has no `none` row: under warm-start that reference is trained first, as no row, and
    the AMR begins from it."""
    result = _study(tmp_path, one_epoch, "amr-weights", "--recipe", "warm-start", "--holdout", "0.2")
    assert result.output.index("none seed 0: running") < result.output.index("amr seed 0: running")
    runs = tmp_path / "runs" / one_epoch
    none = json.loads((runs / "none-tiny-s0-holdout0.2" / "result.json").read_text())
    amr = json.loads((runs / "amr-tiny-s0-warm-start-holdout0.2" / "result.json").read_text())
    assert none["config"]["recipe"] == "scratch" and "init_from" not in none["training"]
    assert amr["training"]["init_from"]["run"] == (runs / "none-tiny-s0-holdout0.2").as_posix()
    assert amr["training"]["heldout"]["share"] == 0.2
    manifest = json.loads(_files(tmp_path, one_epoch, "amr-weights")[1][".json"].read_text())
    assert (manifest["recipe"], manifest["holdout"]) == ("warm-start", 0.2)
    assert [row["key"] for row in manifest["rows"]] == ["amr"]  # the reference is no row of it


@pytest.mark.parametrize("args", [
    ["--values", "0.1", "0.5", "--seeds", "0", "1"],
    ["--values=0.1", "0.5", "--seeds=0", "1"],
    ["--values", "0.1,0.5", "--seeds", "0,1"],
    ["--values", "0.1", "--values=0.5", "--seeds=0", "--seeds", "1"],
], ids=["spaces", "equals", "commas", "repeated"])
def test_study_options_take_their_values_however_they_are_written(monkeypatch, tmp_path, args):
    import mmrobust.study

    asked = {}

    def run_study(name, **settings):
        asked.update(settings, name=name)
        page = tmp_path / "lambda.md"
        page.write_text("table\n")
        return [page]

    monkeypatch.setattr(mmrobust.study, "run_study", run_study)
    result = CliRunner().invoke(cli, ["study", "lambda", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (asked["name"], asked["params"]["values"], asked["seeds"]) == ("lambda", (0.1, 0.5), [0, 1])
