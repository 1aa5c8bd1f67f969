"""Studies: the AMR paper's figures and tables beyond its leaderboard, one registered file each.

A study (``studies/<name>.py``, registered with ``@register_study``) is data
plus four functions of a :class:`Study` subclass:

* ``jobs(base, params)``: the runs it needs, each a :class:`Job` (a run
  configuration, and the ε or attacks it is evaluated under when those differ
  from the protocol's);
* ``collect(results, params)``: the study's data, plain JSON, from the records
  of those runs (and, for a study of learned weights, the trained models);
* ``table(data, params)``: a pandas table of the data;
* ``plot(data, params)``: a matplotlib figure of the data.

:func:`run_study` trains what is missing for every training seed, reuses
finished runs whose configuration matches (a sweep's runs serve a study
too), evaluates them where a job asks for another ε or attack list, and
writes into ``<out>/<dataset>/studies/``::

    <name>.json        the parameters, seeds, data and the record behind each row
    <name>.md, .csv    the table (one row per job; with several seeds, mean ± spread)
    <name>.png, .svg   the plot (with several seeds, the mean and a band of ± one spread)
    records/           the records and per-sample outcomes the study used

The table and plot are pure functions of ``<name>.json``, and its data a pure
function of the records (:func:`rerender`), so a test recomputes every
committed study from its files.

Example (``NAME`` a registered study, ``mmrobust study --help`` lists them)::

    from mmrobust.study import run_study

    paths = run_study(NAME, dataset="synthetic", seeds=[0, 1, 2])
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mmrobust.config import RunConfig
from mmrobust.defense import changed_params, reference_defense
from mmrobust.files import atomic_write, write_json, write_text
from mmrobust.leaderboard import STUDY_FOLDER, target_codes
from mmrobust.protocol import STANDARD_V1, get_protocol
from mmrobust.registry import STUDIES
from mmrobust.results import Record

FOLDER = STUDY_FOLDER
FORMAT = 1


@dataclass(frozen=True)
class Job:
    """One run a study reads: what to train, and what to evaluate it under.

    Attributes:
        key: the row it gives (unique within the study, the same for every seed), e.g. ``"2 AMRs"``.
        config: the run's configuration; the runner sets the seed.
        eps: ε of the evaluation when it is not the protocol's (``protocol`` with that ε).
        attacks: attack columns of the evaluation when not all of the protocol's.
        protocol: the protocol the evaluation starts from.
    """

    key: str
    config: RunConfig
    eps: float | None = None
    attacks: tuple[str, ...] = ()
    protocol: str = STANDARD_V1.name

    def evaluation(self) -> str:
        """The name of the protocol the job's record is made under (``standard-v1~<digest>`` when changed)."""
        return get_protocol(self.protocol, eps=self.eps, attacks=self.attacks).name


@dataclass(frozen=True)
class Result:
    """A job's outcome for one training seed: its record, and the run directory (None when re-rendered
    from committed files, where only the records are)."""

    job: Job
    seed: int
    record: Record
    run_dir: Path | None = None


@dataclass(frozen=True)
class NoParams:
    """This study takes no parameters."""


class Study:
    """Base class of a study; subclasses set ``title`` and ``Params`` and override the four functions.

    ``Params`` is a frozen dataclass; each field becomes an option of ``mmrobust study NAME``
    (``--field-name``), its ``metadata["help"]`` the option's help, and a tuple field takes several values
    (``--values 0.1 0.5 1``).
    """

    title: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: False for a study whose data needs the trained models, not only the records.
    from_records: ClassVar[bool] = True

    def jobs(self, base: RunConfig, params: Any) -> list[Job]:
        raise NotImplementedError

    def collect(self, results: Sequence[Result], params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def table(self, data: Mapping[str, Any], params: Any) -> pd.DataFrame:
        raise NotImplementedError

    def plot(self, data: Mapping[str, Any], params: Any) -> Any:
        """The study's matplotlib figure of ``data`` (the runner saves it as SVG and PNG), or None."""
        return None


def build_study(name: str) -> Study:
    return STUDIES.get(name)()


def make_params(study: Study, values: Mapping[str, Any]) -> Any:
    """The study's ``Params`` from ``values`` (unknown names refused with the known ones)."""
    known = {f.name for f in dataclasses.fields(study.Params)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} of this study; it takes "
                         f"{', '.join(sorted(known)) or 'none'}")
    fields = {f.name: f for f in dataclasses.fields(study.Params)}
    converted = {k: tuple(v) if isinstance(fields[k].default, tuple) and v is not None else v
                 for k, v in values.items()}
    return study.Params(**converted)


