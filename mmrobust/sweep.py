"""``mmrobust sweep``: every defense on one dataset, then its leaderboard with the records behind it.

Finished runs are reused (their record), killed ones resume from their
checkpoint, so a sweep can be re-run until everything is done. Each record is
copied with its per-sample outcomes to ``<out>/<dataset>/records/`` and the
canaries of :mod:`mmrobust.canary` are written beside them.

Example::

    from mmrobust.sweep import sweep

    table = sweep("synthetic", ["none", "amr"], runs_dir=Path("runs"), out=Path("leaderboards"))
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mmrobust import canary
from mmrobust.config import RunConfig
from mmrobust.defense import changed_params, reference_defense
from mmrobust.claims import write_claims
from mmrobust.leaderboard import build_table, load_records, write_leaderboard
from mmrobust.model import unimodal_modalities
from mmrobust.registry import DEFENSES
from mmrobust.results import Record, RecordError
from mmrobust.training import TRAIN_LOG as LOG, convergence
from mmrobust.training_plot import read_log_file
from mmrobust.protocol import STANDARD_V1, get_protocol
from mmrobust.run import (RunDirError, check_run_dir, default_run_dir, execute, load_data, record_name, reevaluate,
                          resume_state)


def sweep(dataset: str, defenses: Sequence[str] = (), *, preset: str = "tiny", seeds: Sequence[int] = (0,),
          device: str = "auto", runs_dir: Path = Path("runs"), out: Path = Path("leaderboards"),
          protocols: Sequence[str] = (), test_subset: int = 0, recipe: str = "scratch", holdout: float = 0.0,
          progress: bool = True,
          claims: bool = True, say: Callable[[str], None] = print) -> pd.DataFrame:
    """Run (or reuse, or resume) every defense in ``defenses`` (default: all registered) for every training
    seed in ``seeds`` and write the leaderboard.

    Every run is evaluated under standard-v1, then under each of ``protocols``
    (``strong-v1``, say: after every defense of that seed is trained, so that
    it can use the undefended model as a transfer source); each protocol gets
    its table, one row per defense over its seeds, on ``test_subset`` test clips
    per class (0: all; standard-v1 always scores all). ``recipe`` and ``holdout``
    are :class:`~mmrobust.config.RunConfig`'s; the reference defense always
    trains from scratch, first, since ``warm-start`` begins from its weights.
    With ``claims``, the AMR
    paper's Table-2 claims are judged on the records and written to
    ``out/<dataset>/claims.md``. Returns the standard-v1 table that was
    written to ``out/<dataset>/``.

    Raises:
        UnknownNameError: a defense that is not registered (with suggestions).
        RunDirError: a finished run of other data (an older generator, say) in
            the way; it is never mixed in.
        ValueError: no seed, or a seed twice.
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    names = list(defenses) or DEFENSES.names()
    for name in names:
        DEFENSES.get(name)  # unknown names fail before any work, with suggestions
    reference = reference_defense()
    names.sort(key=lambda name: name != reference)  # stable: the reference first, then as given

    def configured(name: str, seed: int) -> RunConfig:
        return RunConfig(dataset=dataset, defense=name, preset=preset, seed=seed, device=device, holdout=holdout,
                         recipe="scratch" if name == reference else recipe)

    extra = [p for p in dict.fromkeys(protocols) if p != STANDARD_V1.name]
    for protocol in extra:
        get_protocol(protocol)  # so do unknown protocols
    records_dir = out / dataset / "records"
    for seed in seeds:
        for name in names:
            directory = train_or_reuse(configured(name, seed), runs_dir, progress=progress, say=say)
            publish(Record.load(directory / record_name(STANDARD_V1.name)), directory, records_dir)
        for protocol in extra:
            for name in names:
                directory = runs_dir / default_run_dir(configured(name, seed)).relative_to("runs")
                if _subset_of(directory / record_name(protocol)) != test_subset:
                    started = time.perf_counter()
                    say(f"{name} seed {seed}: evaluating under {protocol}"
                        + (f" on {test_subset} test clips per class" if test_subset else ""))
                    reevaluate(directory, protocol=protocol, test_subset=test_subset, progress=progress)
                    say(f"{name} seed {seed}: {protocol} done in {time.perf_counter() - started:.0f} s")
                publish(Record.load(directory / record_name(protocol)), directory, records_dir)
    records = load_records([records_dir])
    for protocol in {r.protocol for r in records if r.dataset == dataset} - {STANDARD_V1.name}:
        write_leaderboard(build_table(records, dataset, protocol=protocol), out, dataset, protocol)
    table = build_table(records, dataset)
    write_leaderboard(table, out, dataset, STANDARD_V1.name)
    if claims:
        path = write_claims(records, out, dataset)
        say(f"claims: {path}")
    say("canaries: short exact runs of every defense, checked by the tests against these records")
    canary.write(out / dataset, names, dataset, preset)
    return table


