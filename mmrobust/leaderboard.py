"""Rank result records of one dataset and protocol; render md, CSV and HTML.

    records = load_records([Path("runs"), Path("leaderboards/records")])
    table = build_table(records, "ntu60", protocol="standard-v1", attack="pgd20")
    write_leaderboard(table, Path("leaderboards"), "ntu60", "standard-v1")

Columns follow the AMR paper's tables (✓RS, ✗R, ✗S, ✗RS, Avg, RI) for one
attack, with one ✗ column per attack target the records hold (named by the
modality codes their dataset declares, so a third modality gets its
columns), then the Avg of the worst case over all attacks and any flags.
Records of another protocol name are never ranked together. For NTU RGB+D
and iMiGUE the paper's own PGD20 numbers are appended as rows marked
``reported``.
"""

from __future__ import annotations

import html
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from mmrobust import stats
from mmrobust.defense import changed_params, reference_defense
from mmrobust.files import write_text
from mmrobust.metrics import WORST, relative_improvement
from mmrobust.results import Record, RecordError, find_reference, is_run_record

# AMR paper, Table 2: accuracy (%) under PGD20 (ε = 8/255, α = 2/255), I3D + HCN,
# NTU RGB+D 60 cross-subject and iMiGUE cross-subject. Columns as REPORTED_FIELDS.
# Kept as printed, including the paper's own rounding: MinSim on NTU has
# Avg 28.85 though its three targets average to 28.94 (its RI uses 28.85).
REPORTED_FIELDS = ("clean", "R", "S", "RS", "avg", "ri")
REPORTED_PGD20 = {
    "ntu60": {
        "none": (88.09, 2.09, 11.84, 0.15, 4.69, 0.0),
        "at-r": (75.59, 75.59, 4.75, 4.74, 28.36, 11.17),
        "at-s": (78.44, 2.09, 78.31, 2.06, 27.49, 13.15),
        "at-rs": (61.42, 61.41, 40.41, 40.32, 47.38, 16.02),
        "minsim": (80.85, 2.93, 80.85, 3.03, 28.85, 16.92),
        "exfmem": (84.19, 0.00, 60.04, 0.00, 20.01, 11.42),
        "minsim+exfmem": (82.81, 2.02, 75.77, 2.14, 26.64, 16.67),
        "amr": (81.65, 68.54, 80.40, 66.52, 71.82, 60.69),
    },
    "imigue": {
        "none": (62.37, 0.11, 6.97, 0.07, 2.38, 0.0),
        "at-r": (47.32, 47.32, 0.00, 0.00, 15.77, -1.66),
        "at-s": (60.20, 0.00, 59.87, 0.00, 19.96, 15.41),
        "at-rs": (39.01, 39.01, 31.89, 31.95, 34.28, 8.54),
        "minsim": (60.60, 0.00, 53.28, 0.00, 17.76, 13.61),
        "exfmem": (60.53, 0.00, 43.00, 0.00, 14.33, 10.11),
        "minsim+exfmem": (60.62, 0.00, 55.05, 0.00, 18.35, 14.22),
        # Table 2's iMiGUE AMR row is illegible in our copy; the same model
        # (1 AMR, λ = 1) appears in Table 8 and Table 5 with these numbers.
        "amr": (43.89, 43.89, 32.85, 32.94, 36.56, 15.70),
    },
}
REPORTED_SPLIT = {"ntu60": "xsub", "imigue": "xsub"}
REPORTED_CITATION = {("imigue", "amr"): "AMR paper, Table 8 (1 AMR)"}
REPORTED_PROTOCOL, REPORTED_ATTACK = "standard-v1", "pgd20"

REPORTED_TARGETS = ("R", "S", "RS")
FORMATS = ("md", "csv", "html")
#: The folder of a study's outputs and records under ``<leaderboard>/<dataset>/`` (:mod:`mmrobust.study`).
STUDY_FOLDER = "studies"
#: The attack a protocol's table ranks by unless told otherwise (``worst``: the pointwise worst case).
DEFAULT_ATTACK = {"standard-v1": "pgd20", "strong-v1": WORST}
STANDARD, STRONG = "standard-v1", "strong-v1"  # the standard-v1 table sets strong-v1's worst case beside its own
STRONG_AVG, KEPT = "strong-v1 Avg", "Kept %"  # those columns


class RecordWarning(UserWarning):
    """A file that looked like a result record was skipped."""


# -- loading --------------------------------------------------------------------