def defense_params(defense: str, **values: Any) -> dict[str, Any]:
    """``values`` without those equal to the defense's defaults, so that a job with default parameters is the
    same run (and run directory) as ``mmrobust run --defense D`` and a sweep's."""
    return changed_params(defense, values)


# -- running -------------------------------------------------------------------------

def run_study(name: str, *, dataset: str = "synthetic", preset: str = "tiny", seeds: Sequence[int] = (0,),
              params: Mapping[str, Any] | None = None, device: str = "auto", split: str | None = None,
              root: str | None = None, recipe: str = "scratch", holdout: float = 0.0,
              runs_dir: Path = Path("runs"), out: Path = Path("leaderboards"),
              progress: bool = True, say: Callable[[str], None] = print) -> list[Path]:
    """Train, evaluate and render study ``name``; returns the files written under ``out/<dataset>/studies/``.

    ``recipe`` and ``holdout`` are :class:`~mmrobust.config.RunConfig`'s, as in a sweep: with the same
    ones a study reuses the sweep's runs. Under ``warm-start`` the reference defense still trains from
    scratch, and the reference run each warm-started job begins from (same modalities, seed and holdout)
    is trained first when it is missing, without being a row of the study.

    Raises:
        UnknownNameError: no such study (with suggestions).
        ValueError: bad parameters or seeds.
        RunDirError: a run directory in the way holds another run.
    """
    from mmrobust.run import reevaluate, record_name
    from mmrobust.sweep import publish, train_or_reuse

    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    study = build_study(name)
    chosen = make_params(study, params or {})
    base = RunConfig(dataset=dataset, preset=preset, device=device, split=split, root=root, recipe=recipe,
                     holdout=holdout)
    folder = study_folder(out, dataset, split)
    results = []
    for seed in seeds:
        jobs = reference_from_scratch(study.jobs(base.replace(seed=seed), chosen))
        _check_keys(jobs)
        for reference in warm_start_sources(jobs):
            train_or_reuse(reference, runs_dir, progress=progress, say=say)
        for job in jobs:
            directory = train_or_reuse(job.config, runs_dir, progress=progress, say=say)
            evaluation = job.evaluation()
            if not (directory / record_name(evaluation)).is_file():
                say(f"{job.key} seed {seed}: evaluating {directory.name} under {evaluation}")
                reevaluate(directory, protocol=job.protocol, eps=job.eps, attacks=job.attacks or None,
                           progress=progress)
            record = publish(Record.load(directory / record_name(evaluation)), directory, folder / "records")
            results.append(Result(job, seed, record, directory))
    manifest = {"format": FORMAT, "study": name, "title": study.title, "dataset": dataset, "preset": preset,
                "split": split, "seeds": seeds, "recipe": recipe, "holdout": holdout,
                "matplotlib": _matplotlib_version(),
                "params": _plain(dataclasses.asdict(chosen)),
                "rows": [{"key": r.job.key, "seed": r.seed, "record": f"records/{r.record.path.name}"}
                         for r in results],
                "data": study.collect(results, chosen)}
    paths = [write_json(folder / f"{name}.json", manifest)]
    return paths + write_outputs(study, manifest, folder)


