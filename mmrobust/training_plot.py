"""Training curves of one or more runs, drawn from their ``train_log.jsonl``.

Two panels over epochs: the training loss, and the accuracies (clean accuracy
on a fixed subset of the training data; with ``--holdout``, clean and PGD
robust accuracy on the held-out subjects, the robust one as the Avg over
attack targets with each target dashed). A run with held-out numbers is
titled with its convergence over the last quarter of epochs
(:func:`mmrobust.training.convergence`).

Example::

    plot_training([Path("runs/synthetic/amr-tiny-s0")], Path("amr-training.png"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrobust.training import TRAIN_LOG, convergence

LOG = TRAIN_LOG


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run; FileNotFoundError / ValueError naming the file when there are none."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (is {run_dir} a run directory, and has it finished an "
                                "epoch?)")
    return read_log_file(path)


def read_log_file(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a training log (a run's ``train_log.jsonl``, or the copy a sweep publishes
    beside its record); ValueError naming the file when there are none."""
    path = Path(path)
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno} is not JSON") from None
    if not rows or not all(isinstance(row, dict) and "epoch" in row and "loss" in row for row in rows):
        raise ValueError(f"{path}: no epoch rows with a loss")
    return rows


def describe(rows: list[dict[str, Any]]) -> str:
    """One line on convergence: the last quarter's change of held-out clean and robust accuracy."""
    found = convergence(rows)
    if found is None:
        return "no held-out curves (train with --holdout to measure convergence)"
    changes = found["changes"]
    verdict = "converged" if found["converged"] else "not converged"
    return (f"trend over the last {found['window']} of {len(rows)} epochs: held-out clean "
            f"{changes['heldout_clean']:+.2f}, "
            f"robust Avg {changes['heldout_avg']:+.2f} points ({verdict}: each under {found['limit']:g})")


def plot_training(run_dirs: Sequence[Path], out: Path) -> list[Path]:
    """Draw the runs' curves into ``out`` (PNG) and the same name with ``.svg``; return both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    logs = [(Path(d), read_log(Path(d))) for d in run_dirs]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    notes = []
    for index, (run_dir, rows) in enumerate(logs):
        colour = colours[index % len(colours)]
        epochs = [row["epoch"] + 1 for row in rows]
        name = run_dir.name
        loss_axis.plot(epochs, [row["loss"] for row in rows], color=colour, marker="o", ms=3, label=name)
        accuracy_axis.plot(epochs, [row["train_accuracy"] for row in rows], color=colour, alpha=0.45, lw=1,
                           label=f"{name}: train clean")
        if "heldout_clean" in rows[0]:
            accuracy_axis.plot(epochs, [row.get("heldout_clean") for row in rows], color=colour, marker="o", ms=3,
                               label=f"{name}: held-out clean")
            accuracy_axis.plot(epochs, [row.get("heldout_avg") for row in rows], color=colour, marker="s", ms=3,
                               lw=2, label=f"{name}: held-out robust Avg")
            for key in [k for k in rows[0] if k.startswith("heldout_") and k not in ("heldout_clean",
                                                                                     "heldout_avg")]:
                accuracy_axis.plot(epochs, [row.get(key) for row in rows], color=colour, ls="--", lw=0.8,
                                   label=f"{name}: held-out ✗{key.removeprefix('heldout_')}")
        notes.append(f"{name}: {describe(rows)}")
    loss_axis.set(xlabel="epoch", ylabel="training loss (defense's objective)", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    loss_axis.grid(alpha=0.3)
    accuracy_axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=7)
    accuracy_axis.legend(fontsize=6, ncol=1 if len(logs) == 1 else 2, loc="best")
    figure.suptitle("\n".join(notes), fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out, out.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=120, metadata={"Date": None} if path.suffix == ".svg" else {"Software": None})
    plt.close(figure)
    return paths