def _candidate_files(path: Path) -> list[Path]:
    """``path`` itself, or every run record and records/*.json below it (hidden folders skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such result record or folder")
    found = []
    for folder, subfolders, files in os.walk(path):
        # hidden folders, and a study's records (its own models and ε, read by `mmrobust study`), are not ranked
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != STUDY_FOLDER]
        in_records = "records" in Path(folder).relative_to(path).parts or path.name == "records"
        found += [Path(folder) / name for name in files
                  if is_run_record(name) or (in_records and name.endswith(".json"))]
    return sorted(found)


def load_records(paths: Iterable[str | Path], strict: bool = False) -> list[Record]:
    """Result records from files and folders.

    A folder is searched recursively for run records (``result.json``,
    ``result-<protocol>.json``) and for ``*.json`` files inside any ``records/``
    folder. Each record's ``source`` is its run folder for a run record, else
    its file.

    Args:
        paths: result files or folders; a path that does not exist raises
            FileNotFoundError.
        strict: raise :class:`~mmrobust.results.RecordError` on the first
            unusable file instead of warning (RecordWarning) and skipping it.
            Unusable: unreadable, not a record, or a schema other than this
            version's (old ones name the ``mmrobust eval`` command that
            rewrites them).
    """
    records, seen = [], set()
    for path in map(Path, paths):
        for file in _candidate_files(path):
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            try:
                records.append(Record.load(file))
            except RecordError as error:
                if strict:
                    raise
                warnings.warn(str(error), RecordWarning, stacklevel=2)
    return records


# -- the table ------------------------------------------------------------------

def _modalities(record: Record) -> str:
    return "+".join(record.modalities)


def recipe(record: Record) -> str:
    """How a record's model was trained beyond its defense: ``scratch``, or its defense parameters, recipe,
    held-out share, training numerics and number of training processes (``amrs=2``, ``warm-start``,
    ``holdout 0.2``, ``bf16 autocast``, ``8 processes``, ...)."""
    params = changed_params(record.defense, record.config.get("defense_params") or {})
    parts = [str(record.config.get("recipe", "scratch"))]
    if params:
        parts[:0] = [", ".join(f"{key}={params[key]}" for key in sorted(params))]
    holdout = record.config.get("holdout") or 0
    if holdout:
        parts.append(f"holdout {holdout:g}")
    parts += [name for key, name in (("amp", "bf16 autocast"), ("sync_bn", "sync-bn")) if record.config.get(key)]
    processes = (record.training or {}).get("world_size", 1)
    if processes > 1:  # BatchNorm over each process's share of a batch
        parts.append(f"{processes} processes")
    return ", ".join(part for part in parts if part != "scratch") or "scratch"


def _identity(record: Record) -> tuple[str, str, str, str, str, str]:
    """What makes two records the same model: defense, preset, modalities, split, recipe, training seed."""
    return (record.defense, str(record.preset), _modalities(record), str(record.split), recipe(record),
            str(record.seed))


def _newest_per_model(records: list[Record]) -> tuple[list[Record], list[str]]:
    """One record per model identity (the newest), and a note for each identity that had several."""
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(_identity(record), []).append(record)
    kept, notes = [], []
    for identity, group in groups.items():
        group.sort(key=lambda r: (r.finished_at(), r.source), reverse=True)
        kept.append(group[0])
        if len(group) > 1:
            ignored = ", ".join(sorted(r.source for r in group[1:]))
            notes.append(f"{len(group)} records of {' / '.join(identity[:5])} / seed {identity[5]}; kept the "
                         f"newest, {group[0].source}; ignored {ignored}")
    return kept, sorted(notes)


def _flags(record: Record, common_settings: str | None) -> str:
    marks = []
    if record.flags.get("surrogate_used"):
        marks.append("surrogate")
    failed = sorted(name for name, passed in (record.flags.get("sanity") or {}).items() if passed is False)
    if failed:
        marks.append(f"sanity!({','.join(failed)})")
    tripped = sorted(name for name, passed in (record.flags.get("indicators") or {}).items() if passed is False)
    if tripped:
        marks.append(f"attack-failure!({','.join(tripped)})")
    if common_settings is not None and _settings_key(record) != common_settings:
        marks.append("settings!")
    return " ".join(marks)


def _published_log(record: Record) -> list[dict[str, Any]] | None:
    """The training log a sweep published beside the record (``training.log``), None without one."""
    log = (record.training or {}).get("log")
    if not log or record.path is None or not (record.path.parent / log).is_file():
        return None
    from mmrobust.training_plot import read_log_file

    return read_log_file(record.path.parent / log)


def converged(record: Record) -> bool | None:
    """Whether the record's training met the convergence rule (:func:`mmrobust.training.convergence`); None
    when it was not measured. The training log a sweep publishes beside the record (``training.log``) is
    judged by the rule as it is now; without one, the verdict the record was made with stands."""
    rows = _published_log(record)
    if rows is not None:
        from mmrobust.training import convergence

        found = convergence(rows)
        return None if found is None else found["converged"]
    return ((record.training or {}).get("convergence") or {}).get("converged")


def recipe_converged(records: Sequence[Record]) -> bool | None:
    """Whether the recipe of a row's records (one model over its training seeds) met the convergence rule:
    judged on the mean of their published curves (:func:`mmrobust.training.recipe_convergence`); where a
    record has none, each record's own verdict (:func:`converged`), any failure failing the recipe."""
    logs = [_published_log(record) for record in records]
    if records and all(rows is not None for rows in logs):
        from mmrobust.training import recipe_convergence

        found = recipe_convergence(logs)
        if found is not None:
            return found["converged"]
    verdicts = [converged(record) for record in records]
    if any(verdict is False for verdict in verdicts):
        return False
    return True if verdicts and all(verdict is True for verdict in verdicts) else None


