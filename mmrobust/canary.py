"""Canaries: short, exact runs of every registered defense, digested and committed beside the records.

A committed leaderboard is only worth something while its records are what
the code computes. Re-running them all takes half an hour; a canary takes
seconds and moves whenever they would. For each defense it trains one epoch on
a few training clips, then runs the whole protocol on a few test clips
labelled with the canary model's own predictions (so that every one of them
is attacked, and in two chunks, so that sample ids differ from positions), and
keeps the SHA-256 of the weights and of the per-sample outcomes and checks.
Once per dataset it also digests every attack cell's adversarial examples on
the ``none`` canary, with every sample attacked for all its steps: those of
standard-v1 as they are, those of strong-v1 at a canary's budget.

``mmrobust sweep`` writes ``leaderboards/<dataset>/canary.json`` together with
the records, including each record file's digest; the test suite recomputes
the canaries and checks both. A change that alters a defense's numbers while
the committed records still show the old ones fails there, naming the
command that regenerates them.

Everything runs on one thread on the CPU, under the runtime settings of
:mod:`mmrobust.runtime`, but the bits still depend on the CPU model, so the
file holds one set of canaries per environment (:data:`runtime.DECISIVE`):
the sweep's, and any added later on another machine with
``python -m mmrobust.canary leaderboards/<dataset>`` at the commit the records
were made with (or one that computes the same canaries where the records'
environment can check it). The test compares the set of its own environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmrobust.attack import RandomStarts, build_attack
from mmrobust import runtime
from mmrobust.config import RunConfig
from mmrobust.datasets.base import Split
from mmrobust.defense import TrainContext, reference_defense
from mmrobust.files import write_json
from mmrobust.protocol import STANDARD_V1, STRONG_V1, Protocol, evaluate, target_sets
from mmrobust.registry import ATTACKS
from mmrobust.results import RecordError, model_digest
from mmrobust.run import prepare
from mmrobust.training import predict, train

FORMAT = 3
TRAIN_CLIPS, TEST_CLIPS, BATCH = 24, 10, 8
EVAL_BATCH = 1  # chunks of CHUNK_BATCHES samples: the 10 test clips span two
FILE = "canary.json"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _digest_arrays(arrays: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(np.asarray(arrays[name]))
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _spread(size: int, count: int) -> np.ndarray:
    return np.linspace(0, size - 1, min(count, size)).round().astype(np.int64)


def defense_canary(defense: str, dataset: str = "synthetic", preset: str = "tiny",
                   protocol: Protocol = STANDARD_V1) -> tuple[dict[str, str], Any]:
    """Train ``defense`` one epoch on a few clips, evaluate on a few it classifies correctly by
    construction; digests of weights and of outcomes and checks.

    Also returns the experiment and test clips (for :func:`attack_canary`).
    """
    config = RunConfig(dataset=dataset, defense=defense, preset=preset, epochs=1, batch_size=BATCH, seed=0,
                       device="cpu")
    with _one_thread(), tempfile.TemporaryDirectory(prefix="mmrobust-canary-") as folder:
        exp = prepare(config, progress=False)
        trainset = exp.data.train.take(_spread(len(exp.data.train), TRAIN_CLIPS))
        testset = exp.data.test.take(_spread(len(exp.data.test), TEST_CLIPS))
        train(exp.model, exp.defense, trainset, exp.config, 1, Path(folder), device=exp.device, progress=False)
        exp.defense.after_training(exp.model, trainset, TrainContext(device=exp.device,
                                                                     modalities=exp.config.modalities))
        predicted = predict(exp.model, testset, BATCH, exp.device, exp.config.modalities).numpy()
        testset = Split({**testset.arrays, "label": predicted})
        outcomes: dict[str, np.ndarray] = {}
        evaluation = evaluate(exp.model, testset, protocol, modalities=exp.config.modalities,
                              batch_size=EVAL_BATCH, surrogate=exp.defense.surrogate(exp.model), store=outcomes,
                              codes=exp.data.codes)
        outcomes["audit"] = np.array([evaluation.audit[k] for k in sorted(evaluation.audit)])
    decided = {k: v for k, v in outcomes.items() if not k.endswith(("#cost", "#diagnosis"))}  # not wall times
    return {"weights": model_digest(exp.model), "outcomes": _digest_arrays(decided)}, (exp, testset)


def attack_canary(exp: Any, testset: Any, protocols: Sequence[Protocol] = (STANDARD_V1, STRONG_V1)) -> dict[str, str]:
    """Every protocol cell's adversarial examples on ``exp.model``, every sample attacked for all steps.

    Cells are ``<attack>/<target>`` for standard-v1 and ``<protocol>:<attack>/<target>`` for the others,
    whose attacks run at a canary's budget (:func:`canary_budget`).
    """
    modalities = exp.config.modalities
    batch = testset.batch(np.arange(len(testset)), modalities)
    labels = batch["label"]
    every_sample = F.one_hot(labels, exp.data.num_classes).float()  # treat every sample as correct clean
    digests = {}
    model = exp.model.eval()
    with _one_thread():
        for protocol in protocols:
            prefix = "" if protocol.name == STANDARD_V1.name else f"{protocol.name}:"
            for setting in protocol.attacks:
                params = dict(setting.params)
                if prefix:
                    params = canary_budget(params)
                if "early_stop" in {f.name for f in dataclasses.fields(ATTACKS.get(setting.attack).Params)}:
                    params["early_stop"] = False
                attack = build_attack(setting.attack, **params)
                for code, targets in target_sets(modalities, exp.data.codes).items():
                    result = attack(model, batch, targets, protocol.eps, clean_logits=every_sample,
                                    starts=RandomStarts.numbered(len(labels), protocol.seed))
                    digests[f"{prefix}{setting.key}/{code}"] = _digest_arrays(
                        {m: result.batch[m].numpy() for m in targets} | {"fooled": result.fooled.numpy()})
    return digests


def canary_budget(params: Mapping[str, Any]) -> dict[str, Any]:
    """An attack's parameters with at most 10 iterations and 100 queries: the same code in seconds (a
    change of the settings themselves shows in the records' ``protocol_settings``, which the tests compare
    with the protocol's)."""
    budget = dict(params)
    for name, most in (("steps", 10), ("queries", 100)):
        if name in budget:
            budget[name] = min(budget[name], most)
    return budget


