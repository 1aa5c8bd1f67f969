"""Several processes on the CPU (torch.distributed, gloo): sharded evaluation gives the single process's
outcomes bit for bit with every sample attacked once; DDP training keeps the ranks in step and takes the
step of the global batch; a 2-process `torchrun` run survives the death of a rank.

The in-process tests fork their ranks (the model and data are inherited, nothing is re-imported); the
last one launches the real `torchrun`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmrobust.datasets.base import Split
from mmrobust.defense import build_defense, defend
from mmrobust.distributed import SOLO, Team
from mmrobust.model import logits_of
from mmrobust.presets import build_model, get_preset
from mmrobust.protocol import AttackSetting, Protocol, evaluate
from mmrobust.registry import DEFENSES
from mmrobust.training import replicate, shard_batches

SHAPES = {"rgb": (3, 8, 32, 32), "skeleton": (3, 32, 25, 2)}
CLASSES = 5


def _model(seed: int = 0, defense: str = "none") -> torch.nn.Module:
    torch.manual_seed(seed)
    return defend(build_defense(defense), build_model(get_preset("tiny"), SHAPES, CLASSES))


def _split(n: int, seed: int = 0, model: torch.nn.Module | None = None) -> Split:
    """Random clips; the second person is absent from every other clip (its slot is padding). With
    ``model``, most labels are the model's own clean predictions, so most clips are attacked."""
    rng = np.random.default_rng(seed)
    skeleton = rng.random((n, *SHAPES["skeleton"]), dtype=np.float32)
    skeleton[::2, ..., 1] = 0.0
    arrays = {"rgb": rng.integers(0, 256, (n, *SHAPES["rgb"]), dtype=np.uint8), "skeleton": skeleton,
              "label": rng.integers(0, CLASSES, n)}
    if model is not None:
        split = Split(arrays)
        with torch.no_grad():
            predicted = logits_of(model.eval()(split.batch(np.arange(n)))).argmax(1).numpy()
        arrays["label"] = np.where(np.arange(n) % 7 == 0, arrays["label"], predicted)
    return Split(arrays)


def _ranks(size: int, job, tmp_path: Path, *args) -> list:
    """Run ``job(team, *args)`` in ``size`` forked processes joined by gloo; their return values by rank."""
    rendezvous = tmp_path / f"rendezvous-{len(list(tmp_path.glob('rendezvous-*')))}"  # a file serves one group
    mp.start_processes(_rank, args=(size, str(rendezvous), job, str(tmp_path), args), nprocs=size,
                       start_method="fork")
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(size)]