def _settings_key(record: Record) -> str:
    return json.dumps(record.protocol_settings, sort_keys=True)


def _value(entry: Mapping[str, Any] | None, key: str) -> float:
    value = (entry or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else np.nan


def target_codes(records: Iterable[Record]) -> list[str]:
    """The attack targets the records' metrics hold (``R``, ``S``, ``RS``, ...): single modalities in the
    order of the longest code (all modalities at once), then the combinations, shortest first."""
    seen: set[str] = set()
    for record in records:
        for entry in (record.metrics.get("attacks") or {}).values():
            seen.update(key for key in entry if key not in ("avg", "ri", "ci"))
    joint = max(sorted(seen), key=len, default="")
    return sorted(seen, key=lambda code: (len(code), joint.find(code) if len(code) == 1 else 0, code))


def default_attack(protocol: str) -> str:
    """The column a protocol's table ranks by (:data:`DEFAULT_ATTACK`; ``pgd20`` for one not listed)."""
    return DEFAULT_ATTACK.get(protocol.split("~")[0], "pgd20")


def columns(codes: Iterable[str], strong: bool = False) -> tuple[list[str], list[str]]:
    """All columns and the number columns of a table over ``codes``: ✓ then the joint code, ✗ and each code;
    with ``strong``, the strong-v1 worst-case Avg of the same model and the share of Avg it keeps."""
    codes = list(codes)
    clean = "✓" + max(codes, key=len, default="")
    numbers = [clean, *[f"✗{code}" for code in codes], "Avg", "RI", "Worst Avg"]
    if strong:
        numbers += [STRONG_AVG, KEPT]
    return ["defense", "modalities", "preset", "split", *numbers, "seeds", "vs above", "flags", "source", "run"], \
        numbers



def _strong_twin(record: Record, candidates: Iterable[Record]) -> Record | None:
    """The strong-v1 record of the same model (same identity and weights), the newest if several."""
    digest = record.evaluation.get("model_digest")
    twins = [c for c in candidates if c.protocol == STRONG and c.dataset == record.dataset
             and _identity(c) == _identity(record) and c.evaluation.get("model_digest") == digest]
    return max(twins, key=lambda c: (c.finished_at(), c.source), default=None)


def _record_values(record: Record, attack: str, reference: Record | None, codes: list[str],
                   strong: Record | None) -> dict[str, float]:
    """One record's numbers, column by column (NaN where it has none)."""
    metrics = record.metrics
    entry = (metrics.get("attacks") or {}).get(attack)
    clean = columns(codes)[1][0]
    values = {clean: _value(metrics, "clean"), **{f"✗{code}": _value(entry, code) for code in codes},
              "Avg": _value(entry, "avg"), "RI": np.nan}
    if reference is not None:
        reference_entry = (reference.metrics.get("attacks") or {}).get(attack)
        if entry is not None and reference_entry is not None:
            values["RI"] = relative_improvement(values[clean], values["Avg"], _value(reference.metrics, "clean"),
                                                _value(reference_entry, "avg"))
    values["Worst Avg"] = _value((metrics.get("attacks") or {}).get(WORST), "avg")
    if strong is not None:
        values[STRONG_AVG] = _value((strong.metrics.get("attacks") or {}).get(WORST), "avg")
        avg = _avg_on(record, strong.test_indices(), attack, codes) if strong.test_subset else values["Avg"]
        values[KEPT] = 100 * values[STRONG_AVG] / avg if avg > 0 else np.nan
    return values


def _avg_on(record: Record, indices: np.ndarray, attack: str, codes: list[str]) -> float:
    """A whole-split record's Avg on the test samples ``indices`` (those its strong-v1 twin scored), from its
    per-sample outcomes; NaN without them."""
    if record.test_subset:
        return np.nan
    scores = sample_scores(record, attack, codes)
    if scores is None or len(scores["avg"]) <= int(indices.max(initial=-1)):
        return np.nan
    return 100.0 * float(scores["avg"][indices].mean())


def sample_scores(record: Record, attack: str, codes: list[str]) -> dict[str, np.ndarray] | None:
    """Per-sample scores behind a record's numbers for one attack: ``clean``, each target code, ``avg`` (the
    mean over targets) and ``worst avg``; None when its outcome file is missing or does not reproduce its
    metrics (a record written by hand, say)."""
    try:
        outcomes = record.outcomes()
    except (RecordError, OSError, ValueError, KeyError):
        return None
    cells: dict[str, dict[str, np.ndarray]] = {}
    for key, value in outcomes.items():
        if "/" in key and "#" not in key:
            name, code = key.rsplit("/", 1)
            cells.setdefault(name, {})[code] = np.asarray(value, dtype=bool)

    def targets(name: str) -> dict[str, np.ndarray] | None:
        if name == WORST:
            found = {code: np.logical_and.reduce([cell[code] for cell in cells.values() if code in cell])
                     for code in codes if any(code in cell for cell in cells.values())}
        else:
            found = {code: cells[name][code] for code in codes if code in cells.get(name, {})}
        return found if found and len(found) == len([c for c in codes if c in found]) else None

    chosen, worst = targets(attack), targets(WORST)
    if chosen is None or worst is None or "clean" not in outcomes:
        return None
    scores = {"clean": np.asarray(outcomes["clean"], dtype=float),
              **{code: correct.astype(float) for code, correct in chosen.items()},
              "avg": np.mean([correct.astype(float) for correct in chosen.values()], axis=0),
              "worst avg": np.mean([correct.astype(float) for correct in worst.values()], axis=0)}
    entry = (record.metrics.get("attacks") or {}).get(attack) or {}
    expected = {"clean": record.metrics.get("clean"), "avg": entry.get("avg"),
                "worst avg": ((record.metrics.get("attacks") or {}).get(WORST) or {}).get("avg"),
                **{code: entry.get(code) for code in chosen}}
    for name, value in expected.items():
        if not isinstance(value, (int, float)) or abs(100.0 * scores[name].mean() - value) > 1e-6:
            return None
    return scores


def _sources(names: list[str]) -> str:
    """``a/b-s0.json`` and ``a/b-s1.json`` as ``a/b-s{0,1}.json``."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[len(prefix):][::-1] for n in names])[::-1]
    middles = [n[len(prefix):len(n) - len(suffix)] for n in names]
    return f"{prefix}{{{','.join(middles)}}}{suffix}"


class _Row:
    """The records of one model over its training seeds, and what the table shows of them."""

    def __init__(self, records: list[Record], attack: str, chosen: list[Record], common_settings: str | None,
                 codes: list[str], twins: Mapping[int, Record | None]):
        self.attack = attack
        self.records = sorted(records, key=lambda r: (r.seed is None, r.seed or 0, r.source))
        self.seeds = [r.seed for r in self.records]
        self.codes = codes
        self.clean = columns(codes)[1][0]
        references = [find_reference(r, chosen) for r in self.records]
        self.values = [_record_values(r, attack, ref, codes, twins.get(id(r)))
                       for r, ref in zip(self.records, references, strict=True)]
        self.scores: dict[str, np.ndarray] = {}   # column -> (seeds, samples) per-sample scores
        per_record = [sample_scores(r, attack, codes) for r in self.records]
        if all(s is not None for s in per_record) and len({len(s["clean"]) for s in per_record}) == 1:
            self.scores[self.clean] = np.stack([s["clean"] for s in per_record])
            for code in codes:
                if all(code in s for s in per_record):
                    self.scores[f"✗{code}"] = np.stack([s[code] for s in per_record])
            self.scores["Avg"] = np.stack([s["avg"] for s in per_record])
            self.scores["Worst Avg"] = np.stack([s["worst avg"] for s in per_record])
            reference_scores = [sample_scores(ref, attack, codes) if ref is not None else None
                                for ref in references]
            if all(ref is not None and len(ref["clean"]) == len(s["clean"])
                   for ref, s in zip(reference_scores, per_record, strict=True)):
                self.scores["RI"] = np.stack([s["clean"] + s["avg"] - ref["clean"] - ref["avg"]
                                              for s, ref in zip(per_record, reference_scores, strict=True)])
            strong = [twins.get(id(r)) for r in self.records]
            if all(twin is not None for twin in strong):
                strong_scores = [sample_scores(twin, WORST, codes) for twin in strong]
                if all(t is not None and len(t["clean"]) == len(s["clean"])
                       for t, s in zip(strong_scores, per_record, strict=True)):
                    self.scores[STRONG_AVG] = np.stack([t["avg"] for t in strong_scores])
        self.flags = self._flags(common_settings, twins)

    def _flags(self, common_settings: str | None, twins: Mapping[int, Record | None]) -> str:
        """Each record's flags, and the attack-failure indicators its strong-v1 twin tripped (gradient
        masking shown beside the standard-v1 numbers it inflates); a flag not raised for every seed names
        the seeds that raised it."""
        per_record = []
        for record in self.records:
            marks = _flags(record, common_settings).split()
            twin = twins.get(id(record))
            tripped = sorted(k for k, ok in ((twin.flags.get("indicators") or {}) if twin else {}).items()
                             if ok is False)
            if tripped:
                marks.append(f"{STRONG}:attack-failure!({','.join(tripped)})")
            per_record.append(marks)
        marks = []
        for mark in dict.fromkeys(m for flags in per_record for m in flags):
            having = [seed for seed, flags in zip(self.seeds, per_record, strict=True) if mark in flags]
            marks.append(mark if len(having) == len(self.seeds) else
                         f"{mark}[seed {','.join(map(str, having))}]")
        if recipe_converged(self.records) is False:
            marks.append("unconverged!")
        return " ".join(marks)

    def summary(self, column: str) -> stats.Summary | None:
        """The column over seeds (and samples, where the outcomes are at hand)."""
        values = np.array([v.get(column, np.nan) for v in self.values], dtype=float)
        if column in self.scores:
            return stats.summarize(self.scores[column])
        present = values[~np.isnan(values)]
        if present.size == 0:
            return None
        spread = float(np.std(present, ddof=1)) if present.size > 1 else np.nan
        low = high = np.nan
        if len(self.records) == 1:  # a record without outcomes: its own Wilson interval where it has one
            interval = self._stored_interval(column)
            if interval is not None:
                low, high = interval
        return stats.Summary(float(present.mean()), spread, low, high, int(present.size))

    def _stored_interval(self, column: str) -> tuple[float, float] | None:
        metrics = self.records[0].metrics
        if column == self.clean:
            found = metrics.get("clean_ci")
        elif column.startswith("✗"):
            found = (((metrics.get("attacks") or {}).get(self.attack) or {}).get("ci") or {}).get(column[1:])
        else:
            found = None
        return (float(found[0]), float(found[1])) if isinstance(found, list) and len(found) == 2 else None

    def mean(self, column: str) -> float:
        """The mean over seeds of one column's per-record values (NaN where none has it)."""
        values = np.array([v.get(column, np.nan) for v in self.values], dtype=float)
        return float(np.nanmean(values)) if np.any(~np.isnan(values)) else np.nan

    def rank_key(self) -> tuple:
        """Avg, then clean accuracy, descending (missing last); defense and runs break ties."""
        avg, clean = self.mean("Avg"), self.mean(self.clean)
        return (np.isnan(avg), -avg if not np.isnan(avg) else 0.0, np.isnan(clean),
                -clean if not np.isnan(clean) else 0.0, self.records[0].defense,
                [r.source for r in self.records])

    def row(self, strong: bool) -> dict[str, Any]:
        """The table row: each number column's mean, spread and interval, then seeds, flags and runs."""
        record = self.records[0]
        trained = recipe(record)
        row: dict[str, Any] = {"defense": record.defense + ("" if trained == "scratch" else f" ({trained})"),
                               "modalities": _modalities(record),
                               "preset": record.preset, "split": record.split}
        numbers = columns(self.codes, strong)[1]
        for column in numbers:
            summary = self.summary(column)
            if column == KEPT:  # a ratio of two means: the mean and spread of the per-seed ratios, no interval
                kept = np.array([v.get(KEPT, np.nan) for v in self.values], dtype=float)
                kept = kept[~np.isnan(kept)]
                summary = stats.Summary(float(kept.mean()), float(np.std(kept, ddof=1)) if kept.size > 1 else
                                        np.nan, np.nan, np.nan, int(kept.size)) if kept.size else None
            row[column] = summary.mean if summary else np.nan
            row[f"{column} sd"] = summary.spread if summary else np.nan
            row[f"{column} low"] = summary.low if summary else np.nan
            row[f"{column} high"] = summary.high if summary else np.nan
        row["seeds"] = ",".join("?" if seed is None else str(seed) for seed in self.seeds)
        row["vs above"] = ""
        row["flags"] = self.flags
        row["source"] = "measured"
        row["run"] = _sources([r.source for r in self.records])
        return row


