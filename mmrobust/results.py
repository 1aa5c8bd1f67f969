"""Result records: the one typed owner of a run's results, their files and their provenance.

A run directory holds ``config.json`` (the resolved configuration),
``train_log.jsonl`` (one line per epoch), ``checkpoint.pt``, ``model.pt``,
``outcomes.npz`` (per-sample outcomes) and ``result.json`` (the
:class:`Record`), all written through :func:`mmrobust.files.atomic_write`.

Nobody else parses a record's JSON: :meth:`Record.load` reads it (refusing
other schema versions with a one-line message), :meth:`Record.save` writes it,
:meth:`Record.outcomes` reads the per-sample outcomes behind it, and
:func:`find_reference` is the one rule that picks the record RI is measured
against.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import subprocess
import zipfile
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import mmrobust
from mmrobust import runtime
from mmrobust.files import atomic_write, write_json

log = logging.getLogger(__name__)

SCHEMA = 3
OUTCOME_KEY = "key"  # entry of an outcome store holding what produced it


class RecordError(ValueError):
    """A record or outcome store that cannot be used, with the file and the reason in one line."""


class OlderRecordError(RecordError):
    """A record of an older schema: ``mmrobust eval`` rewrites it."""


# -- the record -------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One evaluated model under one protocol: identity, settings, metrics, flags, provenance.

    ``path`` is where the record was read from (a run directory's
    ``result*.json`` or a file under ``leaderboards/``); it is not saved.
    """

    dataset: str
    defense: str
    protocol: str
    metrics: dict[str, Any]
    split: str | None = None
    preset: str | None = None
    modalities: tuple[str, ...] = ()
    protocol_settings: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    path: Path | None = field(default=None, compare=False)

    # -- identity --
    @property
    def seed(self) -> int | None:
        """The training seed (part of a record's identity)."""
        return self.config.get("seed", self.provenance.get("seed"))

    @property
    def fingerprint(self) -> str | None:
        return self.data.get("fingerprint")

    def reference_key(self) -> tuple:
        """What a record and its RI reference share: dataset, split, preset, modalities,
        protocol, data fingerprint, training seed and the test clips scored."""
        return (self.dataset, self.split, self.preset, tuple(self.modalities), self.protocol, self.fingerprint,
                self.seed, self.test_subset)

    @property
    def test_subset(self) -> int:
        """Test clips per class the record scored (:func:`mmrobust.run.stratified_subset`); 0: the whole split."""
        return int((self.evaluation.get("test_subset") or {}).get("per_class", 0))

    def test_indices(self) -> np.ndarray | None:
        """The indices in the test split of the samples scored, in outcome order; None: all of them."""
        subset = self.evaluation.get("test_subset")
        return None if not subset else np.asarray(subset["indices"], dtype=np.int64)

    @property
    def source(self) -> str:
        """The run directory of a run record, else the record file; empty for one built in memory."""
        if self.path is None:
            return ""
        return (self.path.parent if is_run_record(self.path.name) else self.path).as_posix()

    # -- reading and writing --
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        data["modalities"] = list(self.modalities)
        return {"schema": data.pop("schema"), **data}

    @classmethod
    def from_dict(cls, data: Any, path: Path | None = None) -> Record:
        where = str(path) if path is not None else "record"
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise RecordError(f"{where}: not a result record (no integer 'schema' field)")
        if data["schema"] < SCHEMA:
            run_dir = path.parent if path is not None and is_run_record(path.name) else "DIR"
            raise OlderRecordError(f"{where}: record schema {data['schema']} is older than {SCHEMA}; "
                              f"re-run `mmrobust eval --run-dir {run_dir}` to rewrite it")
        if data["schema"] > SCHEMA:
            raise RecordError(f"{where}: record schema {data['schema']} is newer than {SCHEMA}; "
                              "upgrade mmrobust to read it")
        missing = [key for key in ("dataset", "defense", "protocol", "metrics") if key not in data]
        if missing:
            raise RecordError(f"{where}: result record lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"{where}: unknown record field {unknown[0]!r}")
        for key in ("dataset", "defense", "protocol"):
            if not isinstance(data[key], str):
                raise RecordError(f"{where}: {key!r} should be a string, found {type(data[key]).__name__}")
        for key in ("metrics", "config", "flags", "evaluation", "data", "provenance"):
            if key in data and not isinstance(data[key], dict):
                raise RecordError(f"{where}: {key!r} should be a table, found {type(data[key]).__name__}")
        metrics = data["metrics"]
        attacks = metrics.get("attacks")
        if (isinstance(metrics.get("clean"), bool) or not isinstance(metrics.get("clean"), (int, float))
                or not isinstance(attacks, dict) or not all(isinstance(v, dict) for v in attacks.values())):
            raise RecordError(f"{where}: 'metrics' is malformed (it needs a clean accuracy and a table per attack)")
        values = dict(data)
        values["modalities"] = tuple(values.get("modalities") or ())
        return cls(**values, path=path)

    @classmethod
    def load(cls, path: str | Path) -> Record:
        """Read a record; :class:`RecordError` naming the file if it is missing, unreadable or of another schema."""
        path = Path(path)
        if not path.is_file():
            raise RecordError(f"{path}: no such result record")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RecordError(f"{path}: unreadable ({error})") from None
        return cls.from_dict(data, path)

    def save(self, path: str | Path) -> Record:
        """Write atomically; returns the record with ``path`` set."""
        path = Path(path)
        write_json(path, self.to_dict())
        return dataclasses.replace(self, path=path)

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def outcomes(self) -> dict[str, np.ndarray]:
        """The per-sample outcomes behind the metrics (``labels``, ``clean``, ``<attack>/<target>``)."""
        name = self.evaluation.get("outcomes")
        if self.path is None or not name:
            raise RecordError(f"{self.path or 'record'}: names no outcome file")
        return read_outcomes(self.path.parent / name)

    def finished_at(self) -> float:
        """When the record was written (``provenance.finished_at``), else its file's mtime, else 0."""
        stamp = self.provenance.get("finished_at")
        if isinstance(stamp, (int, float)):
            return float(stamp)
        if isinstance(stamp, str):
            try:
                moment = datetime.datetime.fromisoformat(stamp)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.timezone.utc)
                return moment.timestamp()
            except ValueError:
                pass
        try:
            return self.path.stat().st_mtime if self.path is not None else 0.0
        except OSError:
            return 0.0


