"""The warm-start recipe: a defense begins from the trained reference model of the same data and seed."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mmrobust.cli import cli
from mmrobust.config import RunConfig
from mmrobust.leaderboard import build_table, load_records
from mmrobust.run import RunDirError, default_run_dir, load_trained, prepare, warm_start


@pytest.fixture(scope="module")
def reference_run(small_synthetic_module, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / "none-s0"
    result = CliRunner().invoke(cli, ["run", "--dataset", small_synthetic_module, "--epochs", "1", "--attacks",
                                      "fgsm", "--run-dir", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    return run_dir


def test_warm_start_loads_the_reference_weights_and_keeps_the_defenses_own(small_synthetic_module, reference_run):
    config = RunConfig(dataset=small_synthetic_module, defense="amr", recipe="warm-start", attacks=("fgsm",))
    exp = prepare(config, progress=False)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    found = warm_start(exp, reference_run.parent / "amr-s0")
    reference = load_trained(reference_run).model.state_dict()
    state = exp.model.state_dict()
    assert found["run"] == reference_run.as_posix() and found["kept_initialisation"]
    for name, value in state.items():
        if name in reference:
            assert torch.equal(value, reference[name]), name
        else:  # AMR's reweighters and auxiliary heads: as the defense built them
            assert torch.equal(value, before[name]), name
            assert any(name.startswith(kept) for kept in found["kept_initialisation"])


def test_warm_start_without_a_reference_run_says_what_to_run(small_synthetic_module, tmp_path):
    exp = prepare(RunConfig(dataset=small_synthetic_module, defense="minsim", recipe="warm-start", seed=4,
                            holdout=0.2), progress=False)
    with pytest.raises(RunDirError, match=r"run `mmrobust run --defense none --seed 4 --holdout 0.2` first"):
        warm_start(exp, tmp_path / "minsim")
    exp = prepare(RunConfig(dataset=small_synthetic_module, defense="none", recipe="warm-start"), progress=False)
    with pytest.raises(RunDirError, match="trains from scratch"):
        warm_start(exp, tmp_path / "none")


def test_a_warm_started_run_says_so_everywhere(small_synthetic_module, reference_run):
    run_dir = reference_run.parent / "minsim-warm"
    result = CliRunner().invoke(cli, ["run", "--dataset", small_synthetic_module, "--defense", "minsim", "--epochs",
                                      "1", "--attacks", "fgsm", "--recipe", "warm-start", "--run-dir", str(run_dir),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    (path,) = run_dir.glob("result-*.json")
    record = json.loads(path.read_text())
    assert record["config"]["recipe"] == "warm-start"
    assert record["training"]["init_from"]["run"] == reference_run.as_posix()
    assert json.loads((run_dir / "init_from.json").read_text()) == record["training"]["init_from"]
    table = build_table(load_records([reference_run.parent]), small_synthetic_module, protocol=record["protocol"],
                        attack="fgsm")
    assert sorted(table["defense"]) == ["minsim (warm-start)", "none"]
    assert default_run_dir(RunConfig(defense="amr", recipe="warm-start", holdout=0.2)).name == \
        "amr-tiny-s0-warm-start-holdout0.2"
