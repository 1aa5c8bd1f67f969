"""One benchmark run, from configuration to result record.

    RunConfig ─► dataset ─► model ─► defense.build ─► train ─► defense.after_training
              ─► model.pt ─► protocol.evaluate ─► metrics ─► result.json

``execute`` is what ``mmrobust run`` calls; every step is a function of the
previous one's output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrobust.config import RunConfig
from mmrobust.datasets.base import Dataset, DatasetBundle, Split
from mmrobust import runtime
from mmrobust.defense import (Defense, TrainContext, adaptive_views, build_defense, changed_params, defend,
                              reference_defense)
from mmrobust.distributed import SOLO, Team
from mmrobust.files import LOCK_FILE, exclusive, write_json
from mmrobust.metrics import fill_ri, robust_metrics
from mmrobust.model import MultimodalNet, unimodal_modalities
from mmrobust.presets import get_preset, model_for
from mmrobust.protocol import STANDARD_V1, AttackSetting, Protocol, evaluate, get_protocol, ordering_checks
from mmrobust.registry import DATASETS
from mmrobust.results import (OlderRecordError, OutcomeStore, Record, RecordError, device_name, find_reference,
                              outcome_key, provenance, records_beside, save_torch)
from mmrobust.memory import checkpoint_blocks
from mmrobust.training import (CHECKPOINT_FORMAT, check_resume_state, convergence, load_checkpoint,
                               load_model_state, resolve_device, train)

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
    team: Team = SOLO
    numerics: dict[str, Any] | None = None  # the pinned CUDA settings (runtime.pin_cuda); None on the CPU


def default_run_dir(config: RunConfig) -> Path:
    tag = "-".join([config.defense.replace("+", "_"), config.preset, f"s{config.seed}"])
    if config.modalities:
        tag += "-" + "_".join(config.modalities)
    for key, value in sorted(changed_params(config.defense, config.defense_params).items()):  # variants of a defense
        tag += f"-{key}{value:g}" if isinstance(value, float) else f"-{key}{str(value).lower()}"
    if config.recipe != "scratch":
        tag += f"-{config.recipe}"
    if config.holdout:
        tag += f"-holdout{config.holdout:g}"
    tag += "-amp" * config.amp + "-syncbn" * config.sync_bn
    split = f"-{config.split}" if config.split else ""
    return Path("runs") / f"{config.dataset}{split}" / tag


def load_data(config: RunConfig, progress: bool = True) -> DatasetBundle:
    preset = get_preset(config.preset)
    request = preset.data_request(split=config.split, root=config.root, cache_dir=config.data_dir,
                                  seed=config.data_seed, progress=progress)
    factory = DATASETS.get(config.dataset)
    if not (isinstance(factory, type) and issubclass(factory, Dataset)):
        raise ValueError(f"dataset {config.dataset!r} ({DATASETS.origin(config.dataset)}) is not a subclass of "
                         "mmrobust.datasets.base.Dataset; see CONTRIBUTING.md for the dataset contract")
    return factory().load(request)


def prepare(config: RunConfig, progress: bool = True, team: Team = SOLO) -> Experiment:
    """Resolve names into objects: data, model, defense, device; fill defaults into the config.

    Under several processes rank 0 loads the data first (it may build the
    cache), the others after it; every rank must then hold the same data and
    configuration (:class:`mmrobust.distributed.TeamError` otherwise).
    """
    device = team.device(resolve_device(config.device))
    numerics = runtime.pin_cuda() if device.type == "cuda" else None
    defense = build_defense(config.defense, config.defense_params)  # before data: fail fast on bad names
    if team.main:
        data = load_data(config, progress)
        team.barrier()
    else:
        team.barrier()
        data = load_data(config, progress=False)
    team.agree("data fingerprint", data.fingerprint)
    team.agree("configuration", config.to_dict())
    modalities = unimodal_modalities(config.modalities, data.modalities) if config.modalities else data.modalities
    defense.check_modalities(modalities)
    config = config.replace(epochs=config.epochs or data.default_epochs, modalities=modalities,
                            split=config.split or data.split)
    torch.manual_seed(config.seed)
    model = defend(defense, model_for(get_preset(config.preset), data, modalities))
    if config.grad_checkpoint:
        checkpoint_blocks(model)
    return Experiment(config, data, model, defense, device, team, numerics)


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


@contextlib.contextmanager
def holding(run_dir: Path, *, fresh: bool, team: Team = SOLO) -> Iterator[None]:
    """Hold ``run_dir`` for one run or evaluation (:func:`mmrobust.files.exclusive`; a second process gets a
    one-line error naming this one). A ``fresh`` run refuses a folder that holds a run, checked under the
    lock. A folder created here that is left with nothing but the lock (the work failed before writing
    anything) is removed again. Under several processes rank 0 holds it for the team."""
    if not team.main:
        yield
        return
    created = not run_dir.exists()
    try:
        with exclusive(run_dir, "run directory"):
            if fresh and (run_dir / "checkpoint.pt").exists():
                raise RunDirError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                                  "or choose another --run-dir")
            yield
    finally:
        if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(run_dir, ignore_errors=True)


def validate(config: RunConfig) -> Protocol:
    """Check what can be checked before any data is loaded: device, defense and its parameters, protocol,
    ε and attacks. Returns the protocol."""
    resolve_device(config.device)
    build_defense(config.defense, config.defense_params)
    protocol = get_protocol(config.protocol, eps=config.eps, attacks=config.attacks)
    for setting in protocol.attacks:
        setting.build()
    return protocol


def check_record_free(path: Path) -> None:
    """Refuse to overwrite a record this version cannot read (a newer schema, not a record at all): it is
    left as it is, for the user to move away."""
    if not path.exists():
        return
    try:
        Record.load(path)
    except OlderRecordError:
        return  # rewritten, as the message of Record.load suggests
    except RecordError as error:
        raise RecordError(f"{error}; it is left as it is: move it away to write a new record there") from None


def record_name(protocol: str) -> str:
    """``result.json`` for the standard protocol, ``result-<protocol>.json`` otherwise."""
    return "result.json" if protocol == STANDARD_V1.name else f"result-{protocol}.json"


def execute(config: RunConfig, run_dir: Path, *, resume: dict[str, Any] | None = None, progress: bool = True,
            after_epoch=None, team: Team = SOLO) -> Record:
    """Train (or continue training), evaluate, and write the result record (rank 0 of ``team`` writes; the
    other ranks return the record unsaved)."""
    started = time.perf_counter()
    protocol = validate(config)  # before any data is loaded
    check_record_free(run_dir / record_name(protocol.name))
    if config.sync_bn and team.size == 1:
        raise ValueError("--sync-bn normalises over the processes of a torchrun run; one process already "
                         "normalises over the whole batch (drop the flag)")
    exp = prepare(config, progress, team)
    config = exp.config
    for setting in protocol.attacks:  # before training
        setting.build().check_classes(exp.data.num_classes)
    if config.test_subset:
        stratified_subset(exp.data.test.labels, config.test_subset)  # a subset too large fails before training
    if resume is not None:
        check_resume_state(resume, run_dir / "checkpoint.pt", config.epochs)
    with holding(run_dir, fresh=resume is None, team=team):
        if team.main:
            write_json(run_dir / "config.json", config.to_dict())
        if resume is not None:
            load_model_state(exp.model, resume, run_dir / "checkpoint.pt")
        initialised = None
        if config.recipe == "warm-start":  # the initial weights' origin, kept for a resumed run too
            if resume is None:
                initialised = warm_start(exp, run_dir)
                if team.main:
                    write_json(run_dir / INIT_FILE, initialised)
            elif (run_dir / INIT_FILE).is_file():
                initialised = json.loads((run_dir / INIT_FILE).read_text())
        train_split, heldout = hold_out(exp.data, config.holdout)
        validate_fn = heldout_validation(heldout, config, protocol, exp) if heldout is not None else None
        result = train(exp.model, exp.defense, train_split, config, config.epochs, run_dir, device=exp.device,
                       resume=resume, progress=progress, after_epoch=after_epoch, validate=validate_fn, team=team)
        exp.defense.after_training(exp.model, train_split,
                                   TrainContext(device=exp.device, modalities=config.modalities))
        if team.main:
            save_final_model(exp.model, config, run_dir)
        training = {"epochs": config.epochs, "final_loss": result.history[-1]["loss"] if result.history else None,
                    "seconds": result.seconds}
        if team.size > 1:  # BatchNorm sees each rank's share of a batch: part of how the model was trained
            training["world_size"] = team.size
        if heldout is not None:
            training["heldout"] = {"share": config.holdout, "size": len(heldout), "steps": config.holdout_steps,
                                   "last": {k: v for k, v in result.history[-1].items() if k.startswith("heldout_")}
                                   if result.history else {}}
            training["convergence"] = convergence(result.history)
        if initialised is not None:
            training["init_from"] = initialised
        return evaluate_experiment(exp, run_dir, protocol, training=training, started=started, progress=progress)


HOLDOUT_SEED = 0  # the held-out subjects do not change with the training seed: every seed is scored alike


def heldout_mask(data: DatasetBundle, share: float) -> np.ndarray | None:
    """True for the training samples held out of training (None when ``share`` is 0).

    Whole subjects are held out where the dataset names them
    (``DatasetBundle.train_subjects``), so that held-out accuracy measures
    what the test split measures, generalisation to unseen people; otherwise
    samples. At least one subject (sample) is held out and at least one kept;
    which ones depends on the data alone, not on the training seed.
    """
    if share <= 0:
        return None
    groups = data.train_subjects if data.train_subjects is not None else np.arange(len(data.train))
    if len(groups) != len(data.train):
        raise ValueError(f"{data.name}: {len(groups)} training subjects for {len(data.train)} training samples")
    names = np.unique(groups)
    if len(names) < 2:
        raise ValueError(f"{data.name}: --holdout needs at least 2 training subjects to keep one out, found "
                         f"{len(names)}")
    count = min(len(names) - 1, max(1, round(share * len(names))))
    chosen = np.random.default_rng([HOLDOUT_SEED, len(data.train)]).choice(names, size=count, replace=False)
    return np.isin(groups, chosen)


def hold_out(data: DatasetBundle, share: float) -> tuple[Split, Split | None]:
    """The training split without its held-out part (:func:`heldout_mask`), and that part (None when
    ``share`` is 0)."""
    held = heldout_mask(data, share)
    if held is None:
        return data.train, None
    return data.train.take(np.flatnonzero(~held)), data.train.take(np.flatnonzero(held))


TEST_SUBSET_SEED = 0  # like the held-out subjects, the test subset depends on the data alone


def stratified_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The sorted indices of ``per_class`` test samples of every class: the first of each class in a
    permutation seeded by the split's size, so that every model of the same data is scored on the same
    samples, and a larger subset holds a smaller one.

    Raises:
        ValueError: a class has fewer than ``per_class`` samples.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class > counts.min():
        raise ValueError(f"test_subset {per_class} clips per class, but class {int(classes[counts.argmin()])} has "
                         f"{int(counts.min())} test clips; use at most {int(counts.min())}, or 0 for all")
    order = np.random.default_rng([TEST_SUBSET_SEED, len(labels)]).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # a sample's place among its class in that order
    for label in classes:
        members = order[labels[order] == label]
        rank[members] = np.arange(len(members))
    return np.flatnonzero(rank < per_class)


def heldout_validation(heldout: Split, config: RunConfig, protocol: Protocol,
                       exp: Experiment) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Clean accuracy and PGD robust accuracy on every attack target of the held-out split, in percent."""
    pgd = Protocol(name="heldout", eps=protocol.eps, attacks=(AttackSetting(
        "pgd", "pgd", (("steps", config.holdout_steps), ("rel_step", 0.25), ("random_start", True))),))

    def validate(model: torch.nn.Module) -> dict[str, float]:
        evaluation = evaluate(model, heldout, pgd, modalities=config.modalities, batch_size=config.eval_batch_size,
                              device=exp.device, codes=exp.data.codes, padding=exp.data.padding, team=exp.team)
        robust = {code: 100.0 * float(correct.mean()) for code, correct in evaluation.robust["pgd"].items()}
        return {"heldout_clean": 100.0 * float(evaluation.clean.mean()),
                **{f"heldout_{code}": value for code, value in robust.items()},
                "heldout_avg": float(np.mean(list(robust.values())))}

    return validate