def compute(defenses: Sequence[str], dataset: str = "synthetic", preset: str = "tiny") -> dict[str, Any]:
    """The canaries of every defense in ``defenses`` in this environment (the attack canary needs the
    reference defense among them)."""
    with _one_thread():
        environment = runtime.describe()
    result: dict[str, Any] = {"environment": environment, "defenses": {}}
    reference = reference_defense()
    for name in defenses:
        result["defenses"][name], trained = defense_canary(name, dataset, preset)
        if name == reference:
            result["attacks"] = attack_canary(*trained)
    return result


def for_environment(canary: Mapping[str, Any], environment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The set of canaries made in ``environment`` (no decisive difference), if the file has one."""
    return next((entry for entry in canary.get("environments", [])
                 if not runtime.differences(entry["environment"], dict(environment))), None)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_digests(records_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under ``records_dir`` (records and their outcome files)."""
    return {path.name: file_digest(path) for path in sorted(records_dir.iterdir()) if path.is_file()}


def write(board: Path, defenses: Sequence[str], dataset: str, preset: str) -> Path:
    """Compute this environment's canaries and write ``board/canary.json`` afresh, with the digests of
    ``board/records`` (the records were just made: canaries of other environments no longer apply)."""
    canary = {"format": FORMAT, "dataset": dataset, "preset": preset, "train_clips": TRAIN_CLIPS,
              "test_clips": TEST_CLIPS, "defenses": list(defenses), "records": record_digests(board / "records"),
              "environments": [compute(defenses, dataset, preset)]}
    return write_json(board / FILE, canary)


def add_environment(board: Path) -> Path:
    """Add (or replace) this environment's canaries in ``board/canary.json``, records untouched.

    Run it at the commit that made the records, or at one whose canaries the
    records' own environment confirms: it records what this code computes
    here, so that later changes are checked here too.

    Raises:
        RecordError: the file is missing, of another format, or its records changed.
    """
    path = board / FILE
    try:
        canary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RecordError(f"{path}: cannot read the canary ({error})") from None
    if canary.get("format") != FORMAT:
        raise RecordError(f"{path}: canary format {canary.get('format')!r}, this code writes {FORMAT}; "
                          "regenerate it with mmrobust sweep")
    if canary["records"] != record_digests(board / "records"):
        raise RecordError(f"{path}: the records changed since the canary was written; regenerate with mmrobust sweep")
    fresh = compute(canary["defenses"], canary["dataset"], canary["preset"])
    canary["environments"] = [entry for entry in canary["environments"]
                              if runtime.differences(entry["environment"], fresh["environment"])] + [fresh]
    return write_json(path, canary)


def stale(committed: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a committed canary and a fresh one, one line per defense or attack cell."""
    lines = []
    for name in sorted(set(committed.get("defenses", {})) | set(current.get("defenses", {}))):
        before, after = committed.get("defenses", {}).get(name), current.get("defenses", {}).get(name)
        if before != after:
            changed = [k for k in ("weights", "outcomes") if (before or {}).get(k) != (after or {}).get(k)]
            lines.append(f"defense {name}: {', '.join(changed) if before and after else 'added or removed'} changed")
    for cell in sorted(set(committed.get("attacks", {})) | set(current.get("attacks", {}))):
        if committed.get("attacks", {}).get(cell) != current.get("attacks", {}).get(cell):
            lines.append(f"attack cell {cell}: adversarial examples changed")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mmrobust.canary LEADERBOARD_FOLDER   (e.g. leaderboards/synthetic)")
    try:
        print(f"wrote {add_environment(Path(sys.argv[1]))}")
    except RecordError as error:
        sys.exit(str(error))
