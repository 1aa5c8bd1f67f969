"""The AMR paper's Table-2 claims, judged on a dataset's records with intervals.

Each claim is a conjunction of tests on the leaderboard's rows
(:func:`mmrobust.leaderboard.model_rows`: the mean over training seeds of every
column, with its per-sample scores). Every test is three-valued and reads the
95 % interval of a paired two-level bootstrap (:mod:`mmrobust.stats`):

* **gain** of a defense over the reference (``none``) on one column: *holds*
  when the interval of the difference lies above 0 and the difference is at
  least :data:`MARGIN` points; *does not hold* when the interval lies below
  :data:`MARGIN` (at most a negligible gain); otherwise *not resolved*.
* **best** on one column: *holds* when the defense is significantly above
  every other measured defense; *does not hold* when one is significantly
  above it; otherwise *not resolved*.
* **collapse** of the reference: its Avg's interval lies below
  :data:`COLLAPSE` (the paper's undefended models keep Avg 4.69 on NTU RGB+D
  and 2.38 on iMiGUE under PGD20); *does not hold* when it lies above.

A claim holds when all its tests hold, does not hold when one does not, and is
otherwise not resolved at this sample size. The claims follow the paper's
discussion of Table 2 (Sec. 5.2): (a) the undefended model has the best clean
accuracy and collapses; (b) adversarial training on RGB protects ✗R only, on
the skeleton ✗S only; (c) training on both protects both; (d) MinSim and
ExFMem keep ✗S but not ✗R; (e) AMR has the best ✗RS, Avg and RI.

Example::

    report = judge(load_records([Path("leaderboards/synthetic/records")]), "synthetic")
    print(render(report))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrobust import stats
from mmrobust.defense import reference_defense
from mmrobust.files import write_text
from mmrobust.leaderboard import STANDARD, STRONG, default_attack, model_rows, recipe
from mmrobust.results import Record

MARGIN = 5.0     # points: a smaller gain over the undefended model is no protection
COLLAPSE = 10.0  # points of Avg under attack
HOLDS, FAILS, OPEN, UNMEASURED = "holds", "does not hold", "not resolved at this sample size", "not measured"
REFERENCE = "{reference}"  # the registered reference defense (``none``)

# (test, defense, column): columns are the table's (✓ is the clean column of any dataset, ✗<code> a target).
CLAIMS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("a", "the undefended model has the best ✓RS and collapses under attack",
     (("best", REFERENCE, "✓"), ("collapse", REFERENCE, "Avg"))),
    ("b", "at-r is robust on ✗R only, at-s on ✗S only",
     (("gain", "at-r", "✗R"), ("no gain", "at-r", "✗S"), ("gain", "at-s", "✗S"), ("no gain", "at-s", "✗R"))),
    ("c", "at-rs is robust on ✗R, ✗S and ✗RS",
     (("gain", "at-rs", "✗R"), ("gain", "at-rs", "✗S"), ("gain", "at-rs", "✗RS"))),
    ("d", "MinSim and ExFMem keep ✗S but not ✗R",
     (("gain", "minsim", "✗S"), ("no gain", "minsim", "✗R"), ("gain", "exfmem", "✗S"),
      ("no gain", "exfmem", "✗R"), ("gain", "minsim+exfmem", "✗S"), ("no gain", "minsim+exfmem", "✗R"))),
    ("e", "AMR has the best ✗RS, Avg and RI",
     (("best", "amr", "✗RS"), ("best", "amr", "Avg"), ("best", "amr", "RI"))),
)


@dataclass(frozen=True)
class Verdict:
    """One claim under one protocol: its verdict and the numbers behind each test."""

    label: str
    claim: str
    verdict: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    dataset: str
    protocol: str
    attack: str
    seeds: str
    samples: int
    verdicts: tuple[Verdict, ...]
    recipe: str = "scratch"  # how the defenses judged were trained (the reference always from scratch)


def _combine(results: Sequence[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    return True if all(r is True for r in results) else None


def _interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


def _test(kind: str, defense: str, column: str, rows: dict, clean: str) -> tuple[bool | None, str]:
    column = clean if column == "✓" else column
    reference = reference_defense()
    row = rows.get(defense)
    if row is None or column not in row.scores:
        return None, f"{defense} {column}: not measured"
    if kind == "collapse":
        summary = stats.summarize(row.scores[column])
        verdict = True if summary.high < COLLAPSE else False if summary.low > COLLAPSE else None
        return verdict, (f"{defense} {column} {summary.mean:.2f} [{summary.low:.2f}, {summary.high:.2f}] "
                         f"against {COLLAPSE:g}")
    if kind in ("gain", "no gain"):
        base = rows.get(reference)
        if base is None or column not in base.scores:
            return None, f"{reference} {column}: not measured"
        test = stats.compare(row.scores[column], base.scores[column], paired_seeds=row.seeds == base.seeds)
        gain = (False if test.high < MARGIN else True if test.low > 0 and test.difference >= MARGIN else None)
        verdict = gain if kind == "gain" else (None if gain is None else not gain)
        return verdict, (f"{defense} {column} − {reference}: {test.difference:+.2f} "
                         f"{_interval(test.low, test.high)}")
    if kind == "best":
        others = [(name, other) for name, other in rows.items() if name != defense and column in other.scores]
        if not others:
            return None, f"{defense} {column}: nothing to compare with"
        results, parts = [], []
        for name, other in others:
            test = stats.compare(row.scores[column], other.scores[column], paired_seeds=row.seeds == other.seeds)
            results.append(True if test.low > 0 else False if test.high < 0 else None)
            parts.append(f"− {name} {test.difference:+.2f} {_interval(test.low, test.high)}")
        verdict = False if False in results else True if all(r is True for r in results) else None
        return verdict, f"{defense} {column} {100 * row.scores[column].mean():.2f}: " + "; ".join(parts)
    raise ValueError(f"unknown test {kind!r}")


def judge(records: Iterable[Record], dataset: str, protocol: str = STANDARD, attack: str | None = None) -> Report:
    """Every claim of :data:`CLAIMS` on ``dataset``'s records under ``protocol`` (ranked by ``attack``,
    default the protocol's own: PGD20 for standard-v1, the worst case for strong-v1)."""
    attack = attack or default_attack(protocol)
    ordered, codes, _ = model_rows(records, dataset, protocol, attack)
    trained, rows = _defenses_alike(ordered)
    clean = "✓" + max(codes, key=len, default="")
    verdicts = []
    for label, claim, tests in CLAIMS:
        results, evidence = [], []
        for kind, defense, column in tests:
            defense = reference_defense() if defense == REFERENCE else defense
            result, text = _test(kind, defense, column, rows, clean)
            results.append(result)
            evidence.append(f"{kind}: {text}")
        measured = not any(text.endswith("not measured") for text in evidence)
        outcome = _combine(results)
        verdict = UNMEASURED if not measured else HOLDS if outcome is True else FAILS if outcome is False else OPEN
        verdicts.append(Verdict(label, claim, verdict, tuple(evidence)))
    seeds = sorted({",".join(map(str, row.seeds)) for row in ordered})
    samples = {int(row.scores[clean].shape[1]) for row in ordered if clean in row.scores}
    return Report(dataset, protocol, attack, " / ".join(seeds), max(samples, default=0), tuple(verdicts), trained)