def save_final_model(model: torch.nn.Module, config: RunConfig, run_dir: Path) -> None:
    """The trained weights, including anything filled in after training (memory banks)."""
    save_torch(run_dir / "model.pt", {"format": CHECKPOINT_FORMAT, "config": config.to_dict(),
                                      "model": model.state_dict()})


def evaluate_experiment(exp: Experiment, run_dir: Path, protocol: Protocol, *, training: dict[str, Any] | None,
                        started: float, progress: bool = True) -> Record:
    """Run the protocol on the test split; write the outcomes and the record."""
    config = exp.config
    suffix = "" if protocol.name == STANDARD_V1.name else f"-{protocol.name}"
    outcomes = f"outcomes{suffix}.npz"
    test, subset = exp.data.test, None
    if config.test_subset:
        indices = stratified_subset(test.labels, config.test_subset)
        test = test.take(indices)
        subset = {"per_class": config.test_subset, "size": len(indices), "of": len(exp.data.test),
                  "indices": indices.tolist()}
    key = outcome_key(exp.model, protocol, exp.data.fingerprint, len(test), exp.device, exp.numerics)
    if subset is not None:
        key["test_subset"] = config.test_subset
    store = OutcomeStore(run_dir / outcomes, key) if exp.team.main else None  # rank 0 shares what it holds
    if protocol.adaptive:
        views = adaptive_views(exp.defense, exp.model)
        transfer, transfer_run = undefended_model(exp, run_dir)
        also_attacked = {"views": views, "transfer": transfer}
    else:
        also_attacked, transfer_run = {"surrogate": exp.defense.surrogate(exp.model)}, None
    evaluation = evaluate(exp.model, test, protocol, modalities=config.modalities,
                          batch_size=config.eval_batch_size, device=exp.device, store=store, codes=exp.data.codes,
                          padding=exp.data.padding, progress=progress, team=exp.team,
                          sample_ids=None if subset is None else indices, **also_attacked)
    metrics = robust_metrics(evaluation.clean, evaluation.robust)
    flags = {"surrogate_used": evaluation.surrogate_used,
             "sanity": {**evaluation.audit,
                        **ordering_checks(protocol, metrics, evaluation.targets, len(evaluation.labels),
                                          exp.data.codes)}}
    if protocol.adaptive:
        flags["indicators"] = evaluation.indicators
        flags["adaptive"] = sorted({key.split("@", 1)[1] for key in evaluation.robust if "@" in key})
        flags["transfer_source"] = transfer_run
    record = Record(
        dataset=config.dataset, split=config.split, defense=config.defense, preset=config.preset,
        modalities=tuple(config.modalities), protocol=protocol.name, protocol_settings=protocol.settings(),
        config=config.to_dict(), metrics=metrics,
        flags=flags,
        evaluation={"outcomes": outcomes, "model_digest": key["model"], "batch_size": config.eval_batch_size,
                    "disagreements": evaluation.disagreements, **evaluation.cost, "cells": evaluation.cells,
                    "pinned": evaluation.pinned, **({"test_subset": subset} if subset else {})},
        data={"fingerprint": exp.data.fingerprint, "train_size": len(exp.data.train),
              "test_size": len(exp.data.test), "num_classes": exp.data.num_classes,
              "skeleton_scale": exp.data.skeleton_scale, "skeleton_unit": exp.data.skeleton_unit},
        training=training,
        provenance={**provenance(exp.device, config.seed), "wall_seconds": time.perf_counter() - started,
                    "distributed": exp.team.describe(),
                    **({"cuda": runtime.describe_cuda(exp.device), "numerics": exp.numerics}
                       if exp.device.type == "cuda" else {})},
    )
    if not exp.team.main:
        return record
    record = attach_reference(record, run_dir)
    return record.save(run_dir / record_name(protocol.name))