def _rank(rank: int, size: int, rendezvous: str, job, out: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size)
    try:
        result = job(Team(rank=rank, size=size, local_rank=rank, backend="gloo"), *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# -- sharded evaluation ---------------------------------------------------------------------------

PLAIN = Protocol("plain-test", eps=8 / 255, attacks=(
    AttackSetting("fgsm", "fgsm"),
    AttackSetting("pgd3", "pgd", (("steps", 3), ("rel_step", 0.25), ("random_start", True)))))
CASCADE = Protocol("cascade-test", eps=4 / 255, cascade=True, attacks=PLAIN.attacks)


def _evaluate(team: Team, model, data, protocol, store=None):
    from mmrobust.datasets.base import SKELETON

    evaluation = evaluate(model, data, protocol, batch_size=2, store=store, team=team,
                          padding={"skeleton": SKELETON.padding})
    return {"clean": evaluation.clean, "robust": evaluation.robust, "audit": evaluation.audit,
            "passes": (evaluation.cost["gradient_passes"], evaluation.cost["forward_passes"]),
            "cells": {k: (v["gradient_passes"], v["forward_passes"]) for k, v in evaluation.cells.items()},
            "disagreements": evaluation.disagreements, "store": None if store is None else sorted(store)}


@pytest.fixture(scope="module")
def evaluated():
    """A model, 41 test clips (not a multiple of 2 or 3; 3 chunks of 16 at batch size 2), and the
    single-process evaluations under both protocols."""
    model = _model()
    data = _split(41, model=model)
    single = {p.name: _evaluate(SOLO, model, data, p) for p in (PLAIN, CASCADE)}
    return model, data, single


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_evaluation_gives_the_single_process_outcomes_bit_for_bit(evaluated, size, tmp_path):
    model, data, single = evaluated

    def job(team):
        return {p.name: _evaluate(team, model, data, p, store={} if team.main else None) for p in (PLAIN, CASCADE)}

    results = _ranks(size, job, tmp_path)
    assert single["plain-test"]["clean"].sum() >= 30  # most clips are attacked
    for name, alone in single.items():
        for rank, result in enumerate(results):
            shared = result[name]
            assert np.array_equal(shared["clean"], alone["clean"])
            assert shared["robust"].keys() == alone["robust"].keys()
            for cell, targets in alone["robust"].items():
                for code, outcome in targets.items():
                    assert np.array_equal(shared["robust"][cell][code], outcome), (name, rank, cell, code)
            # Every sample attacked exactly once: the passes spent are the single process's, cell by cell.
            assert shared["cells"] == alone["cells"], (name, rank)
            assert shared["passes"] == alone["passes"]
            assert shared["audit"] == alone["audit"]
            assert shared["disagreements"] == alone["disagreements"] == 0
    # Rank 0 filled the store with every cell; the others wrote nothing to theirs.
    assert results[0]["plain-test"]["store"] and all(r["plain-test"]["store"] is None for r in results[1:])
    assert any(not outcome.all() for targets in single["cascade-test"]["robust"].values()
               for outcome in targets.values()), "the attacks must break some samples for the test to mean much"


def test_more_processes_than_test_samples_is_refused():
    data = _split(3)
    with pytest.raises(ValueError, match="4 processes for 3 test samples"):
        evaluate(_model(), data, PLAIN, team=Team(rank=0, size=4))


def _partly_stored(team: Team, model, data, stored):
    """Rank 0 starts from a store that holds some cells; the other ranks are given none."""
    return _evaluate(team, model, data, PLAIN, store=dict(stored) if team.main else None)


def test_every_rank_skips_the_cells_that_rank_0_has_stored(evaluated, tmp_path):
    model, data, single = evaluated
    store: dict = {}
    _evaluate(SOLO, model, data, PLAIN, store=store)
    first = {k: v for k, v in store.items() if not k.startswith("pgd3")}  # the FGSM cells are finished
    assert len(first) < len(store)
    results = _ranks(2, _partly_stored, tmp_path, model, data, first)
    for result in results:  # the other rank must not attack the FGSM cells rank 0 skips (it would not meet
        for cell, targets in single["plain-test"]["robust"].items():  # rank 0 at the gather)
            for code, outcome in targets.items():
                assert np.array_equal(result["robust"][cell][code], outcome), (cell, code)
    assert results[0]["store"] == sorted(store)


def _outcome(call):
    """What a call on a rank came to: ('ok', value) or (exception class name, message)."""
    try:
        return "ok", call()
    except Exception as error:
        return type(error).__name__, str(error)


def _collectives(team: Team):
    def fails():
        raise ValueError("no checkpoint here")

    return {"agree": _outcome(lambda: team.agree("data fingerprint", "abc123" if team.main else "abc124")),
            "gather": _outcome(lambda: team.gather({team.rank: 1}, tag="fgsm/R" if team.main else "fgsm/S")),
            "on_main": _outcome(lambda: team.on_main(lambda: {"epoch": 2, "rank": team.rank})),
            "on_main fails": _outcome(lambda: team.on_main(fails))}


def test_ranks_that_disagree_or_fail_at_work_for_the_team_stop_with_one_message_from_rank_0(tmp_path):
    first, second = _ranks(2, _collectives, tmp_path)
    assert first["agree"] == ("TeamError", "rank 1 has another data fingerprint than rank 0 ('abc124' against "
                                           "'abc123'); every rank must see the same files and settings")
    assert second["agree"][0] == "MainFailed"  # the CLI exits silently on it: rank 0 says why
    # Ranks at the gathers of different work stop instead of merging it.
    assert first["gather"][0] == second["gather"][0] == "TeamError"
    assert "rank 1 gathered 'fgsm/S' while this rank gathered 'fgsm/R'" in first["gather"][1]
    # Rank 0 alone does the work, and every rank gets its result (or learns that it failed).
    assert first["on_main"] == second["on_main"] == ("ok", {"epoch": 2, "rank": 0})
    assert first["on_main fails"] == ("ValueError", "no checkpoint here")
    assert second["on_main fails"][0] == "MainFailed"


def test_an_explicit_gpu_or_too_many_processes_per_node_are_refused_on_every_rank_alike(monkeypatch):
    from mmrobust.distributed import join

    for rank in range(2):
        with pytest.raises(ValueError, match="names one GPU"):
            Team(rank=rank, size=2, local_rank=rank).device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        with pytest.raises(ValueError, match="^2 processes per node, but this machine has 1 GPUs"):
            join("cuda")


# -- training ---------------------------------------------------------------------------------------

def test_each_global_batch_is_split_over_the_ranks_without_overlap():
    data = _split(23)
    for size in (1, 2, 3):
        parts = [list(shard_batches(data, 8, torch.Generator().manual_seed(5), ("skeleton",), Team(r, size)))
                 for r in range(size)]
        order = torch.randperm(23, generator=torch.Generator().manual_seed(5)).numpy()
        for step in range(3):  # 8 + 8 + 7 clips; the last batch has at least one clip per rank
            batch = order[step * 8:(step + 1) * 8]
            labels = np.concatenate([parts[r][step][0]["label"].numpy() for r in range(size)])
            assert np.array_equal(labels, data.labels[batch])
            for part, weight in (parts[r][step] for r in range(size)):
                # DDP averages weight × (mean loss of the part) over the ranks: each clip counts 1/8.
                assert weight / len(part["label"]) / size == pytest.approx(1 / len(batch))
        assert all(len(p) == 3 for p in parts)
    # 23 clips in batches of 11 over 3 ranks: the last global batch (1 clip) cannot be split and is left out.
    assert len(list(shard_batches(data, 11, torch.Generator().manual_seed(5), None, Team(0, 3)))) == 2


def _train_defenses(team: Team, names: list[str], runs: Path, settings: dict | None = None):
    from mmrobust.config import RunConfig
    from mmrobust.memory import checkpoint_blocks
    from mmrobust.training import train

    out = {}
    for name in names:
        model = _model(defense=name)
        config = RunConfig(defense=name, batch_size=6, epochs=1, seed=3, **(settings or {}))
        if config.grad_checkpoint:
            checkpoint_blocks(model)
        result = train(model, build_defense(name), _split(12, seed=1), config, 1, runs / name,
                       device=torch.device("cpu"), progress=False, team=team)
        out[name] = {"state": {k: v.clone() for k, v in model.state_dict().items()},
                     "loss": result.history[-1]["loss"]}
    return out


def test_ddp_training_keeps_every_registered_defense_in_step_across_ranks(tmp_path):
    names = DEFENSES.names()
    for name in names:
        (tmp_path / "runs" / name).mkdir(parents=True)
    results = _ranks(2, _train_defenses, tmp_path, names, tmp_path / "runs")
    for name in names:
        first, second = results[0][name], results[1][name]
        assert np.isfinite(first["loss"])
        for key, value in first["state"].items():  # parameters and BatchNorm buffers, bit for bit
            assert torch.equal(value, second["state"][key]), (name, key)
        assert (tmp_path / "runs" / name / "checkpoint.pt").is_file()


def test_ddp_training_under_bf16_autocast_and_checkpointing_keeps_the_ranks_in_step(tmp_path):
    runs = {variant: tmp_path / variant for variant in ("fp32", "amp", "checkpointed")}
    for folder in runs.values():
        (folder / "amr").mkdir(parents=True)
    fp32 = _ranks(2, _train_defenses, tmp_path, ["amr"], runs["fp32"])[0]["amr"]["state"]
    for variant, settings in (("amp", {"amp": True}), ("checkpointed", {"grad_checkpoint": True})):
        first, second = (r["amr"]["state"] for r in _ranks(2, _train_defenses, tmp_path, ["amr"], runs[variant],
                                                              settings))
        for key, value in first.items():
            assert torch.equal(value, second[key]), (variant, key)
        moved = [key for key, value in first.items() if value.is_floating_point() and not torch.equal(value, fp32[key])]
        if variant == "amp":  # bf16 autocast is another computation: the weights it reaches differ
            assert moved
        else:  # recomputing the blocks in the backward pass changes no number
            assert not moved, moved[:3]


def _finetune_exfmem(team: Team, run_dir: Path):
    from mmrobust.config import RunConfig
    from mmrobust.training import train

    params = {"finetune": 0.5, "bank_size": 8}  # epoch 2 of 2 is trained through the filled banks
    defense = build_defense("exfmem", params)
    torch.manual_seed(0)
    model = defend(defense, build_model(get_preset("tiny"), SHAPES, CLASSES))
    config = RunConfig(defense="exfmem", defense_params=params, batch_size=6, epochs=2, seed=3)
    train(model, defense, _split(12, seed=1), config, 2, run_dir, device=torch.device("cpu"), progress=False,
          team=team)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ddp_fine_tuning_through_exfmem_banks_keeps_the_ranks_in_step(tmp_path):
    (tmp_path / "run").mkdir()
    first, second = _ranks(2, _finetune_exfmem, tmp_path, tmp_path / "run")
    banks = [key for key in first if key.endswith(".bank")]
    assert banks and all(bool(first[key.replace(".bank", ".filled")]) for key in banks)  # filled at epoch 2
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_sync_bn_in_one_process_is_refused_before_any_work(tmp_path):
    from mmrobust.config import RunConfig
    from mmrobust.run import execute

    with pytest.raises(ValueError, match="--sync-bn normalises over the processes of a torchrun run"):
        execute(RunConfig(sync_bn=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_is_resumed_only_by_as_many_processes_as_trained_it(tmp_path):
    from mmrobust.config import RunConfig
    from mmrobust.training import CheckpointError, load_checkpoint, train

    config = RunConfig(batch_size=6, epochs=2, seed=3)
    data = _split(12, seed=1)
    train(_model(), build_defense("none"), data, config, 1, tmp_path, device=torch.device("cpu"), progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["world_size"] == 1
    state["world_size"] = 2
    with pytest.raises(CheckpointError, match="trained by 2 process.*this run has 1.*resume with 2"):
        train(_model(), build_defense("none"), data, config, 2, tmp_path, device=torch.device("cpu"),
              resume=state, progress=False)


def test_sync_bn_on_the_cpu_is_refused_before_any_work():
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        replicate(_model(), torch.device("cpu"), Team(rank=0, size=2), sync_bn=True)


def _weighted_step(team: Team, data: Split):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    replicated = replicate(model, torch.device("cpu"), team)
    for batch, weight in shard_batches(data, 5, torch.Generator().manual_seed(2), ("feature",), team):
        loss = torch.nn.functional.cross_entropy(replicated(batch["feature"]), batch["label"])
        (loss * weight).backward()
        break
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_a_ddp_step_is_the_step_of_the_global_batch_when_ranks_hold_unequal_shares(tmp_path):
    rng = np.random.default_rng(0)
    data = Split({"feature": rng.random((10, 4), dtype=np.float32), "label": rng.integers(0, 3, 10)})
    alone = _weighted_step(SOLO, data)
    for rank_grads in _ranks(2, _weighted_step, tmp_path, data):  # 5 clips: 3 on rank 0, 2 on rank 1
        for name, grad in alone.items():
            torch.testing.assert_close(rank_grads[name], grad, rtol=1e-6, atol=1e-7)


# -- torchrun ---------------------------------------------------------------------------------------

LAUNCHER = """
    import dataclasses, os, sys, time
    from pathlib import Path

    import numpy as np
    import torch
    import mmrobust
    from mmrobust.datasets.base import Dataset
    from mmrobust.registry import DATASETS, DEFENSES

    @DATASETS.register("synthetic-slice")
    class Slice(Dataset):
        modalities = DATASETS.get("synthetic").modalities

        def load(self, request):
            full = DATASETS.get("synthetic")().load(request)
            return dataclasses.replace(full, name="synthetic-slice", train=full.train.take(np.arange(0, len(full.train), 24)),
                                       test=full.test.take(np.arange(0, len(full.test), 27)), default_epochs=3,
                                       fingerprint=full.fingerprint + "-slice", train_subjects=None)

    # Rank 1 dies at the first batch of the second epoch and again at that of the third, once each (a
    # marker file per epoch says whether it did). It waits until rank 0 has checkpointed the epoch before:
    # dying at once would race that write, and torchrun would stop rank 0 before or after it.
    none = DEFENSES.get("none")
    loss = none.loss
    checkpoint = Path(sys.argv[sys.argv.index("--run-dir") + 1]) / "checkpoint.pt"

    def checkpointed():
        try:
            return torch.load(checkpoint, weights_only=True)["epoch"]
        except (FileNotFoundError, RuntimeError, EOFError):
            return 0

    def dying(self, model, batch, ctx):
        marker = Path(os.environ["DIE_MARKER"] + f"-{ctx.epoch}")
        if ctx.epoch in (1, 2) and os.environ["RANK"] == "1" and not marker.exists():
            deadline = time.monotonic() + 300
            while checkpointed() < ctx.epoch and time.monotonic() < deadline:
                time.sleep(0.05)
            marker.write_text("died")
            os._exit(9)
        return loss(self, model, batch, ctx)

    none.loss = dying
    from mmrobust.cli import main
    sys.argv[0] = "mmrobust"
    main()
"""


@pytest.mark.slow
def test_a_two_process_torchrun_run_resumes_after_dead_ranks_and_records_its_world_size(tmp_path, data_cache):
    """Rank 1 dies in epoch 2: torchrun restarts the group (--max-restarts 1), which resumes by itself; it
    dies again in epoch 3 with no restart left; `--resume` finishes the run."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(LAUNCHER))
    run_dir = tmp_path / "run"
    env = {**os.environ, "DIE_MARKER": str(tmp_path / "died"), "OMP_NUM_THREADS": "1",
           "MMROBUST_CACHE": str(data_cache)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", str(launcher), "run", "--dataset", "synthetic-slice", "--defense", "none",
               "--device", "cpu", "--attacks", "fgsm", "--eval-batch-size", "4", "--run-dir", str(run_dir), "--quiet"]
    died = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert died.returncode != 0, died.stderr[-3000:]
    assert (tmp_path / "died-1").exists() and (tmp_path / "died-2").exists(), died.stderr[-3000:]
    assert died.stderr.count("run directory:") == 2  # rank 0 alone speaks, once per start of the group
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2  # the restart trained epoch 2
    assert not list(run_dir.glob("result*.json"))

    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(next(run_dir.glob("result*.json")).read_text())
    assert record["provenance"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert record["training"]["world_size"] == 2  # per-rank BatchNorm: the leaderboard says "2 processes"
    from mmrobust.leaderboard import recipe
    from mmrobust.results import Record
    assert recipe(Record.load(next(run_dir.glob("result*.json")))) == "2 processes"
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]  # each epoch once in the log, though epochs 2 and 3 were started twice
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 3


# -- the command line under torchrun ------------------------------------------------------------------

def test_another_rank_names_itself_in_its_error_and_is_silent_when_rank_0_reports(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import mmrobust.cli
    import mmrobust.run
    from mmrobust.distributed import MainFailed

    monkeypatch.setattr(mmrobust.cli, "OTHER_RANK_GRACE", 0.0)
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(mmrobust.cli.cli, ["run", "--defense", "noen", "--run-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: rank 1: unknown defense 'noen'"), result.output

    def rank_0_failed(config):
        raise MainFailed("rank 0 failed; it says why")

    monkeypatch.setattr(mmrobust.run, "validate", rank_0_failed)
    result = CliRunner().invoke(mmrobust.cli.cli, ["run", "--run-dir", str(tmp_path / "d")])
    assert (result.exit_code, result.output) == (1, "")


def _checkpoint(path: Path, epoch: int) -> Path:
    from mmrobust.config import RunConfig
    from mmrobust.training import CHECKPOINT_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": epoch, "epochs": 4, "config": RunConfig().to_dict(),
                "model": {}, "optimizer": {}, "scheduler": {}, "rng": torch.get_rng_state()}, path)
    return path


def test_a_restarted_worker_group_continues_from_the_newest_checkpoint(monkeypatch, tmp_path):
    from mmrobust.cli import _starting_point
    from mmrobust.config import RunConfig

    run_dir = tmp_path / "run"
    earlier, later = _checkpoint(tmp_path / "epoch1.pt", 1), _checkpoint(tmp_path / "epoch3.pt", 3)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _starting_point(RunConfig(), {}, run_dir, None)[1] is None  # died before its first checkpoint
    assert _starting_point(RunConfig(), {}, run_dir, str(earlier))[1]["epoch"] == 1
    _checkpoint(run_dir / "checkpoint.pt", 2)  # the run, resumed from epoch 1, has finished epoch 2
    assert _starting_point(RunConfig(), {}, run_dir, None)[1]["epoch"] == 2
    assert _starting_point(RunConfig(), {}, run_dir, str(earlier))[1]["epoch"] == 2  # not back to epoch 1
    assert _starting_point(RunConfig(), {}, run_dir, str(later))[1]["epoch"] == 3
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # the first start: --resume PATH means PATH
    assert _starting_point(RunConfig(), {}, run_dir, str(earlier))[1]["epoch"] == 1
