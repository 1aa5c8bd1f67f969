"""The GPU check: does mmrobust's CUDA path work on this machine, and what does the paper preset cost here?

Run it on a machine with a GPU (``bash benchmarks/gpu_check.sh``, under ten minutes on one modern GPU). It
prints one table:

1. ``tiny run`` / ``tiny eval``: ``mmrobust run`` (one epoch, defense none) and ``mmrobust eval`` on the
   embedded synthetic data, on CUDA, with their records' pinned numerics and device;
2. ``torchrun eval``: the same evaluation by 2 processes under ``torchrun``, whose per-sample outcomes must
   equal the single process's (on CUDA with two GPUs or more; with one GPU on the CPU, gloo, and says so);
3. ``paper step``: a few training steps of the ``paper`` preset (NTU shapes, 60 classes) at
   ``--batch-size``, clean and with a PGD-10 training adversary, without and with activation checkpointing:
   seconds per step and peak memory, beside ``mmrobust.memory.estimate_memory``'s estimate;
4. ``paper attack``: the attack engine's forward+backward throughput (PGD on both modalities, every clip
   running every step) against the raw model's own forward+backward to its inputs, at paper scale.

``--device cpu`` runs the same steps on the CPU with smaller settings (a dry run of the script itself; the
paper-scale rows then take minutes).

Usage::

    bash benchmarks/gpu_check.sh                     # or: python benchmarks/gpu_check.py --batch-size 16
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmrobust.defense import AdversaryParams, TrainingAdversary
from mmrobust.engine import Schedule, SignGradientAttack
from mmrobust.memory import checkpoint_blocks, estimate_memory
from mmrobust.model import logits_of
from mmrobust.presets import build_model, get_preset
from mmrobust.attack import RandomStarts
from mmrobust.results import Record

GIB = 2**30
NTU = {"rgb": (3, 32, 224, 224), "skeleton": (3, 32, 25, 2)}


def cli(*args: str, env: dict[str, str] | None = None, torchrun: int = 0) -> tuple[float, str]:
    """Run an mmrobust command (under torchrun with that many processes); its seconds and output."""
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun),
               "-m", "mmrobust"] if torchrun else [sys.executable, "-m", "mmrobust"])
    started = time.perf_counter()
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"`mmrobust {' '.join(args)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def outcomes(run_dir: Path) -> dict[str, np.ndarray]:
    record = Record.load(run_dir / "result.json")
    return {k: v for k, v in record.outcomes().items() if k not in ("key",) and "#" not in k}


def tiny_rows(device: str, workdir: Path) -> list[list[str]]:
    run_dir = workdir / "tiny"
    seconds, _ = cli("run", "--defense", "none", "--dataset", "synthetic", "--epochs", "1", "--device", device,
                     "--run-dir", str(run_dir), "--quiet")
    record = Record.load(run_dir / "result.json")
    pinned = record.provenance.get("numerics") or {}
    rows = [["tiny run", f"{seconds:.0f} s", f"clean {record.metrics['clean']:.2f} %, device "
             f"{record.provenance['device']}, numerics {pinned or 'cpu'}"]]
    again = workdir / "tiny-again"
    shutil.copytree(run_dir, again)
    (again / "result.json").unlink()
    (again / "outcomes.npz").unlink()
    seconds, _ = cli("eval", "--run-dir", str(again), "--device", device, "--quiet")
    same = all(np.array_equal(a, outcomes(again)[k]) for k, a in outcomes(run_dir).items())
    rows.append(["tiny eval", f"{seconds:.0f} s", f"per-sample outcomes equal to the run's: {same}"])

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    shard_device = device if gpus >= 2 or device == "cpu" else "cpu"
    single, shared = workdir / "tiny-single", workdir / "tiny-shared"
    for folder in (single, shared):
        shutil.copytree(run_dir, folder)
        (folder / "result.json").unlink()
        (folder / "outcomes.npz").unlink()
    # Batches of 8: the 270 test clips make 5 chunks of 64, so both processes attack.
    cli("eval", "--run-dir", str(single), "--device", shard_device, "--eval-batch-size", "8", "--quiet")
    seconds, _ = cli("eval", "--run-dir", str(shared), "--device", shard_device, "--eval-batch-size", "8", "--quiet",
                     torchrun=2, env={"OMP_NUM_THREADS": "1"})
    mismatches = sum(int((a != outcomes(shared)[k]).sum()) for k, a in outcomes(single).items())
    world = Record.load(shared / "result.json").provenance["distributed"]["world_size"]
    rows.append(["torchrun eval", f"{seconds:.0f} s", f"2 processes on {shard_device}"
                 f"{' (one GPU here)' if shard_device != device else ''}: world size {world}, "
                 f"{mismatches} outcomes differ from 1 process (must be 0)"])
    return rows


def paper_rows(device: torch.device, batch_size: int, steps: int) -> list[list[str]]:
    rows = []
    estimate = estimate_memory("paper", 60, batch_sizes=(batch_size,))
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model(get_preset("paper"), NTU, 60).to(device)
        checkpoint_blocks(model, checkpointed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batch = {m: torch.rand(batch_size, *shape, device=device) for m, shape in NTU.items()}
        batch["label"] = torch.randint(0, 60, (batch_size,), device=device)
        adversary = TrainingAdversary(AdversaryParams(steps=10))
        generator = torch.Generator(device=device).manual_seed(0)
        for name, adversarial in (("clean", False), ("PGD-10", True)):
            def step() -> None:
                model.train()
                inputs = adversary(model, batch, ("rgb", "skeleton"), generator) if adversarial else batch
                loss = torch.nn.functional.cross_entropy(logits_of(model(inputs)), batch["label"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            step()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - started) / steps
            peak = f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB" if device.type == "cuda" else "n/a (cpu)"
            key = "adversarial_training_step" if adversarial else "training_step"
            predicted = _estimate(estimate, key, checkpointed)
            rows.append([f"paper step, {name}{', checkpointed' if checkpointed else ''}", f"{per_step:.2f} s/step",
                         f"batch {batch_size}: peak {peak}, estimate {predicted}"])
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _estimate(estimate: dict, key: str, checkpointed: bool) -> str:
    """The estimate's peak for one step kind (``training_step``, ``adversarial_training_step``), in GiB."""
    row = next(row for row in estimate["rows"] if row["checkpointed"] == checkpointed)
    return f"{row[key] / GIB:.2f} GiB"