INIT_FILE = "init_from.json"


def warm_start(exp: Experiment, run_dir: Path) -> dict[str, Any]:
    """Load into ``exp.model`` the trained weights of the reference defense's run beside ``run_dir`` (same
    dataset, split, preset, modalities, data, seed and holdout, trained from scratch); modules only this
    defense has keep their initialisation. Returns what the record says of it.

    Raises:
        RunDirError: no such run, or this run is of the reference defense.
        ValueError: the reference model has weights this model has no place for.
    """
    config = exp.config
    reference = reference_defense()
    if config.defense == reference:
        raise RunDirError(f"recipe warm-start starts from a trained {reference!r} run; {reference!r} itself "
                          "trains from scratch")
    key = (config.dataset, config.split, config.preset, tuple(config.modalities), exp.data.fingerprint, config.seed,
           float(config.holdout))
    for record in records_beside(run_dir):
        source = Path(record.source)
        if (record.defense == reference and record.config.get("recipe", "scratch") == "scratch"
                and (record.dataset, record.split, record.preset, tuple(record.modalities), record.fingerprint,
                     record.seed, float(record.config.get("holdout", 0.0))) == key
                and (source / "model.pt").is_file()):
            with torch.random.fork_rng(devices=[]):  # building the other model must not move this run's RNG
                other = load_trained(source, device=config.device).model
            missing, unexpected = exp.model.load_state_dict(other.state_dict(), strict=False)
            if unexpected:
                raise ValueError(f"{source}: weights {', '.join(unexpected[:3])} have no place in a "
                                 f"{config.defense!r} model")
            kept = sorted({name.rsplit(".", 1)[0] for name in missing})
            return {"run": source.as_posix(), "model_digest": record.evaluation.get("model_digest"),
                    "kept_initialisation": kept}
    raise RunDirError(f"recipe warm-start needs a finished {reference!r} run (recipe scratch) of the same dataset, "
                      f"split, preset, modalities, data, seed and holdout beside {run_dir}; run `mmrobust run "
                      f"--defense {reference} --seed {config.seed}"
                      + (f" --holdout {config.holdout:g}" if config.holdout else "") + "` first")


