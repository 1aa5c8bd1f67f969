"""The fault matrix: bad inputs and faults as a demanding user meets them, each a one-line error.

Every case builds its bad input in a temporary folder, runs the command line
in-process (``CliRunner``), and asserts a non-zero exit, one ``Error:`` line
naming the culprit, no traceback, and what is on disk afterwards (nothing
created, nothing lost). Cases that need a finished run copy one made once per
module (``synthetic-small``, one epoch). The last tests drive real processes:
two runs into one folder, a lock held by a process killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mmrobust
from mmrobust.cli import cli
from mmrobust.files import DiskFullError, FolderInUseError, atomic_write, exclusive, write_json
from test_cli_run import assert_user_error


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(result, *needles: str) -> str:
    """:func:`assert_user_error`, with click's usage hint (a bad flag) and warnings allowed beside the error."""
    return assert_user_error(result, *needles, also=("Usage:", "Try '", "warning:"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_synthetic_module) -> tuple[str, Path]:
    """A finished one-epoch ``none`` run on ``synthetic-small``: (dataset name, run directory)."""
    run_dir = tmp_path_factory.mktemp("faults") / "runs" / "none"
    result = invoke("run", "--dataset", small_synthetic_module, "--epochs", 1, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    return small_synthetic_module, run_dir


def _copy(run_dir: Path, tmp: Path) -> Path:
    target = tmp / "copy"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def _edit_checkpoint(folder: Path, change: Callable[[dict], None], name: str = "checkpoint.pt") -> None:
    state = torch.load(folder / name, weights_only=True)
    change(state)
    torch.save(state, folder / name)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"} if folder.exists() else {}


@dataclass
class Case:
    """One bad input: ``build(tmp, dataset, run_dir)`` returns the arguments (and may write files)."""

    name: str
    build: Callable[[Path, str, Path], list]
    says: tuple[str, ...]
    creates_nothing: bool = True  # no run folder is left behind (for the cases that name one)
    keeps: Callable[[Path, Path], Path] | None = None  # the folder whose files must be unchanged
    extra: dict = field(default_factory=dict)


def run_args(*flags):
    def build(tmp, dataset, run_dir):
        return ["run", "--dataset", dataset, "--epochs", 1, "--quiet", "--run-dir", tmp / "new", *flags]
    return build


def config_args(text):
    def build(tmp, dataset, run_dir):
        path = tmp / "run.toml"
        path.write_text(text)
        return ["run", "--dataset", dataset, "--config", path, "--quiet", "--run-dir", tmp / "new"]
    return build


def resume_args(change, name="checkpoint.pt"):
    def build(tmp, dataset, run_dir):
        folder = _copy(run_dir, tmp)
        _edit_checkpoint(folder, change, name)
        return ["run", "--run-dir", folder, "--resume", "--quiet"]
    return build


def eval_args(prepare=None, *flags):
    def build(tmp, dataset, run_dir):
        folder = _copy(run_dir, tmp)
        if prepare is not None:
            prepare(folder)
        return ["eval", "--run-dir", folder, "--quiet", *flags]
    return build


def copied(tmp, run_dir):
    return tmp / "copy"


def _drop(key):
    return lambda state: state.pop(key)


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _newer_record(folder):
    record = json.loads((folder / "result.json").read_text())
    record["schema"] = 99
    (folder / "result.json").write_text(json.dumps(record))


def _foreign_weights(folder):
    _edit_checkpoint(folder, lambda s: s.__setitem__("model", {"head.weight": torch.zeros(2, 2)}), "model.pt")


def _leaderboard(*flags):
    def build(tmp, dataset, run_dir):
        records = tmp / "runs"
        _copy(run_dir, records)
        board = tmp / "boards" / dataset
        board.mkdir(parents=True)
        (board / "standard-v1.md").write_text("committed\n")
        return ["leaderboard", "--records", records, "--out", tmp / "boards", *flags]
    return build


CASES = [
    # -- run: names and numbers, refused before any folder is made --
    Case("unknown defense", run_args("--defense", "nonee"), ("nonee", "'none'")),
    Case("unknown dataset", lambda tmp, d, r: ["run", "--dataset", "synthtic", "--run-dir", tmp / "new"],
         ("synthtic", "'synthetic'")),
    Case("eps above 1", run_args("--eps", "2"), ("eps", "(0, 1]")),
    Case("eps NaN", run_args("--eps", "nan"), ("eps",)),
    Case("eps not a number", run_args("--eps", "abc"), ("eps", "abc")),
    Case("eps zero", run_args("--eps", "0"), ("eps",)),
    Case("lr NaN", run_args("--lr", "nan"), ("lr", "nan")),
    Case("lr infinite", run_args("--lr", "inf"), ("lr", "inf")),
    Case("epochs 0", run_args("--epochs", "0"), ("--epochs",)),
    Case("batch size negative", run_args("--batch-size", "-1"), ("--batch-size",)),
    Case("eval batch size 0", run_args("--eval-batch-size", "0"), ("--eval-batch-size",)),
    Case("misspelt attack", run_args("--attacks", "pgd-20"), ("pgd-20",)),
    Case("unknown protocol", run_args("--protocol", "strong-v2"), ("strong-v2", "'strong-v1'")),
    Case("defense parameter NaN", run_args("--defense", "amr", "--defense-param", "lam=nan"), ("lam", "nan")),
    Case("unknown defense parameter", run_args("--defense", "amr", "--defense-param", "lamb=1"), ("lamb",)),
    Case("defense parameter without a value", run_args("--defense-param", "lam"), ("KEY=VALUE",)),
    Case("device misspelt", run_args("--device", "cdua"), ("cdua",)),
    Case("CUDA where there is none", run_args("--device", "cuda:3"), ("cuda:3",)),
    Case("unknown modality", run_args("--modalities", "depth"), ("depth",)),
    Case("seed not a number", run_args("--seed", "one"), ("--seed",)),
    # -- run: configuration files --
    Case("config file missing", lambda tmp, d, r: ["run", "--config", tmp / "missing.toml"], ("missing.toml",)),
    Case("config file not TOML", config_args("eps = \n"), ("run.toml", "not valid TOML")),
    Case("config eps 2.0", config_args("eps = 2.0\n"), ("eps", "2.0")),
    Case("config lr NaN", config_args("lr = nan\n"), ("lr", "nan")),
    Case("config unknown key", config_args("epoch = 3\n"), ("epoch",)),
    Case("config table", config_args("[training]\nepochs = 3\n"), ("tables are not allowed",)),
    Case("config wrong type", config_args('epochs = "three"\n'), ("epochs", "three")),
    # -- run: folders --
    Case("run dir is a file", lambda tmp, d, r: (tmp / "file").write_text("x") and
         ["run", "--dataset", d, "--run-dir", tmp / "file"], ("file", "is a file"), creates_nothing=False),
    Case("run dir holds a run", lambda tmp, d, r: ["run", "--dataset", d, "--run-dir", _copy(r, tmp)],
         ("already holds a run", "--resume"), creates_nothing=False, keeps=copied),
    Case("resume without checkpoint", lambda tmp, d, r: ["run", "--run-dir", tmp / "new", "--resume"],
         ("checkpoint.pt", "does not exist")),
    # -- run: checkpoints checked whole --
    Case("resume past the last epoch", resume_args(_set("epoch", 5)), ("epoch 5 of 1",), creates_nothing=False,
         keeps=copied),
    Case("checkpoint without config", resume_args(_drop("config")), ("'config'",), creates_nothing=False,
         keeps=copied),
    Case("checkpoint without optimizer", resume_args(_drop("optimizer")), ("'optimizer'",), creates_nothing=False,
         keeps=copied),
    Case("checkpoint with a float RNG state", resume_args(_set("rng", torch.zeros(8))), ("'rng'", "uint8"),
         creates_nothing=False, keeps=copied),
    Case("checkpoint with an epoch that is text", resume_args(_set("epoch", "3")), ("'epoch'", "int"),
         creates_nothing=False, keeps=copied),
    Case("checkpoint of foreign weights", resume_args(lambda s: s.__setitem__("model", {"w": torch.zeros(1)})),
         ("missing", "unexpected, first w"), creates_nothing=False, keeps=copied),
    Case("checkpoint that is not torch", lambda tmp, d, r: (tmp / "junk.pt").write_bytes(b"\x00junk") and
         ["run", "--run-dir", tmp / "new", "--resume", tmp / "junk.pt"], ("junk.pt", "not a readable")),
    # -- eval --
    Case("eval of a folder that is not a run", lambda tmp, d, r: (tmp / "empty").mkdir() or
         ["eval", "--run-dir", tmp / "empty"], ("no config.json",), creates_nothing=False),
    Case("eval without model.pt", eval_args(lambda f: (f / "model.pt").unlink()), ("no trained model",),
         creates_nothing=False, keeps=copied),
    Case("eval over a newer record", eval_args(_newer_record), ("schema 99", "newer", "left as it is"),
         creates_nothing=False, keeps=copied),
    Case("eval over a record that is a list", eval_args(lambda f: (f / "result.json").write_text("[1, 2]")),
         ("not a result record", "left as it is"), creates_nothing=False, keeps=copied),
    Case("eval of foreign weights", eval_args(_foreign_weights), ("model.pt", "does not fit", "missing"),
         creates_nothing=False, keeps=copied),
    Case("eval under an unknown protocol", eval_args(None, "--protocol", "strong-v2"), ("'strong-v1'",),
         creates_nothing=False, keeps=copied),
    Case("eval with eps 0", eval_args(None, "--eps", "0"), ("eps",), creates_nothing=False, keeps=copied),
    Case("eval of a missing folder", lambda tmp, d, r: ["eval", "--run-dir", tmp / "nowhere"], ("nowhere",)),
    # -- leaderboard: nothing written on a bad name --
    Case("leaderboard misspelt attack", _leaderboard("--attack", "pgd-20"), ("pgd-20", "'pgd20'"),
         creates_nothing=False, keeps=lambda tmp, r: tmp / "boards"),
    Case("leaderboard unknown dataset", _leaderboard("--dataset", "nosuch"), ("nosuch", "available"),
         creates_nothing=False, keeps=lambda tmp, r: tmp / "boards"),
    Case("leaderboard protocol without records", _leaderboard("--protocol", "strong-v1"),
         ("no strong-v1 records",), creates_nothing=False, keeps=lambda tmp, r: tmp / "boards"),
    Case("leaderboard of a missing folder", lambda tmp, d, r: ["leaderboard", "--records", tmp / "nowhere"],
         ("nowhere",)),
    # -- reproduce --
    Case("reproduce a missing record", lambda tmp, d, r: ["reproduce", tmp / "nowhere.json"], ("nowhere.json",)),
    Case("reproduce a newer record", lambda tmp, d, r: _newer_record(_copy(r, tmp)) or
         ["reproduce", tmp / "copy" / "result.json"], ("schema 99", "newer"), creates_nothing=False,
         keeps=copied),
    # -- prepare --
    Case("prepare a missing release", lambda tmp, d, r: ["prepare", "--dataset", "ntu60", "--root", tmp / "nowhere"],
         ("nowhere",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_one_line_and_loses_nothing(case, trained, tmp_path):
    dataset, run_dir = trained
    args = case.build(tmp_path, dataset, run_dir)
    kept = case.keeps(tmp_path, run_dir) if case.keeps else None
    before = _snapshot(kept) if kept else None
    result = invoke(*args)
    assert_one_line(result, *case.says)
    if case.creates_nothing:
        assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").iterdir())
    if kept is not None:
        assert _snapshot(kept) == before, "a file was changed or removed"


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40


# -- the record and the leaderboard --------------------------------------------------------------------


def test_a_malformed_record_is_skipped_and_named_and_every_board_still_written(trained, tmp_path):
    dataset, run_dir = trained
    records = tmp_path / "runs"
    _copy(run_dir, records)
    bad = records / "bad"
    bad.mkdir()
    record = json.loads((run_dir / "result.json").read_text())
    record["metrics"] = "95.0"
    (bad / "result.json").write_text(json.dumps(record))
    result = invoke("leaderboard", "--records", records, "--out", tmp_path / "boards")
    assert result.exit_code == 0, result.output
    assert "bad/result.json" in result.output and "'metrics' should be a table" in result.output
    assert (tmp_path / "boards" / dataset / "standard-v1.md").is_file()


# -- writing -------------------------------------------------------------------------------------------


def test_a_full_disk_is_named_with_the_file(tmp_path, monkeypatch):
    def no_space(handle):
        raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left on device writing .*record\.json"):
        atomic_write(tmp_path / "record.json", no_space)
    assert list(tmp_path.iterdir()) == []  # no temporary file left

    # torch says "unexpected pos ..." when the disk fills; next to nothing free is put down to a full disk
    import mmrobust.files as files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))

    def torch_full(handle):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 962880 vs 962776")

    with pytest.raises(DiskFullError, match="model.pt"):
        atomic_write(tmp_path / "model.pt", torch_full)


def test_other_write_errors_pass_through(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "x", lambda handle: (_ for _ in ()).throw(RuntimeError("boom")))


# -- the Python API -------------------------------------------------------------------------------------


class _Linear(torch.nn.Module):
    modalities = ("rgb", "skeleton")

    def __init__(self, mode="sound"):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.rgb = torch.nn.Linear(3 * 2 * 4 * 4, 3)
        self.skeleton = torch.nn.Linear(3 * 4 * 5 * 1, 3)

    def forward(self, batch):
        logits = self.rgb(batch["rgb"].flatten(1)) + self.skeleton(batch["skeleton"].flatten(1))
        if self.mode == "nan":
            return logits * float("nan")
        if self.mode == "noisy":
            return logits + torch.randn_like(logits)
        return logits


def _arrays(rgb_scale=1.0):
    rng = np.random.default_rng(0)
    return {"rgb": rng.random((8, 3, 2, 4, 4), dtype=np.float32) * rgb_scale,
            "skeleton": rng.random((8, 3, 4, 5, 1), dtype=np.float32), "label": np.zeros(8, np.int64)}


def test_api_refuses_rgb_in_0_255():
    with pytest.raises(ValueError, match=r"modality 'rgb' spans \[0.*, 25.*\]; inputs must lie in \[0, 1\]"):
        mmrobust.evaluate(_Linear(), _arrays(255.0), "standard-v1")


def test_api_refuses_uint8_and_non_finite_inputs():
    arrays = _arrays()
    with pytest.raises(ValueError, match="'rgb' is uint8"):
        mmrobust.evaluate(_Linear(), {**arrays, "rgb": (arrays["rgb"] * 255).astype(np.uint8)})
    arrays["skeleton"][0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'skeleton' holds non-finite values"):
        mmrobust.evaluate(_Linear(), arrays)


def test_api_refuses_non_finite_logits():
    with pytest.raises(ValueError, match="non-finite logits for 8 of 8"):
        mmrobust.evaluate(_Linear("nan"), _arrays())


def test_api_returns_the_flags_of_a_record():
    sound = mmrobust.evaluate(_Linear(), _arrays())
    assert set(sound["flags"]["sanity"]) >= {"forward_deterministic", "within_budget", "verdicts_confirmed",
                                             "pgd_le_fgsm", "rs_le_min"}
    noisy = mmrobust.evaluate(_Linear("noisy"), _arrays())
    assert noisy["flags"]["sanity"]["forward_deterministic"] is False


def test_api_data_mapping_is_checked_for_the_models_modalities():
    with pytest.raises(ValueError, match="no modality 'skeleton'"):
        mmrobust.evaluate(_Linear(), {"rgb": _arrays()["rgb"], "label": np.zeros(8, np.int64)})


# -- processes ----------------------------------------------------------------------------------------------


def _cli_process(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmrobust", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


def test_a_second_run_into_a_busy_folder_fails_and_names_the_first(tmp_path):
    """The reported loss: two runs into one --run-dir both exited 0 and the second one's result was lost."""
    run_dir = tmp_path / "R"
    with exclusive(run_dir, "run directory"):  # a first run, as far as any other process can tell
        second = _cli_process("run", "--epochs", 1, "--seed", 1, "--run-dir", run_dir, "--quiet")
        output, _ = second.communicate(timeout=300)
    assert second.returncode != 0, output
    assert f"run directory {run_dir} is in use by pid {os.getpid()}" in output and "Traceback" not in output
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the second one wrote nothing


def test_a_lock_dies_with_its_process_even_under_sigkill(tmp_path):
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mmrobust.files import exclusive\n"
        f"with exclusive({str(folder)!r}, 'run directory'):\n    time.sleep(600)\n")])
    try:
        _wait_for(folder / ".lock")
        with pytest.raises(FolderInUseError, match=rf"in use by pid {holder.pid} "):
            with exclusive(folder, "run directory"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with exclusive(folder, "run directory"):  # free again
        write_json(folder / "ok.json", {"ok": True})
    assert json.loads((folder / "ok.json").read_text()) == {"ok": True}


def test_a_relative_data_dir_is_stored_absolute_and_eval_works_from_elsewhere(tmp_path, monkeypatch,
                                                                              small_synthetic_module):
    """The reported breakage: a relative --data-dir stored in config.json broke eval from another folder."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    result = invoke("run", "--dataset", small_synthetic_module, "--epochs", 1, "--data-dir", "cache",
                    "--run-dir", "run", "--quiet", "--attacks", "fgsm")
    assert result.exit_code == 0, result.output
    stored = json.loads((work / "run" / "config.json").read_text())["data_dir"]
    assert stored == str(work / "cache")
    monkeypatch.chdir(elsewhere)
    again = invoke("eval", "--run-dir", work / "run", "--quiet")
    assert again.exit_code == 0, again.output
    assert not (elsewhere / "cache").exists()
