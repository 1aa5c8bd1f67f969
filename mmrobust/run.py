"""One benchmark run, from configuration to result record.

    RunConfig ─► dataset ─► model ─► defense.build ─► train ─► defense.after_training
              ─► model.pt ─► protocol.evaluate ─► metrics ─► result.json

``execute`` is what ``mmrobust run`` calls; every step is a function of the
previous one's output.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmrobust.config import RunConfig
from mmrobust.datasets.base import DatasetBundle
from mmrobust.defense import Defense, TrainContext, build_defense
from mmrobust.files import RECORD_SCHEMA, write_json
from mmrobust.leaderboard import load_records
from mmrobust.metrics import fill_ri, robust_metrics
from mmrobust.model import MultimodalNet, unimodal_modalities
from mmrobust.presets import get_preset, model_for
from mmrobust.protocol import STANDARD_V1, Protocol, evaluate, get_protocol
from mmrobust.registry import DATASETS
from mmrobust.results import provenance, save_torch
from mmrobust.training import CHECKPOINT_FORMAT, load_checkpoint, load_model_state, resolve_device, train

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
    """Refuse an unusable directory, or one holding a run, before any work (creates nothing)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    if not resume and (run_dir / "checkpoint.pt").exists():
        raise RunDirError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                          "or choose another --run-dir")
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} cannot be created or written ({ancestor} is not a "
                          "writable directory)")


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"run directory {run_dir} cannot be created ({error.strerror})") from None


def record_name(protocol: str) -> str:
    """``result.json`` for the standard protocol, ``result-<protocol>.json`` otherwise."""
    return "result.json" if protocol == STANDARD_V1.name else f"result-{protocol}.json"


def execute(config: RunConfig, run_dir: Path, *, resume: dict[str, Any] | None = None, progress: bool = True,
            after_epoch=None) -> dict[str, Any]:
    """Train (or continue training), evaluate, and write the result record."""
    started = time.perf_counter()
    exp = prepare(config, progress)
    config = exp.config
    protocol = get_protocol(config.protocol, eps=config.eps, attacks=config.attacks)  # fail before training
    make_run_dir(run_dir)
    write_json(run_dir / "config.json", config.to_dict())
    if resume is not None:
        load_model_state(exp.model, resume, run_dir / "checkpoint.pt")
    result = train(exp.model, exp.defense, exp.data.train, config, config.epochs, run_dir, device=exp.device,
                   resume=resume, progress=progress, after_epoch=after_epoch)
    exp.defense.after_training(exp.model, exp.data.train, TrainContext(device=exp.device, modalities=config.modalities))
    save_final_model(exp.model, config, run_dir)
    training = {"epochs": config.epochs, "final_loss": result.history[-1]["loss"] if result.history else None,
                "seconds": result.seconds}
    return evaluate_experiment(exp, run_dir, protocol, training=training, started=started, progress=progress)


def save_final_model(model: torch.nn.Module, config: RunConfig, run_dir: Path) -> None:
    """The trained weights, including anything filled in after training (memory banks)."""
    save_torch(run_dir / "model.pt", {"format": CHECKPOINT_FORMAT, "config": config.to_dict(),
                                      "model": model.state_dict()})


def evaluate_experiment(exp: Experiment, run_dir: Path, protocol: Protocol, *, training: dict[str, Any] | None,
                        started: float, progress: bool = True) -> dict[str, Any]:
    """Run the protocol on the test split; write outcomes and the record."""
    config = exp.config
    suffix = "" if protocol.name == STANDARD_V1.name else f"-{protocol.name}"
    evaluation = evaluate(exp.model, exp.data.test, protocol, modalities=config.modalities,
                          batch_size=config.eval_batch_size, device=exp.device,
                          surrogate=exp.defense.surrogate(exp.model), state_path=run_dir / f"outcomes{suffix}.npz",
                          data_id=exp.data.fingerprint, progress=progress)
    metrics = robust_metrics(evaluation.clean, evaluation.robust)
    record = {
        "schema": RECORD_SCHEMA,
        "dataset": config.dataset,
        "split": config.split,
        "defense": config.defense,
        "preset": config.preset,
        "modalities": list(config.modalities),
        "protocol": protocol.name,
        "protocol_settings": protocol.settings(),
        "config": config.to_dict(),
        "metrics": metrics,
        "flags": {"surrogate_used": evaluation.surrogate_used,
                  "sanity": {**evaluation.audit, **consistency_checks(metrics, len(evaluation.labels))}},
        "evaluation": {"outcomes": f"outcomes{suffix}.npz", "batch_size": config.eval_batch_size,
                       **evaluation.cost},
        "data": {"fingerprint": exp.data.fingerprint, "train_size": len(exp.data.train),
                 "test_size": len(exp.data.test), "num_classes": exp.data.num_classes,
                 "skeleton_scale": exp.data.skeleton_scale, "skeleton_unit": exp.data.skeleton_unit},
        "training": training,
        "provenance": {**provenance(exp.device, config.seed), "wall_seconds": time.perf_counter() - started},
    }
    record = attach_reference(record, run_dir)
    write_json(run_dir / record_name(protocol.name), record)
    return record