def _versus(above: _Row, below: _Row) -> str:
    """Whether ``below``'s Avg is significantly under ``above``'s (paired two-level bootstrap)."""
    first, second = above.scores.get("Avg"), below.scores.get("Avg")
    if first is None or second is None or first.shape[1] != second.shape[1]:
        return ""
    test = stats.compare(first, second, paired_seeds=above.seeds == below.seeds)
    p = "p<0.001" if test.p_value < 0.001 else f"p={test.p_value:.3f}"
    return f"{'<' if test.significant else '≈'} ({p})"


def _reported_rows(dataset: str) -> list[dict[str, Any]]:
    rows = []
    for defense, values in REPORTED_PGD20.get(dataset, {}).items():
        numbers = dict(zip(REPORTED_FIELDS, values, strict=True))
        rows.append({"defense": defense, "modalities": "rgb+skeleton", "preset": "paper",
                     "split": REPORTED_SPLIT[dataset], "✓RS": numbers["clean"],
                     **{f"✗{target}": numbers[target] for target in REPORTED_TARGETS},
                     "Avg": numbers["avg"], "RI": numbers["ri"], "Worst Avg": np.nan, "seeds": "", "vs above": "",
                     "flags": "", "source": "reported",
                     "run": REPORTED_CITATION.get((dataset, defense), "AMR paper, Table 2")})
    return rows