def undefended_model(exp: Experiment, run_dir: Path) -> tuple[torch.nn.Module | None, str | None]:
    """The trained model of the reference defense (``none``) beside ``run_dir`` with the same dataset, split,
    preset, modalities, data and training seed, and its run directory; (None, None) if there is none or
    this run is that defense (a transfer source for adaptive protocols)."""
    config = exp.config
    reference = reference_defense()
    if config.defense == reference:
        return None, None
    key = (config.dataset, config.split, config.preset, tuple(config.modalities), exp.data.fingerprint, config.seed)
    for record in records_beside(run_dir):
        source = Path(record.source)
        if (record.defense == reference and (record.dataset, record.split, record.preset, tuple(record.modalities),
                                             record.fingerprint, record.seed) == key
                and (source / "model.pt").is_file()):
            other = load_trained(source, device=config.device)
            return other.model, source.as_posix()
    log.info("no trained %r run beside %s: strong-v1's transfer indicator is left empty", reference, run_dir)
    return None, None


def attach_reference(record: Record, run_dir: Path) -> Record:
    """Fill RI from the reference defense's record (``none``) of the same setting and training seed
    (:func:`find_reference`).

    Looked for among the sibling run directories (``runs/<dataset>/*``); RI
    stays null, with a note, if there is none (``mmrobust leaderboard``
    recomputes it).
    """
    reference = find_reference(record, records_beside(run_dir))
    if reference is None:
        metrics = {**record.metrics, "ri_reference": {
            "run": None, "note": f"no '{reference_defense()}' record of the same dataset, split, preset, modalities, "
                                 "protocol, data and seed was found; RI left empty"}}
    else:
        where = str(run_dir) if reference is record else reference.source
        metrics = fill_ri(record.metrics, reference.metrics, reference_run=where)
    return record.replace(metrics=metrics)


