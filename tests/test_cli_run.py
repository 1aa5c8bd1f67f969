"""``mmrobust run`` and ``mmrobust list`` as a user drives them: files, records, and errors.

One real one-epoch run on the synthetic data (module fixture); the other runs
use ``synthetic-small`` (a slice of it) to stay fast.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

import mmrobust
from mmrobust.cli import cli
from mmrobust.datasets.synthetic import CLASSES, SyntheticSpec
from mmrobust.training import load_checkpoint


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_user_error(result: Result, *needles: str, also: tuple[str, ...] = ()) -> str:
    """A non-zero exit with one ``Error:`` line naming ``needles``; no traceback, nothing else (but lines
    starting with one of ``also``)."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert [line for line in lines if not line.startswith(("Error:", "run directory:", *also))] == [], result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Result, Path]:
    """``mmrobust run --defense none --epochs 1 --run-dir D --quiet`` on the synthetic data."""
    run_dir = tmp_path_factory.mktemp("cli") / "none-run"
    result = invoke("run", "--defense", "none", "--epochs", 1, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    return result, run_dir


# -- list -------------------------------------------------------------------------------

def test_list_shows_every_registry():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    sections: dict[str, list[str]] = {}
    current = None
    for line in result.output.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":")
            sections[current] = []
        elif line.strip():
            sections[current].append(line.split()[0])
    assert "synthetic" in sections["datasets"]
    assert {"i3d", "hcn"} <= set(sections["backbones"])
    assert "none" in sections["defenses"]
    assert {"pgd", "fgsm"} <= set(sections["attacks"])
    assert {"tiny", "paper"} <= set(sections["presets"])


def test_list_one_kind():
    result = invoke("list", "defense")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("defenses:")
    assert "none" in result.output and "attacks:" not in result.output


# -- a finished run ---------------------------------------------------------------------

def test_run_prints_the_clean_accuracy(finished_run):
    result, run_dir = finished_run
    record = json.loads((run_dir / "result.json").read_text())
    assert f"clean accuracy {record['metrics']['clean']:.2f}%" in result.stdout
    assert str(run_dir / "result.json") in result.stdout