def model_rows(records: Iterable[Record], dataset: str, protocol: str = "standard-v1",
               attack: str | None = None) -> tuple[list[_Row], list[str], list[str]]:
    """The rows of :func:`build_table` before rendering, best first, with the target codes and footnotes
    (the claims report reads the same rows)."""
    records = list(records)
    attack = attack or default_attack(protocol)
    chosen = [r for r in records if r.dataset == dataset and r.protocol == protocol]
    chosen.sort(key=lambda r: r.source)
    chosen, footnotes = _newest_per_model(chosen)
    settings = Counter(_settings_key(r) for r in chosen)
    common_settings = settings.most_common(1)[0][0] if len(settings) > 1 else None
    if common_settings is not None:
        footnotes.append("settings!: protocol_settings differ from those of most records "
                         "under the same protocol name")
    codes = target_codes(chosen)
    twins = {id(r): _strong_twin(r, records) for r in chosen} if protocol == STANDARD else {}
    footnotes += _subset_notes(chosen, [twin for twin in twins.values() if twin is not None])
    groups: dict[tuple, list[Record]] = {}
    for record in chosen:  # one row per model over its seeds (records of other data or clips never share a row)
        groups.setdefault((*_identity(record)[:5], record.fingerprint, record.test_subset), []).append(record)
    rows = sorted((_Row(group, attack, chosen, common_settings, codes, twins) for group in groups.values()),
                  key=_Row.rank_key)
    return rows, codes, footnotes