def run_device(run_dir: Path) -> str:
    """The device a run was configured for (``auto`` when its config cannot be read: loading it later says
    why)."""
    try:
        return str(json.loads((run_dir / "config.json").read_text()).get("device", "auto"))
    except (OSError, ValueError, AttributeError):
        return "auto"


def load_trained(run_dir: Path, team: Team = SOLO, **changes: Any) -> Experiment:
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
    exp = prepare(config, progress=False, team=team)
    load_model_state(exp.model, load_checkpoint(model_path), model_path)
    exp.model.to(exp.device)
    return exp


def reevaluate(run_dir: Path, *, protocol: str | None = None, eps: float | None = None,
               attacks: tuple[str, ...] | None = None, device: str | None = None, batch_size: int | None = None,
               test_subset: int | None = None, progress: bool = True, team: Team = SOLO) -> Record:
    """Evaluate a trained run again without retraining (``mmrobust eval``), under its own protocol or
    ``protocol``, on the run's test clips or ``test_subset`` per class (0: all); under several processes
    (``team``) each rank attacks its share and rank 0 writes."""
    started = time.perf_counter()
    if protocol is not None:
        get_protocol(protocol)  # an unknown name fails before the model is loaded
    exp = load_trained(run_dir, team, eps=eps, attacks=attacks, device=device, eval_batch_size=batch_size,
                       test_subset=test_subset)
    if protocol is not None:  # another protocol: the run's own ε and attack list do not carry over
        exp.config = exp.config.replace(protocol=protocol, eps=eps, attacks=attacks or ())
    protocol = get_protocol(exp.config.protocol, eps=exp.config.eps, attacks=exp.config.attacks)
    for setting in protocol.attacks:
        setting.build().check_classes(exp.data.num_classes)
    if exp.config.test_subset:
        stratified_subset(exp.data.test.labels, exp.config.test_subset)  # before the lock is taken
    check_record_free(run_dir / record_name(protocol.name))
    training = _training_summary(run_dir)
    with holding(run_dir, fresh=False, team=team):
        return evaluate_experiment(exp, run_dir, protocol, training=training, started=started, progress=progress)


