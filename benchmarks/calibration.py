"""Is the undefended model's skeleton stream more robust than its video?

Both real datasets of the AMR paper say yes (Fig. 2, Table 1: ✗S well above
✗R under FGSM and PGD). This script measures the same on a dataset, over
several training seeds: it trains ``none`` with the dataset's recipe for each
seed, evaluates FGSM and PGD-20 with standard-v1's settings on the video (R)
and on the skeleton (S), and prints each seed, the mean, and how many seeds
show ✗S > ✗R. A single seed can mislead: eight epochs from scratch leave the
balance between the streams partly to chance.

Usage::

    python benchmarks/calibration.py --seeds 0 1 2 3 [--dataset synthetic] [--threads 2]
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from mmrobust.config import RunConfig
from mmrobust.protocol import evaluate, get_protocol
from mmrobust.run import prepare
from mmrobust.training import train


def measure(dataset: str, seed: int, work: Path) -> dict[str, float]:
    exp = prepare(RunConfig(dataset=dataset, seed=seed, device="cpu"), progress=False)
    train(exp.model, exp.defense, exp.data.train, exp.config, exp.config.epochs, work / f"seed{seed}",
          device=exp.device, progress=False)
    protocol = get_protocol("standard-v1", attacks=("fgsm", "pgd20"))
    result = evaluate(exp.model, exp.data.test, protocol, modalities=exp.config.modalities, device=exp.device,
                      batch_size=exp.config.eval_batch_size)
    row = {"seed": seed, "clean": 100.0 * float(np.mean(result.clean))}
    for attack in ("fgsm", "pgd20"):
        for target in ("R", "S"):
            row[f"{attack} ✗{target}"] = 100.0 * float(np.mean(result.robust[attack][target]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            started = time.perf_counter()
            rows.append(measure(args.dataset, seed, Path(work)))
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    columns = list(rows[0])[1:]
    table = [[row["seed"], *(f"{row[c]:.2f}" for c in columns)] for row in rows]
    table.append(["mean", *(f"{np.mean([row[c] for row in rows]):.2f}" for c in columns)])
    print(tabulate(table, headers=["seed", *columns], tablefmt="github"))
    for attack in ("fgsm", "pgd20"):
        ordered = sum(row[f"{attack} ✗S"] > row[f"{attack} ✗R"] for row in rows)
        print(f"{attack}: ✗S > ✗R in {ordered} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