def is_run_record(name: str) -> bool:
    """``result.json`` (standard protocol) or ``result-<protocol>.json`` (any other) in a run folder."""
    return name == "result.json" or (name.startswith("result-") and name.endswith(".json"))


def find_reference(record: Record, candidates: Iterable[Record], reference: str | None = None) -> Record | None:
    """The record RI is measured against: one of defense ``reference`` (default: the registered
    reference defense, :func:`mmrobust.defense.reference_defense`) with the same
    :meth:`Record.reference_key` (the newest if there are several); the record itself if it is one."""
    if reference is None:
        from mmrobust.defense import reference_defense

        reference = reference_defense()
    if record.defense == reference:
        return record
    key = record.reference_key()
    matches = [c for c in candidates if c.defense == reference and c.reference_key() == key]
    return max(matches, key=lambda c: (c.finished_at(), c.source), default=None)


def records_beside(run_dir: Path) -> Iterator[Record]:
    """The readable records of the run directories next to ``run_dir`` (where ``run`` looks for RI's reference)."""
    for path in sorted(run_dir.parent.glob("*/result*.json")):
        if path.parent != run_dir and is_run_record(path.name):
            try:
                yield Record.load(path)
            except RecordError as error:
                log.warning("not considered as RI reference: %s", error)


# -- per-sample outcomes ---------------------------------------------------------------

def model_digest(model: Any) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes of every parameter and buffer)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous().view(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def outcome_key(model: Any, protocol: Any, data_fingerprint: str, size: int, device: Any = "cpu",
                numerics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What per-sample outcomes depend on: the weights, the protocol, the data, the device type and
    mmrobust's version; on CUDA also the GPU model and the pinned numerics (``numerics``), so that an
    evaluation resumed on another GPU or under other settings starts afresh."""
    key = {"model": model_digest(model), "protocol": protocol.name, "settings": protocol.settings(),
           "data": data_fingerprint, "n": size, "device": str(getattr(device, "type", device)),
           "mmrobust": mmrobust.__version__}
    if key["device"] == "cuda":
        import torch

        key["gpu"] = torch.cuda.get_device_name(device)
        key["numerics"] = numerics
    return key


def read_outcomes(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an outcome file (its key as the dict under ``"key"``); RecordError if unreadable."""
    if not path.is_file():
        raise RecordError(f"{path}: no such outcome file")
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        key = json.loads(arrays.pop(OUTCOME_KEY).tobytes().decode()) if OUTCOME_KEY in arrays else None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: unreadable outcome file ({type(error).__name__}: {error}); it is truncated "
                          "or not an mmrobust outcome store") from None
    return {**arrays, OUTCOME_KEY: key}


class OutcomeStore(MutableMapping):
    """Per-sample outcomes on disk, keyed by what produced them, rewritten atomically on every change.

    Opening a store whose key differs (other weights, protocol settings, data or
    mmrobust version) ignores its contents, with a warning saying which part
    differs: stale outcomes are never reused. An unreadable file raises
    :class:`RecordError` and is left as it is.
    """

    def __init__(self, path: str | Path, key: dict[str, Any]):
        self.path = Path(path)
        self.key = key
        self.arrays: dict[str, np.ndarray] = {}
        if self.path.exists():
            stored = read_outcomes(self.path)
            stored_key = stored.pop(OUTCOME_KEY)
            if stored_key == key:
                self.arrays = stored
            elif not isinstance(stored_key, dict):
                log.warning("%s holds outcomes without a key (an older mmrobust); ignored, evaluating afresh",
                            self.path)
            else:
                changed = [k for k in key if stored_key.get(k) != key[k]] or ["format"]
                log.warning("%s holds outcomes of another %s; ignored, evaluating afresh", self.path,
                            ", ".join(changed))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = np.asarray(value)
        self._write()

    def __delitem__(self, name: str) -> None:
        del self.arrays[name]
        self._write()

    def _write(self) -> None:
        buffer = io.BytesIO()
        key = np.frombuffer(json.dumps(self.key, sort_keys=True).encode(), dtype=np.uint8)
        np.savez_compressed(buffer, **{OUTCOME_KEY: key}, **self.arrays)
        atomic_write(self.path, lambda handle: handle.write(buffer.getvalue()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


# -- provenance ----------------------------------------------------------------------

SOURCE_PATHS = ("mmrobust", "defenses", "attacks", "pyproject.toml")  # what computes numbers (not leaderboards/)


def git_state() -> tuple[str | None, bool | None]:
    """The commit of the mmrobust source tree and whether its tracked source files differ from it
    (None, None outside git)."""
    source = Path(mmrobust.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--",
                                *SOURCE_PATHS], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def provenance(device: Any, seed: int) -> dict[str, Any]:
    """Where and with what a record was made: versions, commit, machine, kernels, threads."""
    commit, dirty = git_state()
    return {
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mmrobust_version": mmrobust.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device_name(device),
        "environment": runtime.describe(),
        "seed": seed,
    }


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))