def attack_rows(device: torch.device, batch_size: int, steps: int) -> list[list[str]]:
    torch.manual_seed(0)
    model = build_model(get_preset("paper"), NTU, 60).to(device).eval().requires_grad_(False)
    batch = {m: torch.rand(batch_size, *shape, device=device) for m, shape in NTU.items()}
    batch["label"] = torch.randint(0, 60, (batch_size,), device=device)

    def raw() -> None:
        leaves = {m: batch[m].clone().requires_grad_(True) for m in NTU}
        loss = torch.nn.functional.cross_entropy(logits_of(model({**batch, **leaves})), batch["label"])
        torch.autograd.grad(loss, list(leaves.values()))

    engine = SignGradientAttack(Schedule(steps=steps, early_stop=False, final_check=False))

    def attack() -> int:
        return engine(model, batch, ("rgb", "skeleton"), 8 / 255, attack_all=True,
                      starts=RandomStarts.numbered(batch_size, 0)).gradient_passes

    raw()
    attack()
    timings = {}
    for name, work in (("raw", lambda: [raw() for _ in range(steps)] and steps * batch_size), ("engine", attack)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        passes = work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = passes / (time.perf_counter() - started)
    return [["paper attack", f"{timings['engine']:.1f} clips/s",
             f"engine PGD-{steps} on R+S at batch {batch_size}: {timings['engine'] / timings['raw']:.2f}× the raw "
             f"model's forward+backward ({timings['raw']:.1f} clips/s)"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="paper-scale batch (default: 16 on CUDA, 1 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CUDA, 1 on CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this check needs a GPU (--device cpu runs a dry run of the script)")
    device = torch.device(args.device)
    batch_size = args.batch_size or (16 if device.type == "cuda" else 1)
    steps = args.steps or (5 if device.type == "cuda" else 1)
    what = torch.cuda.get_device_name(0) if device.type == "cuda" else mmrobust.runtime.cpu_model()
    print(f"device: {what}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if device.type == 'cuda' else None}")
    if device.type == "cuda":
        mmrobust.runtime.pin_cuda()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmrobust-gpu-check-") as workdir:
        rows = tiny_rows(args.device, Path(workdir))
    rows += paper_rows(device, batch_size, steps)
    rows += attack_rows(device, batch_size, max(steps, 2))
    from tabulate import tabulate

    print(tabulate(rows, headers=["check", "time", "result"]))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