def _subset_of(path: Path) -> int | None:
    """The test clips per class a record scored (0: all), None when there is no readable record."""
    try:
        return Record.load(path).test_subset
    except (RecordError, OSError):
        return None


def train_or_reuse(config: RunConfig, runs_dir: Path, *, progress: bool = True,
                   say: Callable[[str], None] = print) -> Path:
    """The run directory of ``config`` under ``runs_dir`` (its default name), after training and evaluating
    it there unless a finished run of the same configuration is there already; a killed run resumes.

    Raises:
        RunDirError: the directory holds a finished run of other data or another configuration.
    """
    directory = runs_dir / default_run_dir(config).relative_to("runs")
    label = f"{config.defense} seed {config.seed}"
    record_path = directory / record_name(config.protocol)
    if record_path.is_file():
        stored = Record.load(record_path)
        data = load_data(config, progress=progress)
        if stored.fingerprint != data.fingerprint:
            raise RunDirError(f"{directory} holds a finished run of other data (fingerprint {stored.fingerprint}, "
                              f"the data now is {data.fingerprint}); move it away or pass --runs with another folder")
        _refuse_another(directory, "a finished run", stored.config, config, data)
        say(f"{label}: finished earlier")
        return directory
    state = resume_state(directory, None) if (directory / "checkpoint.pt").is_file() else None
    if state is not None:
        _refuse_another(directory, "a killed run", state["config"], config, load_data(config, progress=progress))
    check_run_dir(directory, resume=state is not None)
    started = time.perf_counter()
    say(f"{label}: {'resuming' if state else 'running'} in {directory}")
    if state is not None:
        config = RunConfig.from_dict(state["config"]).replace(device=config.device)
    execute(config, directory, resume=state, progress=progress)
    say(f"{label}: done in {time.perf_counter() - started:.0f} s")
    return directory


def _refuse_another(directory: Path, what: str, stored: dict, wanted: RunConfig, data) -> None:
    """RunDirError if the run in ``directory`` (its stored configuration) trains another model than ``wanted``
    would, once ``wanted`` has the defaults a run fills in (run.prepare)."""
    resolved = wanted.replace(
        epochs=wanted.epochs or data.default_epochs, split=wanted.split or data.split,
        modalities=unimodal_modalities(wanted.modalities, data.modalities) if wanted.modalities else data.modalities)
    differs = _differences(RunConfig.from_dict(stored), resolved)
    if differs:
        raise RunDirError(f"{directory} holds {what} of another configuration ({differs}); move it away or pass "
                          "--runs with another folder")


#: Settings that say where or how fast a run is made, or how it is evaluated, not which model it trains.
_NOT_THE_MODEL = ("device", "root", "data_dir", "eval_batch_size", "protocol", "eps", "attacks", "test_subset",
                  "grad_checkpoint")


def _differences(stored: RunConfig, wanted: RunConfig) -> str:
    """The settings that decide the trained model in which a run differs from the one wanted."""
    old, new = (json.loads(json.dumps(c.to_dict())) for c in (stored, wanted))  # tuples and lists alike
    ignored = set(_NOT_THE_MODEL) | ({"holdout_steps"} if not new.get("holdout") else set())
    for config in (old, new):
        config["defense_params"] = changed_params(config["defense"], config.get("defense_params") or {})
    names = [k for k in new if k not in ignored and old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} not {new.get(k)!r}" for k in names)


def publish(record: Record, directory: Path, records_dir: Path) -> Record:
    """Copy a run's record and outcomes to ``records_dir`` as ``<run>.json`` and ``<run>.outcomes.npz``
    (``<run>.<protocol>.json`` and ``<run>.<protocol>.outcomes.npz`` for a protocol other than standard-v1),
    and its training log, when it has one, as ``<run>.train_log.jsonl`` (named by the copy's
    ``training.log``: the curves behind its convergence, whose verdict the copy gives by the rule as it
    is now); returns the copy."""
    records_dir.mkdir(parents=True, exist_ok=True)
    stem = directory.name if record.protocol == STANDARD_V1.name else f"{directory.name}.{record.protocol}"
    shutil.copyfile(directory / record.evaluation["outcomes"], records_dir / f"{stem}.outcomes.npz")
    changes: dict[str, Any] = {"evaluation": {**record.evaluation, "outcomes": f"{stem}.outcomes.npz"}}
    if record.training is not None and (directory / LOG).is_file():
        shutil.copyfile(directory / LOG, records_dir / f"{directory.name}.{LOG}")
        training = {**record.training, "log": f"{directory.name}.{LOG}"}
        if "convergence" in training:
            training["convergence"] = convergence(read_log_file(directory / LOG))
        changes["training"] = training
    return record.replace(**changes).save(records_dir / f"{stem}.json")