def attach_reference(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Fill RI from the ``none`` record of the same dataset, preset, split, modalities and protocol.

    Looked for in the sibling run directories (``runs/<dataset>/*``); RI stays
    null, with a note, if there is none (``mmrobust leaderboard`` recomputes it).
    """
    if record["defense"] == "none":
        reference, where = record, str(run_dir)
    else:
        siblings = [p for p in run_dir.parent.glob("*/result*.json") if p.parent != run_dir]
        candidates = [r for r in load_records(siblings)
                      if r.get("defense") == "none" and same_setting(r, record)]
        reference = max(candidates, key=lambda r: r["provenance"].get("finished_at", ""), default=None)
        where = reference["_source"]["path"] if reference is not None else None
    metrics = dict(record["metrics"])
    if reference is None:
        metrics["ri_reference"] = {"run": None, "note": "no 'none' record of the same dataset, preset, split, "
                                                        "modalities and protocol was found; RI left empty"}
    else:
        metrics = fill_ri(metrics, reference["metrics"], reference_run=where)
    return {**record, "metrics": metrics}


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same dataset (and exact data), preset, split, modalities and protocol."""
    return (all(a.get(k) == b.get(k) for k in ("dataset", "preset", "split", "modalities", "protocol"))
            and a.get("data", {}).get("fingerprint") == b.get("data", {}).get("fingerprint"))


def consistency_checks(metrics: dict[str, Any], n: int) -> dict[str, bool]:
    """PGD ≤ FGSM and ✗RS ≤ min(✗R, ✗S) per attack, within one sample."""
    slack = 100.0 / max(n, 1)
    attacks = metrics["attacks"]
    checks = {}
    if "fgsm" in attacks and "pgd20" in attacks:
        checks["pgd_le_fgsm"] = all(attacks["pgd20"][t] <= attacks["fgsm"][t] + slack
                                    for t in attacks["fgsm"] if t in ("R", "S", "RS"))
    checks["rs_le_min"] = all(
        values["RS"] <= min(values["R"], values["S"]) + slack
        for values in attacks.values() if all(t in values for t in ("R", "S", "RS")))
    return checks


def load_trained(run_dir: Path, **changes: Any) -> Experiment:
    """Rebuild a finished run's model (defense included) and load its final weights."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    config = RunConfig.from_dict(json.loads(config_path.read_text()), source=str(config_path))
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    model_path = run_dir / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no trained model ({model_path.name}); finish the run first "
                                f"with mmrobust run --run-dir {run_dir} --resume")
    exp = prepare(config, progress=False)
    load_model_state(exp.model, load_checkpoint(model_path), model_path)
    exp.model.to(exp.device)
    return exp


def reevaluate(run_dir: Path, *, eps: float | None = None, attacks: tuple[str, ...] | None = None,
               device: str | None = None, batch_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a trained run again without retraining (``mmrobust eval``)."""
    started = time.perf_counter()
    exp = load_trained(run_dir, eps=eps, attacks=attacks, device=device, eval_batch_size=batch_size)
    protocol = get_protocol(exp.config.protocol, eps=exp.config.eps, attacks=exp.config.attacks)
    previous = run_dir / "result.json"
    training = json.loads(previous.read_text()).get("training") if previous.is_file() else None
    return evaluate_experiment(exp, run_dir, protocol, training=training, started=started, progress=progress)


def resume_state(run_dir: Path, checkpoint: str | None) -> dict[str, Any]:
    """The checkpoint a ``--resume`` points at (default: the run directory's)."""
    return load_checkpoint(Path(checkpoint) if checkpoint else run_dir / "checkpoint.pt")