def _defenses_alike(ordered: Sequence) -> tuple[str, dict]:
    """The recipe the claims are judged on, and the best row of each defense trained by it.

    The claims compare defenses trained alike, with their default parameters:
    one recipe (:func:`mmrobust.leaderboard.recipe`) for every defense, the
    reference trained from scratch with the same held-out share and numerics
    (a warm start begins from it). Of the recipes the rows hold, the one that
    trains the most defenses is chosen, ``scratch`` first among equals.
    """
    reference = reference_defense()

    def from_scratch(record: Record) -> str:  # the recipe with the reference's own start
        return recipe(dataclasses.replace(record, config={**record.config, "recipe": "scratch"}))

    candidates: dict[str, dict] = {}
    for row in ordered:  # best first: the first row of a defense under a recipe is its best
        record = row.records[0]
        if record.defense != reference:
            candidates.setdefault(recipe(record), {}).setdefault(record.defense, row)
    chosen = min(candidates, key=lambda name: (-len(candidates[name]), name != "scratch", name), default="scratch")
    members = candidates.get(chosen, {})
    start = from_scratch(next(iter(members.values())).records[0]) if members else "scratch"
    rows = {}
    for row in ordered:  # in the table's order
        record = row.records[0]
        if row is members.get(record.defense) or (record.defense == reference and recipe(record) == start):
            rows.setdefault(record.defense, row)
    return chosen, rows


def render(reports: Sequence[Report]) -> str:
    """The reports as markdown: one section per protocol, one line per claim, then its evidence."""
    lines = ["# The AMR paper's Table-2 claims on this leaderboard", "",
             f"Differences are in points with 95 % intervals of a paired two-level bootstrap over training seeds "
             f"and test samples ({stats.DRAWS} draws). A gain over `{reference_defense()}` counts when its "
             f"interval lies above 0 and it is at least {MARGIN:g} points, and is ruled out when its interval "
             f"lies below {MARGIN:g}; best means significantly above every other defense; collapse means an Avg "
             f"interval below {COLLAPSE:g}. A claim holds when all its tests do, does not hold when one does not, "
             "and is otherwise not resolved at this sample size.", ""]
    for report in reports:
        trained = "" if report.recipe == "scratch" else (f", recipe {report.recipe} (`{reference_defense()}` "
                                                         "from scratch)")
        lines += [f"## {report.dataset}, {report.protocol} ({report.attack}): seeds {report.seeds}, "
                  f"{report.samples} test clips{trained}", "",
                  "| claim | verdict |", "|:--|:--|"]
        lines += [f"| ({v.label}) {v.claim} | **{v.verdict}** |" for v in report.verdicts]
        lines.append("")
        for verdict in report.verdicts:
            lines.append(f"- ({verdict.label}) {verdict.verdict}:")
            lines += [f"  - {text}" for text in verdict.evidence]
        lines.append("")
    return "\n".join(lines)


def report_protocols(records: Sequence[Record], dataset: str) -> list[Report]:
    """The claims under standard-v1 and, where there are strong-v1 records, under strong-v1."""
    records = list(records)
    protocols = [STANDARD] + ([STRONG] if any(r.protocol == STRONG and r.dataset == dataset
                                             for r in records) else [])
    return [judge(records, dataset, protocol) for protocol in protocols]


def write_claims(records: Sequence[Record], out_dir: str | Path, dataset: str) -> Path:
    """Write the claims report of ``dataset`` to ``out_dir/<dataset>/claims.md`` (atomically) and return the path."""
    path = Path(out_dir) / dataset / "claims.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, render(report_protocols(records, dataset)))
    return path
