"""One benchmark run, from configuration to result record.

    RunConfig ─► dataset ─► model ─► defense.build ─► train ─► defense.after_training
              ─► checkpoint ─► evaluate ─► result.json

``execute`` is what ``mmrobust run`` calls; every step is a function of the
previous one's output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmrobust.config import RunConfig
from mmrobust.datasets.base import DatasetBundle
from mmrobust.defense import Defense, TrainContext, build_defense
from mmrobust.model import MultimodalNet, unimodal_modalities
from mmrobust.presets import get_preset, model_for
from mmrobust.registry import DATASETS
from mmrobust.results import RECORD_SCHEMA, provenance, write_json
from mmrobust.training import load_checkpoint, load_model_state, predict, resolve_device, train

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


@dataclass
class Experiment:
    """A run's resolved pieces, before training."""

    config: RunConfig
    data: DatasetBundle
    model: MultimodalNet
    defense: Defense
    device: torch.device


def default_run_dir(config: RunConfig) -> Path:
    tag = "-".join([config.defense.replace("+", "_"), config.preset, f"s{config.seed}"])
    if config.modalities:
        tag += "-" + "_".join(config.modalities)
    split = f"-{config.split}" if config.split else ""
    return Path("runs") / f"{config.dataset}{split}" / tag


def load_data(config: RunConfig, progress: bool = True) -> DatasetBundle:
    preset = get_preset(config.preset)
    request = preset.data_request(split=config.split, root=config.root, cache_dir=config.data_dir,
                                  seed=config.data_seed, progress=progress)
    return DATASETS.get(config.dataset)(request)


def prepare(config: RunConfig, progress: bool = True) -> Experiment:
    """Resolve names into objects: data, model, defense, device; fill defaults into the config."""
    device = resolve_device(config.device)
    defense = build_defense(config.defense, config.defense_params)  # before data: fail fast on bad names
    data = load_data(config, progress)
    modalities = unimodal_modalities(config.modalities, data.modalities) if config.modalities else data.modalities
    defense.check_modalities(modalities)
    config = config.replace(epochs=config.epochs or data.default_epochs, modalities=modalities,
                            split=config.split or data.split)
    torch.manual_seed(config.seed)
    model = defense.build(model_for(get_preset(config.preset), data, modalities))
    return Experiment(config, data, model, defense, device)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished or running directory unless resuming it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    if not resume and (run_dir / "checkpoint.pt").exists():
        raise RunDirError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                          "or choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"run directory {run_dir} is not writable ({error.strerror})") from None


def clean_accuracy(model: torch.nn.Module, exp: Experiment, batch_size: int = 64) -> float:
    predictions = predict(model, exp.data.test, batch_size, exp.device, exp.config.modalities)
    labels = torch.from_numpy(exp.data.test.labels)
    return 100.0 * float((predictions == labels).float().mean())


def execute(config: RunConfig, run_dir: Path, *, resume: dict[str, Any] | None = None, progress: bool = True,
            after_epoch=None) -> dict[str, Any]:
    """Train (or continue training) and evaluate; write and return the result record."""
    started = time.perf_counter()
    exp = prepare(config, progress)
    config = exp.config
    write_json(run_dir / "config.json", config.to_dict())
    if resume is not None:
        load_model_state(exp.model, resume, run_dir / "checkpoint.pt")
    result = train(exp.model, exp.defense, exp.data.train, config, config.epochs, run_dir, device=exp.device,
                   resume=resume, progress=progress, after_epoch=after_epoch)
    exp.defense.after_training(exp.model, exp.data.train, TrainContext(device=exp.device, modalities=config.modalities))
    metrics = {"clean": clean_accuracy(exp.model, exp)}
    record = {
        "schema": RECORD_SCHEMA,
        "dataset": config.dataset,
        "split": config.split,
        "defense": config.defense,
        "preset": config.preset,
        "modalities": list(config.modalities),
        "config": config.to_dict(),
        "metrics": metrics,
        "data": {"fingerprint": exp.data.fingerprint, "train_size": len(exp.data.train),
                 "test_size": len(exp.data.test), "num_classes": exp.data.num_classes,
                 "skeleton_scale": exp.data.skeleton_scale, "skeleton_unit": exp.data.skeleton_unit},
        "training": {"epochs": config.epochs, "final_loss": result.history[-1]["loss"] if result.history else None,
                     "seconds": result.seconds},
        "provenance": {**provenance(exp.device, config.seed), "wall_seconds": time.perf_counter() - started},
    }
    write_json(run_dir / "result.json", record)
    return record


def resume_state(run_dir: Path, checkpoint: str | None) -> dict[str, Any]:
    """The checkpoint a ``--resume`` points at (default: the run directory's)."""
    return load_checkpoint(Path(checkpoint) if checkpoint else run_dir / "checkpoint.pt")