def _subset_notes(records: list[Record], twins: list[Record]) -> list[str]:
    """Footnotes naming the records (and strong-v1 twins) that scored a subset of the test clips."""
    notes = []
    for found, what in ((records, "these records"), (twins, f"the {STRONG} records behind {STRONG_AVG}")):
        sizes = sorted({(r.test_subset, len(r.test_indices()), r.data.get("test_size")) for r in found
                        if r.test_subset})
        for per_class, size, of in sizes:
            notes.append(f"{what}: {size} of the {of} test clips ({per_class} per class, a fixed class-stratified "
                         "choice)" + (f"; {KEPT} compares with Avg on the same clips" if found is twins else ""))
    return notes


def build_table(records: Iterable[Record], dataset: str, protocol: str = "standard-v1",
                attack: str | None = None) -> pd.DataFrame:
    """The leaderboard of ``dataset`` under ``protocol``, for one attack, one row per model over its seeds.

    Only records of exactly that dataset and protocol name are used. Records
    of one defense, preset, modalities, split and data that differ in their
    training seed make one row: each number column holds the mean over seeds,
    ``<column> sd`` the standard deviation of the per-seed values and
    ``<column> low`` / ``high`` a 95 % interval over seeds and test samples
    (:mod:`mmrobust.stats`; from the per-sample outcomes). RI is computed per
    seed against the reference defense's record (``none``) of the same preset,
    split, modalities, data and training seed (:func:`~mmrobust.results.find_reference`;
    empty when there is none). Rows are sorted by Avg, then clean accuracy,
    both descending; ``vs above`` says whether a row's Avg is significantly
    below the row above it (``<``) or not (``≈``), by a paired two-level
    bootstrap with its p-value. The paper's reported rows (NTU RGB+D and
    iMiGUE, standard-v1, PGD20 only) follow in the paper's order. Where
    several records describe the same model and seed, the newest is kept.
    ``attack`` defaults to the protocol's (:func:`default_attack`). Where
    ``records`` hold strong-v1 records of the same models, the standard-v1
    table adds their worst-case Avg and the percentage of its own Avg that
    survives (``Kept %``).

    ``table.attrs`` holds ``dataset``, ``protocol``, ``attack`` and
    ``footnotes`` (a list of str), which :func:`render` prints under the table.
    """
    records = list(records)
    attack = attack or default_attack(protocol)
    rows, codes, footnotes = model_rows(records, dataset, protocol, attack)
    reported = _reported_rows(dataset) if protocol == REPORTED_PROTOCOL and attack == REPORTED_ATTACK else []
    codes = codes or (list(REPORTED_TARGETS) if reported else [])
    if reported and set(codes) != set(REPORTED_TARGETS):
        reported = []  # the paper's rows have R, S and RS only
    strong = any(STRONG_AVG in row.values[i] for row in rows for i in range(len(row.values)))
    measured = [row.row(strong) for row in rows]
    for index in range(1, len(rows)):
        measured[index]["vs above"] = _versus(rows[index - 1], rows[index])
    if strong:
        partial = [f"{r['defense']} ({sum(STRONG_AVG in v for v in row.values)} of {len(row.values)} seeds)"
                   for r, row in zip(measured, rows, strict=True)
                   if 0 < sum(STRONG_AVG in v for v in row.values) < len(row.values)]
        if partial:
            footnotes.append(f"{STRONG_AVG} and {KEPT} come from the seeds with a {STRONG} record: "
                             + ", ".join(partial))
    names, numbers = columns(codes, strong)
    extra = [f"{column} {part}" for column in numbers for part in ("sd", "low", "high")]
    table = pd.DataFrame(measured + reported, columns=names + extra)
    table[numbers + extra] = table[numbers + extra].astype(float)
    table.attrs = {"dataset": dataset, "protocol": protocol, "attack": attack, "footnotes": footnotes}
    return table


