"""A killed run resumes to exactly the weights of an uninterrupted one.

Runs go through :func:`mmrobust.run.execute` on a slice of the synthetic data
(``small_synthetic``), a few epochs each, on CPU.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from mmrobust import files, results, run
from mmrobust.config import RunConfig
from mmrobust.training import load_checkpoint


class Killed(Exception):
    """Stands in for SIGKILL between two epochs."""


def _config(dataset: str, epochs: int) -> RunConfig:
    return RunConfig(dataset=dataset, epochs=epochs, batch_size=32, device="cpu", seed=1)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(len(rows)))
    return [row["loss"] for row in rows]


def test_killed_run_resumes_to_identical_weights(tmp_path, small_synthetic):
    config = _config(small_synthetic, epochs=3)
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    run.execute(config, uninterrupted, progress=False)

    def kill_after_first_epoch(epoch: int) -> None:
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        run.execute(config, interrupted, progress=False, after_epoch=kill_after_first_epoch)
    assert load_checkpoint(interrupted / "checkpoint.pt")["epoch"] == 1
    assert not (interrupted / "result.json").exists()
    assert len(_losses(interrupted)) == 1

    record = run.execute(config, interrupted, resume=run.resume_state(interrupted, None), progress=False)

    assert (interrupted / "result.json").is_file()
    assert record.config["epochs"] == 3
    a = load_checkpoint(uninterrupted / "checkpoint.pt")
    b = load_checkpoint(interrupted / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    different = [name for name in a["model"] if not torch.equal(a["model"][name], b["model"][name])]
    assert different == []
    assert _losses(interrupted) == _losses(uninterrupted)
    assert len(_losses(uninterrupted)) == 3


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, small_synthetic, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = torch.save
    saves = []

    def dies_on_second_save(obj, handle, *args, **kwargs):
        saves.append(obj.get("epoch") if isinstance(obj, dict) else None)
        if len(saves) == 2:
            handle.write(b"half a checkpoint")  # the bytes that made it before the kill
            raise Killed
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_second_save)
    with pytest.raises(Killed):
        run.execute(_config(small_synthetic, epochs=2), run_dir, progress=False)
    monkeypatch.undo()

    assert saves == [1, 2]
    state = load_checkpoint(run_dir / "checkpoint.pt")  # still the epoch-1 file, whole
    assert state["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) == []
    assert not (run_dir / "result.json").exists()
    # ... and it is a checkpoint a resume can continue from.
    record = run.execute(_config(small_synthetic, epochs=2), run_dir, resume=run.resume_state(run_dir, None),
                         progress=False)
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2
    assert record.training["epochs"] == 2


def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    results.save_torch(path, {"epoch": 1})
    before = path.read_bytes()

    def crash(handle):
        handle.write(b"partial")
        raise Killed

    with pytest.raises(Killed):
        files.atomic_write(path, crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_run_files_follow_the_umask_like_ordinary_files(tmp_path):
    previous = os.umask(0o022)
    try:
        files.write_json(tmp_path / "result.json", {"metrics": {}})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert plain == 0o644
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == plain