def _training_summary(run_dir: Path) -> dict[str, Any] | None:
    """The training part of the run's standard record, if it has a readable one (kept by ``eval``)."""
    try:
        return Record.load(run_dir / "result.json").training
    except RecordError:
        return None


#: Settings a resumed run may change: where it runs and how it spends memory, never what it computes.
RESUME_MAY_CHANGE = ("device", "grad_checkpoint")


def resume_config(state: dict[str, Any], explicit: dict[str, Any], device: str) -> RunConfig:
    """The configuration a ``--resume`` continues: the checkpoint's, run on ``device`` (and with
    ``grad_checkpoint`` when given).

    Raises:
        RunDirError: an explicitly given setting (other than the device) differs from the checkpoint's.
    """
    saved = RunConfig.from_dict(state["config"], source="checkpoint config")
    conflicts = [k for k, v in explicit.items() if k not in RESUME_MAY_CHANGE and getattr(saved, k) != v]
    if conflicts:
        raise RunDirError(f"--resume: {conflicts[0]}={explicit[conflicts[0]]!r} differs from the checkpoint's "
                          f"{getattr(saved, conflicts[0])!r}; drop the flag to continue the same run")
    return saved.replace(device=device, **{k: explicit[k] for k in RESUME_MAY_CHANGE[1:] if k in explicit})


def resume_state(run_dir: Path, checkpoint: str | None) -> dict[str, Any]:
    """The checkpoint a ``--resume`` points at (default: the run directory's), checked whole."""
    path = Path(checkpoint) if checkpoint else run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    check_resume_state(state, path)
    return state


# -- reproduce ---------------------------------------------------------------------