def reference_from_scratch(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` with the reference defense's runs trained from scratch (warm-start begins from them)."""
    reference = reference_defense()
    return [dataclasses.replace(job, config=job.config.replace(recipe="scratch"))
            if job.config.defense == reference else job for job in jobs]


def warm_start_sources(jobs: Sequence[Job]) -> list[RunConfig]:
    """The reference runs the warm-started ``jobs`` begin from, each once, in job order."""
    sources: list[RunConfig] = []
    for job in jobs:
        source = job.config.replace(defense=reference_defense(), defense_params={}, recipe="scratch")
        if job.config.recipe == "warm-start" and source not in sources:
            sources.append(source)
    return sources


def study_folder(out: Path, dataset: str, split: str | None = None) -> Path:
    """``<out>/<dataset>/studies`` (``<out>/<dataset>-<split>/studies`` for a split other than the default)."""
    return out / (f"{dataset}-{split}" if split else dataset) / FOLDER


def _matplotlib_version() -> str:
    """The figures' bytes depend on it (fonts, rasteriser), so the manifest keeps it."""
    import matplotlib

    return matplotlib.__version__


def _check_keys(jobs: Sequence[Job]) -> None:
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a study's jobs need distinct keys, got {keys}")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- rendering -------------------------------------------------------------------------

def rendered(study: Study, manifest: Mapping[str, Any]) -> dict[str, str | bytes]:
    """The study's files other than its JSON, by suffix: ``md``, ``csv``, and ``svg`` and ``png`` for a study
    with a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = make_params(study, manifest["params"])
    table = study.table(manifest["data"], params)
    caption = (f"{manifest['title']}: {manifest['dataset']}, preset {manifest['preset']}, training seed"
               f"{'s' if len(manifest['seeds']) > 1 else ''} {', '.join(map(str, manifest['seeds']))}")
    files: dict[str, str | bytes] = {"md": f"{caption}\n\n{_markdown(table)}\n", "csv": table.to_csv(index=False)}
    # files that re-render to the byte: no date or software stamp, a fixed id salt, glyphs as paths
    with matplotlib.rc_context({"svg.hashsalt": "mmrobust", "svg.fonttype": "path", "font.family": "DejaVu Sans"}):
        figure = study.plot(manifest["data"], params)
        if figure is not None:
            for fmt, metadata in (("svg", {"Date": None}), ("png", {"Software": None})):
                buffer = io.BytesIO()
                figure.savefig(buffer, format=fmt, metadata=metadata, dpi=110)
                files[fmt] = buffer.getvalue().decode() if fmt == "svg" else buffer.getvalue()
            plt.close(figure)
    return files


def write_outputs(study: Study, manifest: Mapping[str, Any], folder: Path) -> list[Path]:
    paths = []
    for suffix, content in rendered(study, manifest).items():
        path = folder / f"{manifest['study']}.{suffix}"
        if isinstance(content, bytes):
            paths.append(atomic_write(path, lambda handle, content=content: handle.write(content)))
        else:
            paths.append(write_text(path, content))
    return paths


def _markdown(table: pd.DataFrame) -> str:
    from tabulate import tabulate

    return tabulate(table, headers="keys", tablefmt="pipe", showindex=False, disable_numparse=True)


def rerender(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str | bytes]]:
    """From the committed files of study ``name`` in ``folder``: its manifest, its data collected again from
    the records (the manifest's own data for a study that reads models), and its files rendered again."""
    manifest = json.loads((folder / f"{name}.json").read_text())
    study = build_study(name)
    params = make_params(study, manifest["params"])
    data = manifest["data"]
    if study.from_records:
        base = RunConfig(dataset=manifest["dataset"], preset=manifest["preset"], split=manifest["split"],
                         recipe=manifest.get("recipe", "scratch"), holdout=manifest.get("holdout", 0.0))
        jobs = {seed: {job.key: job for job in study.jobs(base.replace(seed=seed), params)}
                for seed in manifest["seeds"]}
        results = [Result(jobs[row["seed"]][row["key"]], row["seed"], Record.load(folder / row["record"]))
                   for row in manifest["rows"]]
        data = study.collect(results, params)
    return manifest, data, rendered(study, {**manifest, "data": data})


# -- helpers the studies share -------------------------------------------------------------

def accuracy(record: Record, attack: str | None, target: str | None) -> float:
    """Clean accuracy (``attack`` None) or the robust accuracy of one attack on one target, in %.

    Raises:
        ValueError: the record has no such attack or target (naming what it has).
    """
    if attack is None:
        return float(record.metrics["clean"])
    attacks = record.metrics["attacks"]
    value = attacks.get(attack, {}).get(target)
    if not isinstance(value, (int, float)):
        raise ValueError(f"{record.path or 'record'}: no accuracy of attack {attack!r} on target {target!r}; it "
                         f"has attacks {', '.join(attacks)}")
    return float(value)


def by_seed(results: Sequence[Result]) -> dict[str, list[Result]]:
    """Results grouped by job key, in job order, each list in seed order."""
    grouped: dict[str, list[Result]] = {}
    for result in sorted(results, key=lambda r: r.seed):
        grouped.setdefault(result.job.key, []).append(result)
    order = list(dict.fromkeys(r.job.key for r in results))
    return {key: grouped[key] for key in order}


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the standard deviation over seeds (ddof 1; NaN with one seed)."""
    array = np.asarray(values, dtype=float)
    spread = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return float(array.mean()), spread


def cell(values: Sequence[float], digits: int = 2) -> str:
    """A table cell: ``mean`` with one seed, ``mean ± spread`` with several; ``–`` for no value."""
    if not values or all(math.isnan(v) for v in values):
        return "–"
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f}" if math.isnan(spread) else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def check_attack(attack: str, protocol: str = STANDARD_V1.name) -> None:
    """ValueError unless ``attack`` is a column of ``protocol``'s records (an attack key, or ``worst``)."""
    from mmrobust.metrics import WORST

    columns = [setting.key for setting in get_protocol(protocol).attacks] + [WORST]
    if attack not in columns:
        raise ValueError(f"attack {attack!r} is not a column of {protocol}; it has {', '.join(columns)}")


def variant_data(results: Sequence[Result], attack: str, reference: str) -> dict[str, Any]:
    """The paper's ablation layout (Tables 4 and 5): per job, per seed, ✓ clean accuracy, ✗ robust accuracy of
    ``attack`` on every target, their Avg, and RI against the job keyed ``reference`` of the same seed."""
    codes = target_codes(r.record for r in results)
    grouped = by_seed(results)
    baseline = {r.seed: r.record for r in grouped.get(reference, [])}
    rows = []
    for key, runs in grouped.items():
        robust = {code: [accuracy(r.record, attack, code) for r in runs] for code in codes}
        clean = [accuracy(r.record, None, None) for r in runs]
        avg = [float(np.mean([robust[code][i] for code in codes])) for i in range(len(runs))]
        ri = []
        for i, run in enumerate(runs):
            other = baseline.get(run.seed)
            if other is None:
                raise ValueError(f"no {reference!r} run of seed {run.seed} for RI")
            other_avg = float(np.mean([accuracy(other, attack, code) for code in codes]))
            ri.append((clean[i] - accuracy(other, None, None)) + (avg[i] - other_avg))
        rows.append({"key": key, "seeds": [r.seed for r in runs], "clean": clean, "robust": robust, "avg": avg,
                     "ri": ri})
    return {"dataset": results[0].record.dataset, "attack": attack, "targets": codes, "reference": reference,
            "rows": rows}


def variant_table(data: Mapping[str, Any], label: str,
                  reported: Mapping[str, Sequence[float]] = ()) -> pd.DataFrame:
    """The table of :func:`variant_data`: one row per job (mean ± spread over seeds), then the rows the paper
    reports (``reported``: row label to ✓, ✗ per target, Avg and RI, in the table's column order)."""
    clean = "✓" + max(data["targets"], key=len, default="")
    rows = []
    for row in data["rows"]:
        entry = {label: row["key"], clean: cell(row["clean"])}
        entry.update({f"✗{code}": cell(row["robust"][code]) for code in data["targets"]})
        entry.update({"Avg": cell(row["avg"]), "RI": cell(row["ri"]), "source": "measured"})
        rows.append(entry)
    columns = [label, clean, *(f"✗{code}" for code in data["targets"]), "Avg", "RI", "source"]
    for name, values in dict(reported).items():
        rows.append({label: name, **{c: f"{v:.2f}" for c, v in zip(columns[1:-1], values)}, "source": "reported"})
    return pd.DataFrame(rows).reindex(columns=columns).fillna("–")


def variant_plot(data: Mapping[str, Any], what: str) -> Any:
    """Grouped bars of :func:`variant_data`: per job, ✓ and ✗ per target and Avg, with ± one spread over
    seeds as error bars where there are several."""
    import matplotlib.pyplot as plt

    joint = max(data["targets"], key=len, default="")
    series = [(f"✓{joint}", lambda row: row["clean"])]
    series += [(f"✗{code}", lambda row, code=code: row["robust"][code]) for code in data["targets"]]
    series.append(("Avg", lambda row: row["avg"]))
    rows = data["rows"]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.8))
    for index, (name, values) in enumerate(series):
        stats = [mean_spread(values(row)) for row in rows]
        means = [m for m, _ in stats]
        spreads = [0.0 if math.isnan(s) else s for _, s in stats]
        positions = np.arange(len(rows)) + (index - (len(series) - 1) / 2) * width
        ax.bar(positions, means, width, yerr=spreads if any(spreads) else None, capsize=2, label=name)
    ax.set_xticks(np.arange(len(rows)), [row["key"] for row in rows], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Accuracy against the {what}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return fig