# -- output ---------------------------------------------------------------------

def _caption(table: pd.DataFrame) -> str:
    attrs = table.attrs
    attack = attrs.get("attack", "?")
    under = "the pointwise worst case over all attacks" if attack == WORST else attack
    text = (f"{attrs.get('dataset', '?')}, protocol {attrs.get('protocol', '?')}: accuracy (%) under {under}, "
            "the mean over training seeds ± the standard deviation of the per-seed values; "
            "Worst Avg is the Avg of the worst case over all attacks; "
            f"RI against `{reference_defense()}` of the same preset, split, modalities, data and training seed; "
            "vs above: whether the row's Avg is significantly below the row above (<) or not (≈), by a paired "
            "two-level bootstrap over seeds and test samples.")
    if KEPT in table.columns:
        text += (f" {STRONG_AVG}: the worst-case Avg of the same model under {STRONG}; {KEPT}: the share of "
                 "Avg that survives it.")
    return text


def _md_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{round(value, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
    return "" if value is None else str(value)


def _number_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns
            if (c[:1] in "✓✗" or c in ("Avg", "RI", "Worst Avg", STRONG_AVG, KEPT)) and f"{c} sd" in table.columns]


def _shown(table: pd.DataFrame) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """The cells of the main table (``mean ± sd``) and of the interval table (``[low, high]``), and the
    number columns that have intervals."""
    numbers = _number_columns(table)
    main = [c for c in table.columns if not c.endswith((" sd", " low", " high"))]
    with_interval = [c for c in numbers if table[f"{c} low"].notna().any()]
    cells, intervals = [], []
    for _, row in table.iterrows():
        line = []
        for column in main:
            value = row[column]
            if column in numbers and not np.isnan(row[f"{column} sd"]):
                line.append(f"{_md_cell(value)} ± {_md_cell(row[f'{column} sd'])}")
            else:
                line.append(_md_cell(value))
        cells.append(line)
        if row["source"] == "measured" and with_interval:
            intervals.append([row["defense"], row["seeds"]] + [
                "" if np.isnan(row[f"{c} low"]) else f"[{_md_cell(row[f'{c} low'])}, {_md_cell(row[f'{c} high'])}]"
                for c in with_interval])
    return cells, intervals, with_interval


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as markdown (``md``), ``csv`` or ``html``; deterministic, no timestamps.

    Markdown and HTML show two decimals, each mean with its spread over seeds,
    a caption, a second table of the 95 % intervals and the footnotes; CSV
    keeps full precision, every column (``<column> sd``, ``low``, ``high``)
    and only the rows.
    """
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    footnotes = table.attrs.get("footnotes", [])
    numbers = _number_columns(table)
    main = [c for c in table.columns if not c.endswith((" sd", " low", " high"))]
    cells, intervals, with_interval = _shown(table)
    interval_caption = ("95 % intervals over training seeds and test samples (two-level bootstrap, "
                        f"{stats.DRAWS} draws; one seed: over test samples only):")
    if fmt == "md":
        align = ["right" if column in numbers else "left" for column in main]
        body = tabulate(cells, headers=main, tablefmt="pipe", colalign=align, disable_numparse=True)
        text = f"{_caption(table)}\n\n{body}\n"
        if intervals:
            second = tabulate(intervals, headers=["defense", "seeds", *with_interval], tablefmt="pipe",
                              colalign=["left", "left"] + ["right"] * len(with_interval), disable_numparse=True)
            text += f"\n{interval_caption}\n\n{second}\n"
        return text + ("\n" + "".join(f"- {note}\n" for note in footnotes) if footnotes else "")
    if fmt == "html":
        body = pd.DataFrame(cells, columns=main).to_html(index=False, na_rep="")
        if intervals:
            body += (f"\n<p>{html.escape(interval_caption)}</p>\n"
                     + pd.DataFrame(intervals, columns=["defense", "seeds", *with_interval]).to_html(index=False))
        notes = "".join(f"<p>{html.escape(note)}</p>\n" for note in footnotes)
        return f"<p>{html.escape(_caption(table))}</p>\n{body}\n{notes}"
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_leaderboard(table: pd.DataFrame, out_dir: str | Path, dataset: str, protocol: str) -> list[Path]:
    """Write ``out_dir/<dataset>/<protocol>.{md,csv,html}`` atomically; return the paths.

    ``out_dir`` is the leaderboards folder (``leaderboards`` in the repository).
    """
    for name in (dataset, protocol):
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot name a leaderboard file")
    folder = Path(out_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = folder / f"{protocol}.{fmt}"
        write_text(path, render(table, fmt))
        paths.append(path)
    return paths


def record_table(record: Record) -> str:
    """One record as the paper's Table 2: one row per attack, then its notes (RI, surrogate, failed checks)."""
    metrics = record.metrics
    codes = target_codes([record])
    rows = []
    for attack, values in metrics["attacks"].items():
        ri = values.get("ri")
        rows.append([attack, metrics["clean"], *[values.get(t) for t in codes], values["avg"],
                     "" if ri is None else ri])
    headers = ["attack", columns(codes)[1][0], *[f"✗{t}" for t in codes], "Avg", "RI"]
    lines = [tabulate(rows, headers=headers, floatfmt=".2f")]
    note = metrics.get("ri_reference", {}).get("note")
    if note:
        lines.append(f"RI: {note}")
    if record.flags.get("surrogate_used"):
        lines.append("robust accuracy counts the worse of the direct and the surrogate (BPDA) attack")
    failed = [k for k, ok in record.flags.get("sanity", {}).items() if not ok]
    if failed:
        lines.append(f"sanity checks failed: {', '.join(failed)}")
    indicators = record.flags.get("indicators") or {}
    tripped = [k for k, ok in indicators.items() if ok is False]
    if tripped:
        lines.append(f"ATTACK FAILURE indicated ({', '.join(tripped)}): the robust accuracy above may be an "
                     "overestimate")
    elif indicators:
        unmeasured = [k for k, ok in indicators.items() if ok is None]
        lines.append("attack-failure indicators: none tripped"
                     + (f" ({', '.join(unmeasured)} not measured)" if unmeasured else ""))
    return "\n".join(lines)