def test_result_record_holds_the_resolved_run(finished_run):
    _, run_dir = finished_run
    record = json.loads((run_dir / "result.json").read_text())
    assert record["dataset"] == "synthetic"
    assert record["defense"] == "none"
    assert record["preset"] == "tiny"
    config = record["config"]
    assert config["epochs"] == 1  # resolved, not null
    assert config["modalities"] == ["rgb", "skeleton"]
    assert config["dataset"] == "synthetic" and config["defense"] == "none" and config["seed"] == 0
    assert config["split"] == "subject"

    clean = record["metrics"]["clean"]
    assert isinstance(clean, float) and 0.0 <= clean <= 100.0
    test_size = record["data"]["test_size"]
    spec = SyntheticSpec()
    assert test_size == spec.test_subjects * spec.test_repeats * len(CLASSES)
    correct = clean * test_size / 100
    assert math.isclose(correct, round(correct), abs_tol=1e-6)  # a percentage of the test clips

    provenance = record["provenance"]
    assert provenance["mmrobust_version"] == mmrobust.__version__
    assert "git_commit" in provenance
    assert provenance["git_commit"] is None or isinstance(provenance["git_commit"], str)
    assert provenance["git_dirty"] in (None, True, False)
    environment = provenance["environment"]
    assert environment["torch"] == torch.__version__ and environment["numpy"] == np.__version__
    assert environment["threads"] == torch.get_num_threads() and environment["cpu_model"]
    assert environment["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(provenance["device"], str) and provenance["device"].startswith(("cpu", "cuda"))
    assert provenance["seed"] == 0
    assert isinstance(provenance["wall_seconds"], float) and provenance["wall_seconds"] > 0


def test_run_directory_holds_config_log_and_checkpoint(finished_run):
    _, run_dir = finished_run
    record = json.loads((run_dir / "result.json").read_text())
    assert json.loads((run_dir / "config.json").read_text()) == record["config"]

    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one line per epoch
    row = json.loads(lines[0])
    assert row["epoch"] == 0
    assert isinstance(row["loss"], float) and math.isfinite(row["loss"]) and row["loss"] > 0
    assert 0.0 <= row["train_accuracy"] <= 100.0

    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1
    assert state["config"] == record["config"]
    assert any(key.startswith("branches.rgb.") for key in state["model"])
    assert any(key.startswith("branches.skeleton.") for key in state["model"])
    assert not [name for name in _files(run_dir) if name.endswith(".tmp")]


def test_existing_run_dir_is_not_overwritten_without_resume(finished_run):
    _, run_dir = finished_run
    before = {name: (run_dir / name).read_bytes() for name in _files(run_dir)}
    result = invoke("run", "--defense", "none", "--epochs", 1, "--run-dir", run_dir, "--quiet")
    assert_user_error(result, str(run_dir), "--resume")
    assert {name: (run_dir / name).read_bytes() for name in _files(run_dir)} == before


# -- options ----------------------------------------------------------------------------

def test_modalities_rgb_trains_a_one_branch_model(tmp_path, small_synthetic):
    run_dir = tmp_path / "rgb"
    result = invoke("run", "--dataset", small_synthetic, "--modalities", "rgb", "--epochs", 1,
                    "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "result.json").read_text())
    assert record["modalities"] == ["rgb"]
    assert record["config"]["modalities"] == ["rgb"]
    keys = load_checkpoint(run_dir / "checkpoint.pt")["model"].keys()
    assert any(key.startswith("branches.rgb.") for key in keys)
    assert not any("skeleton" in key for key in keys)


def test_config_file_is_read_and_explicit_flags_override_it(tmp_path, small_synthetic):
    config_file = tmp_path / "run.toml"
    config_file.write_text(f'dataset = "{small_synthetic}"\nepochs = 2\nseed = 7\nbatch_size = 32\nlr = 0.05\n'
                           'modalities = ["skeleton"]\n')
    run_dir = tmp_path / "from-toml"
    # --seed 0 is the flag's default value: given explicitly, it still wins over the file.
    result = invoke("run", "--config", config_file, "--epochs", 1, "--seed", 0, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "result.json").read_text())["config"]
    assert config["dataset"] == small_synthetic
    assert config["batch_size"] == 32 and config["lr"] == 0.05 and config["modalities"] == ["skeleton"]
    assert config["epochs"] == 1 and config["seed"] == 0
    assert len((run_dir / "train_log.jsonl").read_text().splitlines()) == 1


# -- bad input --------------------------------------------------------------------------

def _run_args(run_dir: Path, *extra) -> list:
    return ["run", "--epochs", 1, "--quiet", "--run-dir", run_dir, *extra]


@pytest.mark.parametrize(("extra", "needles"), [
    (("--dataset", "synthetc"), ("'synthetc'", "did you mean 'synthetic'")),
    (("--defense", "noen"), ("'noen'", "'none'")),
    (("--defense", "does-not-exist"), ("'does-not-exist'",)),
    (("--preset", "huge"), ("'huge'", "tiny")),
    (("--defense-param", "strength=3"), ("'strength'",)),
    (("--modalities", "depth"), ("'depth'",)),
    (("--modalities", "rgb,depth"), ("'depth'",)),
], ids=["dataset", "defense-typo", "defense", "preset", "defense-param", "modality", "one-bad-modality"])
def test_unknown_names_fail_with_one_line_and_no_files(tmp_path, extra, needles):
    run_dir = tmp_path / "d"
    assert_user_error(invoke(*_run_args(run_dir, *extra)), *needles)
    assert _files(run_dir) == []  # nothing half-written


def test_config_file_with_an_unknown_key(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text("epoch = 3\n")
    run_dir = tmp_path / "d"
    assert_user_error(invoke(*_run_args(run_dir, "--config", config_file)), str(config_file), "'epoch'", "'epochs'")
    assert _files(run_dir) == []


def test_missing_config_file_is_named(tmp_path):
    config_file = tmp_path / "absent.toml"
    run_dir = tmp_path / "d"
    result = invoke(*_run_args(run_dir, "--config", config_file))
    assert_user_error(result, str(config_file))
    assert _files(run_dir) == []


def test_resume_without_a_checkpoint_names_the_path(tmp_path):
    run_dir = tmp_path / "d"
    assert_user_error(invoke(*_run_args(run_dir, "--resume")), str(run_dir / "checkpoint.pt"))
    assert _files(run_dir) == []


def test_resume_from_an_explicit_missing_checkpoint_names_it(tmp_path):
    run_dir, checkpoint = tmp_path / "d", tmp_path / "elsewhere.pt"
    assert_user_error(invoke(*_run_args(run_dir, "--resume", checkpoint)), str(checkpoint))
    assert _files(run_dir) == []


def test_resume_from_a_corrupt_checkpoint_names_it(tmp_path):
    run_dir = tmp_path / "d"
    run_dir.mkdir()
    garbage = os.urandom(4096)
    (run_dir / "checkpoint.pt").write_bytes(garbage)
    assert_user_error(invoke(*_run_args(run_dir, "--resume")), str(run_dir / "checkpoint.pt"))
    assert _files(run_dir) == ["checkpoint.pt"]
    assert (run_dir / "checkpoint.pt").read_bytes() == garbage


def test_resume_from_a_foreign_torch_file_names_it(tmp_path):
    run_dir = tmp_path / "d"
    run_dir.mkdir()
    torch.save({"weights": torch.zeros(3)}, run_dir / "checkpoint.pt")
    assert_user_error(invoke(*_run_args(run_dir, "--resume")), str(run_dir / "checkpoint.pt"))
    assert not (run_dir / "result.json").exists()


def test_run_dir_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run_dir = blocker / "run"
    assert_user_error(invoke(*_run_args(run_dir)), str(run_dir))
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "read-only"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        assert_user_error(invoke(*_run_args(run_dir)), str(run_dir))
        assert _files(run_dir) == []
    finally:
        run_dir.chmod(0o700)