@dataclass
class Comparison:
    """A record re-run from scratch, metric by metric."""

    record: Record
    reproduced: Record
    rows: list[tuple[str, Any, Any, bool]]  # metric, stored, reproduced, within tolerance
    environment: list[str]  # decisive differences between the record's environment and this one
    tolerance: float  # percentage points allowed per metric (0: bit-exact)
    outcome_mismatches: int | None  # samples × cells whose outcome differs (None: stored outcomes absent)

    @property
    def matches(self) -> bool:
        return all(ok for *_, ok in self.rows) and (self.tolerance > 0 or not self.outcome_mismatches)


def reproduce(record_path: Path, run_dir: Path, *, tolerance: float = 1.0, progress: bool = True) -> Comparison:
    """Re-run a record's configuration from scratch in ``run_dir`` and compare every metric.

    The run uses the record's thread count. Where the environment that decides
    the bits (machine, kernels, threads, torch, runtime settings) is the
    record's, every metric must be equal and so must every per-sample outcome;
    otherwise each metric may differ by ``tolerance`` percentage points. RI
    is not compared: it follows from ✓RS and Avg of this and the reference record.

    Raises:
        RecordError: the record is unreadable, of another schema, or of other
            data than the dataset gives here (another release or generator).
    """
    record = Record.load(record_path)
    config = RunConfig.from_dict(record.config, source=str(record_path))
    data = load_data(config, progress=progress)
    if data.fingerprint != record.fingerprint:
        raise RecordError(f"{record_path}: made on {record.dataset} data {record.fingerprint}, but the data here "
                          f"is {data.fingerprint} (another release or generator); it cannot be reproduced here")
    recorded = record.provenance.get("environment") or {}
    threads = torch.get_num_threads()
    if isinstance(recorded.get("threads"), int):
        torch.set_num_threads(recorded["threads"])
    try:
        differences = runtime.differences(recorded, runtime.describe())
        world = (record.provenance.get("distributed") or {}).get("world_size", 1)
        if world != 1:  # DDP's per-rank BatchNorm and summed gradients give other bits than one process
            differences.append(f"world size: {world} -> 1")
        device = device_name(resolve_device(config.device))
        if record.provenance.get("device") != device:
            differences.append(f"device: {record.provenance.get('device')!r} -> {device!r}")
        check_run_dir(run_dir, resume=False)
        reproduced = execute(config, run_dir, progress=progress)
    finally:
        torch.set_num_threads(threads)
    allowed = tolerance if differences else 0.0
    rows = [(name, stored, again, _close(stored, again, allowed))
            for name, stored, again in _paired_metrics(record, reproduced)]
    mismatches = None
    if record.evaluation.get("outcomes") and (record.path.parent / record.evaluation["outcomes"]).is_file():
        before, after = record.outcomes(), reproduced.outcomes()
        cells = [k for k in before if k not in ("key", "labels") and "#" not in k]
        mismatches = sum(int((before[k] != after[k]).sum()) if k in after and before[k].shape == after[k].shape
                         else int(before[k].size) for k in cells)
    return Comparison(record, reproduced, rows, differences, allowed, mismatches)


def _paired_metrics(stored: Record, again: Record) -> list[tuple[str, Any, Any]]:
    pairs = [("clean", stored.metrics.get("clean"), again.metrics.get("clean"))]
    for attack, entry in stored.metrics.get("attacks", {}).items():
        other = again.metrics.get("attacks", {}).get(attack, {})
        for key in [k for k in entry if k not in ("ri", "ci")]:
            pairs.append((f"{attack}/{key}", entry[key], other.get(key)))
    for flag, value in stored.flags.get("sanity", {}).items():
        pairs.append((f"sanity/{flag}", value, again.flags.get("sanity", {}).get(flag)))
    return pairs


def _close(stored: Any, again: Any, tolerance: float) -> bool:
    if isinstance(stored, bool) or not isinstance(stored, (int, float)) or not isinstance(again, (int, float)):
        return stored == again
    return stored == again if tolerance == 0 else abs(stored - again) <= tolerance
