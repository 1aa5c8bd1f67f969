"""Result records: one typed owner, outcomes keyed by what produced them, RI's reference rule, reproduce."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from mmrobust.cli import cli
from mmrobust.protocol import STANDARD_V1
from mmrobust.results import (SCHEMA, OutcomeStore, Record, RecordError, find_reference, model_digest,
                              outcome_key, read_outcomes, records_beside, save_torch)
from mmrobust.training import load_checkpoint


def invoke(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def make(defense: str = "none", seed: int = 0, fingerprint: str = "abc", **changes) -> Record:
    metrics = {"clean": 90.0, "n": 10, "attacks": {"pgd20": {"R": 10.0, "S": 20.0, "RS": 0.0, "avg": 10.0}}}
    return Record(dataset="synthetic", defense=defense, protocol="standard-v1", metrics=metrics, split="subject",
                  preset="tiny", modalities=("rgb", "skeleton"), config={"seed": seed},
                  data={"fingerprint": fingerprint}, provenance={"finished_at": "2026-01-01T00:00:00+00:00"},
                  **changes)


# -- the record -------------------------------------------------------------------

def test_a_record_reads_back_as_it_was_written(tmp_path):
    record = make("amr")
    loaded = Record.load(record.save(tmp_path / "r.json").path)
    assert loaded == record and loaded.path == tmp_path / "r.json"
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == SCHEMA


@pytest.mark.parametrize("schema, message", [(SCHEMA - 1, "is older"), (SCHEMA + 1, "is newer"),
                                             ("x", "no integer 'schema'")])
def test_other_schemas_are_refused_naming_the_file(tmp_path, schema, message):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({**make().to_dict(), "schema": schema}))
    with pytest.raises(RecordError, match=message) as caught:
        Record.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_bad_records_are_one_line_errors_on_the_command_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**make().to_dict(), "schema": SCHEMA - 1}))
    assert_one_line_error(invoke("reproduce", old), str(old), "older")
    assert_one_line_error(invoke("reproduce", tmp_path / "gone" / "result.json"), "no such result record")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert_one_line_error(invoke("reproduce", broken), str(broken), "unreadable")


# -- outcome stores -----------------------------------------------------------------

def test_outcome_key_follows_the_weights():
    model = torch.nn.Linear(3, 2)
    before = outcome_key(model, STANDARD_V1, "abc", 10)
    with torch.no_grad():
        model.bias[0] += 1e-7
    after = outcome_key(model, STANDARD_V1, "abc", 10)
    assert after["model"] == model_digest(model)
    assert {k for k in before if before[k] != after[k]} == {"model"}


def test_a_stale_store_is_ignored_and_says_why(tmp_path, caplog):
    path = tmp_path / "outcomes.npz"
    key = {"model": "a", "protocol": "standard-v1", "data": "abc"}
    store = OutcomeStore(path, key)
    store["clean"] = np.array([True, False])
    assert OutcomeStore(path, key)["clean"].tolist() == [True, False]  # same key: reused
    with caplog.at_level(logging.WARNING):
        stale = OutcomeStore(path, {**key, "model": "b"})
    assert len(stale) == 0
    assert "another model" in caplog.text and str(path) in caplog.text


def test_a_truncated_store_is_an_error_and_is_left_alone(tmp_path):
    path = tmp_path / "outcomes.npz"
    store = OutcomeStore(path, {"model": "a"})
    store["clean"] = np.ones(50, dtype=bool)
    path.write_bytes(path.read_bytes()[:40])
    before = path.read_bytes()
    with pytest.raises(RecordError, match="truncated") as caught:
        OutcomeStore(path, {"model": "a"})
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


# -- RI's reference -------------------------------------------------------------------

def test_ri_reference_shares_the_setting_and_the_training_seed():
    none0, none1 = make("none", seed=0), make("none", seed=1)
    assert find_reference(make("amr", seed=1), [none0, none1]) is none1
    assert find_reference(make("amr", seed=2), [none0, none1]) is None
    assert find_reference(make("amr", seed=0, fingerprint="other"), [none0, none1]) is None
    assert find_reference(none0, [none1]) is none0  # `none` is its own reference


# -- reproduce ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory, small_synthetic_module) -> Path:
    run_dir = tmp_path_factory.mktemp("reproduce") / "none"
    result = invoke("run", "--dataset", small_synthetic_module, "--defense", "none", "--epochs", 1,
                    "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    return run_dir


def test_reproduce_matches_a_fresh_record_bit_for_bit(small_run, tmp_path):
    result = invoke("reproduce", small_run / "result.json", "--run-dir", tmp_path / "again", "--quiet")
    assert result.exit_code == 0, result.output
    assert "reproduces" in result.output and "bit-exact" in result.output
    assert "per-sample outcomes differing: 0" in result.output
    stored, again = Record.load(small_run / "result.json"), Record.load(tmp_path / "again" / "result.json")
    assert again.metrics["attacks"] == stored.metrics["attacks"]


def test_reproduce_fails_on_a_changed_number_and_on_other_data(small_run, tmp_path):
    record = Record.load(small_run / "result.json")
    edited = record.replace(metrics={**record.metrics, "clean": record.metrics["clean"] + 0.5})
    edited.save(small_run / "edited.json")
    result = invoke("reproduce", small_run / "edited.json", "--quiet")
    assert_one_line_error(result, "does not reproduce", "clean")
    assert "✗" in result.output

    other = record.replace(data={**record.data, "fingerprint": "another-release"})
    other.save(small_run / "other.json")
    assert_one_line_error(invoke("reproduce", small_run / "other.json", "--quiet"), "another-release",
                          "cannot be reproduced")


def test_eval_attacks_again_when_the_weights_changed(small_run, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(small_run, copy)
    state = load_checkpoint(copy / "model.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 0.01
    save_torch(copy / "model.pt", state)
    with caplog.at_level(logging.WARNING):
        result = invoke("eval", "--run-dir", copy, "--quiet")
    assert result.exit_code == 0, result.output
    assert "another model" in caplog.text  # the stored outcomes were not reused
    before, after = Record.load(small_run / "result.json"), Record.load(copy / "result.json")
    assert after.evaluation["model_digest"] != before.evaluation["model_digest"]
    assert after.evaluation["gradient_passes"] > 0
    assert read_outcomes(copy / "outcomes.npz")["key"]["model"] == after.evaluation["model_digest"]


def test_reproduce_elsewhere_names_the_difference_and_allows_the_tolerance(small_run, tmp_path):
    record = Record.load(small_run / "result.json")
    environment = {**record.provenance["environment"], "kernels": "AVX512"}
    record.replace(provenance={**record.provenance, "environment": environment}).save(small_run / "avx512.json")
    result = invoke("reproduce", small_run / "avx512.json", "--tolerance", "0.5", "--quiet")
    assert result.exit_code == 0, result.output
    assert "environment differs from the record's: kernels: 'AVX512' -> " in result.output
    assert "tolerance: 0.5 percentage points" in result.output


def test_reproduce_names_another_device(small_run):
    record = Record.load(small_run / "result.json")
    record.replace(provenance={**record.provenance, "device": "cuda:NVIDIA H200"}).save(small_run / "gpu.json")
    result = invoke("reproduce", small_run / "gpu.json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "device: 'cuda:NVIDIA H200' -> 'cpu'" in result.output


def test_an_unreadable_sibling_is_named_not_silently_skipped(tmp_path, caplog):
    old = tmp_path / "none-old" / "result.json"
    old.parent.mkdir()
    old.write_text(json.dumps({**make().to_dict(), "schema": SCHEMA - 1}))
    with caplog.at_level(logging.WARNING):
        assert list(records_beside(tmp_path / "amr")) == []
    assert str(old) in caplog.text and "older" in caplog.text


def test_the_outcome_key_of_a_gpu_names_it_and_its_numerics(monkeypatch):
    import torch

    from mmrobust.protocol import STANDARD_V1
    from mmrobust.results import outcome_key

    model = torch.nn.Linear(2, 2)
    cpu = outcome_key(model, STANDARD_V1, "abc", 10)
    assert "gpu" not in cpu and "numerics" not in cpu  # the CPU key is that of the committed stores
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    gpu = outcome_key(model, STANDARD_V1, "abc", 10, torch.device("cuda", 0), {"tf32_matmul": False})
    assert (gpu["device"], gpu["gpu"], gpu["numerics"]) == ("cuda", "NVIDIA H200", {"tf32_matmul": False})
    other = outcome_key(model, STANDARD_V1, "abc", 10, torch.device("cuda", 0), {"tf32_matmul": True})
    assert other != gpu  # a store made under other numerics is not reused
