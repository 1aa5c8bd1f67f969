"""The evaluation protocols: what the benchmark measures, and how.

``standard-v1`` reproduces the AMR paper's evaluation (Sec. 4.2, Table 2):

* clean accuracy of the fused model (✓RS);
* FGSM (ε = 8/255), PGD-20 (ε = 8/255, α = 2/255, random start) and CW∞
  (PGD-30 on the margin loss, ε = 8/255, α = 2/255), white-box;
* each attack on RGB only (R), skeleton only (S) and both (RS).

``strong-v1`` gives a tight robust accuracy, in the spirit of AutoAttack's
"standard" version (Croce & Hein, ICML 2020) with one ε = 8/255 per
modality: APGD-CE (100 iterations), APGD-T (100 iterations, the 9 most
likely wrong classes) and Square (5,000 queries), each run only on the samples
every earlier attack on the same target left robust, so each column is the
robust accuracy after that attack and all before it, and the last is the
pointwise worst case. It is also adaptive: every differentiable view a defense
declares (:meth:`mmrobust.defense.Defense.adaptive`: a BPDA surrogate, an
auxiliary head), a 20-draw expectation over a randomised forward (EOT,
Athalye et al., ICML 2018) when the forward is not deterministic, and a
transfer attack from the undefended model when one is given are attacked with
APGD-CE before the black-box attack, each example judged on the defended
model itself. Its records carry attack-failure indicators (Pintor et al.,
NeurIPS 2022; :data:`INDICATORS`).

The model is in eval mode and the test clips are fixed. Every outcome is kept
per sample, so any aggregate (Avg, RI, the worst case over attacks, confidence
intervals) is recomputed from them by :mod:`mmrobust.metrics`. Entries a
dataset declares as padding (:attr:`mmrobust.datasets.base.Modality.padding`:
a skeleton slot holding nobody) are no input: every attack of every protocol
sees them pinned to their clean value, and the records say how many there were.

Cost is kept down without changing any number: one clean forward per sample is
shared by every cell, a sample misclassified clean is never attacked, and a
sample leaves an attack at the step that fools it, keeping that example (exact
for robust accuracy). In ``standard-v1`` a defense that ships a differentiable
surrogate (BPDA) is attacked through both the model and the surrogate; a
sample counts as robust only if it survives both.

A protocol with changed settings gets another name (``standard-v1~<digest>``),
so its numbers are never ranked against the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from mmrobust.attack import RandomStarts, build_attack, take
from mmrobust.datasets.base import Split
from mmrobust.distributed import SOLO, Team
from mmrobust.engine import Schedule, SignGradientAttack
from mmrobust.model import logits_of

log = logging.getLogger(__name__)

CHUNK_BATCHES = 8  # batches of test clips handed to an attack at once


@dataclass(frozen=True)
class AttackSetting:
    """One attack of a protocol: its column name, registered attack and parameters.

    ``at_most`` names the columns whose robust accuracy this one must not
    exceed by more than one sample (a stronger attack of the same threat
    model); each such pair is a sanity flag of every record.
    """

    key: str
    attack: str
    params: tuple[tuple[str, Any], ...] = ()
    at_most: tuple[str, ...] = ()

    def build(self):
        return build_attack(self.attack, **dict(self.params))


@dataclass(frozen=True)
class Protocol:
    """A named, versioned evaluation suite.

    Attributes:
        cascade: each attack runs only on the samples still robust after every
            earlier attack on the same target; its outcomes are cumulative.
        adaptive: also attack the defense's declared views, an expectation
            over a randomised forward and a transfer source (see the module
            docstring), and compute the attack-failure indicators.
        randomness_passes: forward passes compared to decide whether the
            model is deterministic.
        eot_draws: forward passes averaged per step when it is not.
    """

    name: str
    eps: float
    attacks: tuple[AttackSetting, ...]
    seed: int = 0
    cascade: bool = False
    adaptive: bool = False
    randomness_passes: int = 2
    eot_draws: int = 20

    def settings(self) -> dict[str, Any]:
        """The settings as plain data (stored with every result); options at their defaults are left out."""
        settings = {"eps": self.eps, "seed": self.seed,
                    "attacks": {a.key: {"attack": a.attack, **dict(a.params)} for a in self.attacks}}
        options = {"cascade": self.cascade, "adaptive": self.adaptive, "randomness_passes": self.randomness_passes}
        defaults = {"cascade": False, "adaptive": False, "randomness_passes": 2}
        settings.update({k: v for k, v in options.items() if v != defaults[k]})
        if self.adaptive:
            settings["eot_draws"] = self.eot_draws
        return settings

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:8]


STANDARD_V1 = Protocol(
    name="standard-v1",
    eps=8 / 255,
    attacks=(
        AttackSetting("fgsm", "fgsm"),
        AttackSetting("pgd20", "pgd", (("steps", 20), ("rel_step", 0.25), ("random_start", True)),
                      at_most=("fgsm",)),
        AttackSetting("cw30", "cw-inf", (("steps", 30), ("rel_step", 0.25), ("random_start", True))),
    ),
)
STRONG_V1 = Protocol(
    name="strong-v1",
    eps=8 / 255,
    attacks=(
        AttackSetting("apgd-ce", "apgd-ce", (("steps", 100), ("restarts", 1))),
        AttackSetting("apgd-t", "apgd-t", (("steps", 100), ("restarts", 9))),
        AttackSetting("square", "square", (("queries", 5000), ("p_init", 0.8), ("rescale", False))),
    ),
    cascade=True,
    adaptive=True,
    randomness_passes=5,
)
PROTOCOLS = {p.name: p for p in (STANDARD_V1, STRONG_V1)}

#: Attack-failure indicators of an adaptive protocol (True: no sign of failure; None: not measurable).
INDICATORS = {
    "gradients_available": "the first attack found a finite, non-zero input gradient at its start",
    "loss_rises": "the first attack raised its loss above the starting point's",
    "forward_deterministic": "repeated forward passes give identical logits",
    "black_box_not_better": "the black-box attack broke what the white-box attacks left",
    "transfer_not_better": "examples from the undefended model broke what the white-box attacks left",
    "verdicts_confirmed": "no attack claimed a success that re-classification denies",
}
INDICATOR_POINTS = 0.5  # samples (in % of the test set) an indicator tolerates before it trips


def parse_eps(text: str | float) -> float:
    """ε from a number or a fraction such as ``8/255``; must lie in (0, 1]."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {text!r} is not a number or fraction like 8/255") from None
    if not 0 < value <= 1:
        raise ValueError(f"eps {text!r} must be in (0, 1] (inputs live in [0, 1])")
    return value


def get_protocol(name: str = "standard-v1", *, eps: float | None = None,
                 attacks: Sequence[str] = ()) -> Protocol:
    """A registered protocol, optionally with ε or the attack list changed.

    ``attacks`` are column keys of the base protocol (``fgsm``, ``pgd20``,
    ``cw30`` of ``standard-v1``; ``apgd-ce``, ``apgd-t``, ``square`` of
    ``strong-v1``), any registered attack name with its defaults, or
    ``ta:<Class>``.
    Changed settings yield the name ``<name>~<digest>``.
    """
    base_name = name.split("~")[0]
    if base_name not in PROTOCOLS:
        close = difflib.get_close_matches(base_name, list(PROTOCOLS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown protocol {name!r}; {hint}available: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[base_name]
    chosen = base.attacks
    if attacks:
        known = {a.key: a for a in base.attacks}
        chosen = tuple(known.get(key) or AttackSetting(key, key) for key in attacks)
        for setting in chosen:
            setting.build()  # unknown attack names fail here, with suggestions
    protocol = dataclasses.replace(base, eps=base.eps if eps is None else eps, attacks=chosen)
    if protocol.settings() != base.settings():
        protocol = dataclasses.replace(protocol, name=f"{base.name}~{protocol.digest()}")
    return protocol


def target_sets(modalities: Sequence[str], codes: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """Attack targets: each modality alone, then all together (``R``, ``S``, ``RS``).

    ``codes`` are the modalities' short codes as their dataset declares them
    (:class:`mmrobust.datasets.base.Modality`); a modality without one is
    coded by its upper-cased initial.

    Raises:
        ValueError: two modalities with the same code.
    """
    code = {m: (codes or {}).get(m) or m[:1].upper() for m in modalities}
    if len(set(code.values())) < len(code):
        raise ValueError(f"modalities must have distinct codes, got {code}")
    sets = {code[m]: (m,) for m in modalities}
    if len(modalities) > 1:
        sets["".join(code[m] for m in modalities)] = tuple(modalities)
    return sets


def ordering_checks(protocol: Protocol, metrics: Mapping[str, Any], targets: Mapping[str, Sequence[str]],
                    n: int, codes: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Sanity flags that follow from the protocol: within one sample of ``n``,

    * ``<attack>_le_<other>``: each attack is at most the ones it names in
      ``at_most`` (PGD ≤ FGSM), on every target;
    * ``<joint>_le_min``: per attack, attacking every modality at once is at
      most attacking any one of them (✗RS ≤ min(✗R, ✗S)). ``joint`` is the
      code of all the dataset's modalities (``codes``, default: the run's);
      a run of fewer modalities has nothing to compare and passes.
    """
    slack = 100.0 / max(n, 1)
    attacks = metrics["attacks"]
    by_key = {a.key: a for a in protocol.attacks}
    checks = {}
    for setting in protocol.attacks:
        for weaker in setting.at_most:
            if setting.key in attacks and weaker in attacks:
                checks[f"{setting.attack}_le_{by_key[weaker].attack}"] = all(
                    attacks[setting.key][t] <= attacks[weaker][t] + slack for t in targets)
    modalities = list(codes) if codes else sorted({m for members in targets.values() for m in members})
    if len(modalities) > 1:
        name = "".join(codes.values()) if codes else max(targets, key=len)
        joint = [code for code, members in targets.items() if set(members) == set(modalities)]
        singles = [code for code, members in targets.items() if len(members) == 1]
        checks[f"{name.lower()}_le_min"] = not joint or all(
            values[joint[0]] <= min(values[t] for t in singles) + slack for values in attacks.values())
    return checks


# "labels", "clean", "<cell>/<target>" -> per-sample arrays; "<cell>/<target>#checks" -> CHECKS of that cell,
# "#cost" -> [gradient passes, forward passes, seconds], "#diagnosis" -> DIAGNOSIS counts
Outcomes = MutableMapping[str, np.ndarray]
CHECKS = ("within_budget", "untargeted_untouched", "disagreements")
DIAGNOSIS = ("attacked", "no_gradient", "flat_loss")
ROW = "_row"  # not a modality: a sample's row in its chunk, carried by `take` into every sub-batch


@dataclass(frozen=True)
class Cell:
    """One column of an evaluation: an attack setting run against one module.

    ``against`` is ``"model"`` (the defended model), the name of one of the
    defense's views, ``"eot"`` or ``"transfer"``; the column is
    ``<setting.key>`` for the model and ``<setting.key>@<against>`` otherwise.
    """

    setting: AttackSetting
    against: str = "model"

    @property
    def key(self) -> str:
        return self.setting.key if self.against == "model" else f"{self.setting.key}@{self.against}"


@dataclass
class Evaluation:
    """Per-sample outcomes of one protocol run.

    ``clean[i]`` and ``robust[cell][target][i]`` are True where sample i is
    classified correctly. ``audit`` holds the sanity checks, ``cost`` the
    forward/backward passes spent and the wall time (``cells``: the same per
    column and target). ``disagreements`` counts the samples whose
    re-classified adversarial example contradicts the attack's own verdict (0
    for a sound attack on a deterministic model). ``indicators`` are the
    attack-failure indicators of an adaptive protocol (:data:`INDICATORS`),
    ``pinned`` the padding entries attacks could not move, per modality.
    """

    protocol: Protocol
    labels: np.ndarray
    clean: np.ndarray
    robust: dict[str, dict[str, np.ndarray]]
    audit: dict[str, bool] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    surrogate_used: bool = False
    disagreements: int = 0
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target code -> modalities attacked
    indicators: dict[str, bool | None] = field(default_factory=dict)
    cells: dict[str, dict[str, float]] = field(default_factory=dict)
    pinned: dict[str, dict[str, Any]] = field(default_factory=dict)


def evaluate(model: nn.Module, data: Split, protocol: Protocol = STANDARD_V1, *,
             modalities: Sequence[str] | None = None, batch_size: int = 64,
             device: torch.device | str = "cpu", surrogate: nn.Module | None = None,
             views: Mapping[str, nn.Module] | None = None, transfer: nn.Module | None = None,
             store: Outcomes | None = None, codes: Mapping[str, str] | None = None,
             padding: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
             sample_ids: np.ndarray | None = None, progress: bool = False, team: Team = SOLO) -> Evaluation:
    """Run ``protocol`` on every sample of ``data``.

    Args:
        model: takes the batch dict, returns logits or a ModelOutput.
        data: the test split.
        modalities: the model's inputs (default: the model's, else the split's).
        batch_size: samples run through the model at once. Each sample's
            random starts come from (protocol seed, sample index, restart), so
            outcomes depend on it only as far as the model's own rounding at
            another batch shape does.
        surrogate: a differentiable stand-in (BPDA). Non-adaptive protocols
            attack it with every attack; adaptive ones treat it as the view
            ``bpda``.
        views: adaptive protocols only: differentiable views of the model
            (name -> module; :meth:`mmrobust.defense.Defense.adaptive`).
        transfer: adaptive protocols only: an undefended model trained on the
            same data; its examples are judged on ``model``.
        store: where outcomes go as they are finished (``labels``, ``clean``,
            ``<cell>/<target>`` and that cell's checks); a cell already in it
            is not attacked again, so an interrupted evaluation resumes. The
            caller keys it to the model, data and protocol
            (:class:`mmrobust.results.OutcomeStore`). If its clean outcomes
            differ from the model's, it is emptied first.
        codes: the modalities' short codes, which name the targets
            (:func:`target_sets`; the dataset's ``DatasetBundle.codes``).
        padding: per modality, the rule that marks entries holding no input
            (``DatasetBundle.padding``); attacks see them pinned to their clean
            values.
        sample_ids: each sample's index in the split it was taken from (a
            test subset), which seeds its random starts in place of its
            position in ``data``: a sample's outcomes are then those the whole
            split gives it.
        team: the processes sharing the work (:mod:`mmrobust.distributed`).
            Each batch of the clean pass and each chunk of an attack goes to
            one rank, with the composition it has in a single process; the
            outcomes are gathered by sample index, so they are those of a
            single process bit for bit, and no sample is attacked twice. Only
            rank 0 reads and writes ``store``; the others work on its copy.

    Raises:
        ValueError: ``views`` or ``transfer`` with a protocol that is not adaptive; non-finite clean
            logits; an attack that cannot run on the model's number of classes.
    """
    device = torch.device(device)
    modalities = tuple(modalities or getattr(model, "modalities", ()) or data.modalities)
    targets = target_sets(modalities, codes)
    views = dict(views or {})
    if (views or transfer is not None) and not protocol.adaptive:
        raise ValueError(f"protocol {protocol.name!r} is not adaptive: it attacks no views and no transfer source "
                         f"(use {STRONG_V1.name!r})")
    if protocol.adaptive and surrogate is not None:
        views.setdefault("bpda", surrogate)
        surrogate = None
    padding = {m: rule for m, rule in (padding or {}).items() if m in modalities}
    if team.size > len(data):
        raise ValueError(f"{team.size} processes for {len(data)} test samples: start at most {len(data)}")
    ids = np.arange(len(data)) if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    if ids.shape != (len(data),):
        raise ValueError(f"{len(ids)} sample ids for {len(data)} samples")
    store = {} if store is None else store
    if team.size > 1:  # every rank skips the cells rank 0's store holds: rank 0's copy, on every rank
        copy = team.broadcast(dict(store) if team.main else None)
        store = store if team.main else copy
    started = time.perf_counter()

    with _frozen_eval(model, surrogate, transfer, *views.values()):
        clean_logits, labels = _clean_logits(model, data, modalities, batch_size, device, team, "clean")
        if not torch.isfinite(clean_logits).all():
            bad = int((~torch.isfinite(clean_logits)).any(dim=1).sum())
            raise ValueError(f"the model returns non-finite logits for {bad} of {len(labels)} clean samples; "
                             "no accuracy can be measured on them")
        clean = (clean_logits.argmax(1) == labels).numpy()
        _start_store(store, labels.numpy(), clean)
        surrogate_logits = (_clean_logits(surrogate, data, modalities, batch_size, device, team, "surrogate")[0]
                            if surrogate is not None else None)
        cost = {"gradient_passes": 0, "forward_passes": len(data) * (2 if surrogate is not None else 1)}
        audit = _sanity_checks(model, data, modalities, device, cost, protocol)
        cells = _cells(protocol, views, audit["forward_deterministic"], transfer is not None)
        for setting in protocol.attacks:  # an attack that cannot run here fails before any attack ran
            setting.build().check_classes(clean_logits.shape[1])
        modules = {"model": model, "eot": _Expectation(model, protocol.eot_draws), "transfer": transfer, **views}
        tally = _Tally(clean, protocol.cascade, audit, cost)
        with _progress(len(cells) * len(targets) * len(data), progress and team.main) as bar:
            for cell in cells:
                for code, members in targets.items():
                    key = f"{cell.key}/{code}"
                    outcome = _stored(store, key)
                    if outcome is None:
                        candidates = tally.candidates(code)
                        outcome = _attack_cell(model, modules[cell.against], cell, surrogate, members, data,
                                               candidates, ids, modalities, protocol, clean_logits, surrogate_logits,
                                               batch_size, device, padding, bar, team)
                        _keep(store, key, outcome)
                        bar.update(len(data) - len(candidates))  # the attacked ones were counted as they went
                    else:
                        bar.update(len(data))
                    tally.add(cell, code, outcome, first=cell == cells[0])
        pinned = _pinned_counts(data, modalities, padding, batch_size)
    audit["verdicts_confirmed"] = tally.disagreements == 0
    cost["seconds"] = time.perf_counter() - started
    evaluation = Evaluation(protocol, labels.numpy(), clean, tally.robust, audit, cost, surrogate is not None,
                            tally.disagreements, targets, cells=tally.cells, pinned=pinned)
    if protocol.adaptive:
        evaluation.indicators = _indicators(evaluation, cells, tally.diagnosis)
    return evaluation


# -- the plumbing of evaluate ----------------------------------------------------------------------------

@dataclass
class _CellOutcome:
    robust: np.ndarray  # (n,) bool: robust in this cell (not attacked: False)
    checks: np.ndarray  # CHECKS
    cost: np.ndarray  # gradient passes, forward passes, seconds
    diagnosis: np.ndarray  # DIAGNOSIS


def _start_store(store: Outcomes, labels: np.ndarray, clean: np.ndarray) -> None:
    if "clean" in store and not np.array_equal(store["clean"], clean):
        log.warning("the stored clean outcomes differ from this model's (another device or thread count?); "
                    "evaluating every cell afresh")
        store.clear()
    store["labels"], store["clean"] = labels, clean


def _stored(store: Outcomes, key: str) -> _CellOutcome | None:
    """A finished cell from the store (one stored before costs were kept has zero cost and diagnosis)."""
    robust, checks = store.get(key), store.get(f"{key}#checks")
    if robust is None or checks is None:
        return None
    return _CellOutcome(robust, checks, np.asarray(store.get(f"{key}#cost", np.zeros(3)), dtype=np.float64),
                        np.asarray(store.get(f"{key}#diagnosis", np.zeros(len(DIAGNOSIS))), dtype=np.int64))


def _keep(store: Outcomes, key: str, outcome: _CellOutcome) -> None:
    # Side entries first: a cell counts as done only once its outcomes follow.
    store[f"{key}#cost"] = outcome.cost
    store[f"{key}#diagnosis"] = outcome.diagnosis
    store[f"{key}#checks"] = outcome.checks
    store[key] = outcome.robust


class _Tally:
    """What the cells add up to: outcomes per column and target (cumulative in a cascade), checks, cost."""

    def __init__(self, clean: np.ndarray, cascade: bool, audit: dict[str, bool], cost: dict[str, float]) -> None:
        self.clean, self.cascade, self.audit, self.cost = clean, cascade, audit, cost
        self.robust: dict[str, dict[str, np.ndarray]] = {}
        self.alive: dict[str, np.ndarray] = {}  # per target: robust after every cell so far
        self.cells: dict[str, dict[str, float]] = {}
        self.diagnosis = {name: 0 for name in DIAGNOSIS}
        self.disagreements = 0

    def candidates(self, code: str) -> np.ndarray:
        """The samples a cell on target ``code`` attacks: all, or in a cascade those still robust."""
        if not self.cascade:
            return np.arange(len(self.clean))
        return np.flatnonzero(self.alive.get(code, self.clean))

    def add(self, cell: Cell, code: str, outcome: _CellOutcome, first: bool) -> None:
        robust = outcome.robust
        if self.cascade:
            robust = self.alive[code] = robust & self.alive.get(code, self.clean)
        self.robust.setdefault(cell.key, {})[code] = robust
        checked = dict(zip(CHECKS, outcome.checks.tolist()))
        for name in CHECKS[:2]:
            self.audit[name] = self.audit.get(name, True) and bool(checked[name])
        self.disagreements += int(checked["disagreements"])
        self.cells[f"{cell.key}/{code}"] = dict(zip(("gradient_passes", "forward_passes", "seconds"),
                                                    outcome.cost.tolist()))
        self.cost["gradient_passes"] += int(outcome.cost[0])
        self.cost["forward_passes"] += int(outcome.cost[1])
        if first:  # the indicators' gradient and loss checks read the first attack, on every target
            for name, count in zip(DIAGNOSIS, outcome.diagnosis.tolist()):
                self.diagnosis[name] += count


@contextlib.contextmanager
def _progress(total: int, shown: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=None if shown else True, unit="clip", desc="evaluating", dynamic_ncols=True,
               leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _cells(protocol: Protocol, views: Mapping[str, nn.Module], deterministic: bool,
           transfer: bool) -> list[Cell]:
    """The columns in the order they run: the protocol's gradient attacks, then (adaptive protocols) the
    first of them against each view, an expectation over the randomised forward and the transfer
    source, then the gradient-free attacks."""
    gradient = [Cell(s) for s in protocol.attacks if not _gradient_free(s)]
    free = [Cell(s) for s in protocol.attacks if _gradient_free(s)]
    adaptive = []
    if protocol.adaptive and gradient:
        first = gradient[0].setting
        adaptive = [Cell(first, name) for name in views]
        if not deterministic:
            adaptive.append(Cell(first, "eot"))
        if transfer:
            adaptive.append(Cell(first, "transfer"))
    return gradient + adaptive + free


def _gradient_free(setting: AttackSetting) -> bool:
    return bool(getattr(setting.build(), "gradient_free", False))


def _indicators(evaluation: Evaluation, cells: Sequence[Cell], diagnosis: Mapping[str, int]) -> dict[str, bool | None]:
    """The attack-failure indicators (:data:`INDICATORS`) of a finished adaptive evaluation."""
    n = len(evaluation.labels)
    allowed = INDICATOR_POINTS / 100 * n

    def broken_by(kind: Callable[[Cell], bool]) -> int:
        """The most samples, over targets, that cells of ``kind`` broke after the cells before them."""
        worst = 0
        for code in evaluation.targets:
            before = evaluation.clean
            broken = 0
            for cell in cells:
                after = evaluation.robust[cell.key][code]
                if kind(cell):
                    broken += int(before.sum() - after.sum())
                before = after
            worst = max(worst, broken)
        return worst

    transfer = [c for c in cells if c.against == "transfer"]
    return {
        "gradients_available": diagnosis["no_gradient"] <= allowed,
        "loss_rises": diagnosis["flat_loss"] <= allowed,
        "forward_deterministic": bool(evaluation.audit["forward_deterministic"]),
        "black_box_not_better": broken_by(lambda c: c.against == "model" and _gradient_free(c.setting)) <= allowed,
        "transfer_not_better": broken_by(lambda c: c.against == "transfer") <= allowed if transfer else None,
        "verdicts_confirmed": evaluation.disagreements == 0,
    }


def _attack_cell(model, attacked, cell, surrogate, targets, data, candidates, ids, modalities, protocol, clean_logits,
                 surrogate_logits, batch_size, device, padding, bar, team) -> _CellOutcome:
    """Robust (True) / fooled (False) per sample for one attack on one target set, and the cell's checks.

    Only ``candidates`` are attacked; every other sample counts as fooled. ``ids`` (per sample of ``data``)
    seed the random starts.
    ``attacked`` is the module the attack follows (the model, a view, the
    transfer source); a sample counts as fooled only if the model, run again on
    the example the attack returned, misclassifies it (as RobustBench does). The
    checks (:data:`CHECKS`): every example inside the budget, untargeted inputs
    untouched, and the number of samples whose re-classified verdict differs
    from the attack's own (for attacks that follow the model itself). Each
    chunk of candidates is attacked by one rank of ``team``.
    """
    started = time.perf_counter()
    attack = cell.setting.build()
    own_logits = cell.against == "model"
    # Samples stream through the attack's pool of batch_size; a chunk of several
    # batches keeps the pool full while early-stopped samples leave.
    chunk = batch_size * CHUNK_BATCHES
    parts = {}
    for start in team.mine(range(0, len(candidates), chunk)):
        index = candidates[start:start + chunk]
        within, untouched, disagreements = True, True, 0
        spent = np.zeros(2)
        diagnosis = np.zeros(len(DIAGNOSIS), dtype=np.int64)
        batch = _to(data.batch(index, modalities), device)
        starts = RandomStarts(protocol.seed, torch.from_numpy(ids[index]))
        pin = _Pin(batch, targets, padding)
        logits = clean_logits[index].to(device) if own_logits else None
        result = attack(pin.wrap(attacked), pin.batch, targets, protocol.eps, clean_logits=logits, starts=starts,
                        max_batch=batch_size)
        examples = pin.restore(result.batch)
        fooled = _predict(model, examples, batch_size) != batch["label"]
        if own_logits:
            disagreements += int((fooled != result.fooled).sum())
        ok = _audit_batch(data, index, modalities, batch, examples, targets, protocol.eps, batch_size, device)
        within, untouched = within and ok[0], untouched and ok[1]
        spent += (result.gradient_passes, result.forward_passes + len(index))
        attacked_here = (logits.argmax(1) == batch["label"]) if own_logits else torch.ones_like(result.fooled)
        diagnosis[0] += int(attacked_here.sum())
        for position, flags in ((1, result.no_gradient), (2, result.flat_loss)):
            if flags is not None:
                diagnosis[position] += int((flags & attacked_here).sum())
        if surrogate is not None and cell.against == "model":
            transfer = attack(pin.wrap(surrogate), pin.batch, targets, protocol.eps,
                              clean_logits=surrogate_logits[index].to(device), starts=starts, max_batch=batch_size)
            transferred = pin.restore(transfer.batch)
            ok = _audit_batch(data, index, modalities, batch, transferred, targets, protocol.eps, batch_size,
                              device)
            within, untouched = within and ok[0], untouched and ok[1]
            fooled = fooled | (_predict(model, transferred, batch_size) != batch["label"])
            spent += (transfer.gradient_passes, transfer.forward_passes + len(index))
        robust = ~fooled.cpu().numpy() & (clean_logits[index].argmax(1) == batch["label"].cpu()).numpy()
        parts[start] = (robust, (within, untouched, disagreements), spent, diagnosis)
        bar.update(len(index))
    mine = sum(len(candidates[start:start + chunk]) for start in parts)
    parts = team.gather(parts, tag=f"{cell.key}/{'+'.join(targets)}")
    bar.update(len(candidates) - mine)
    robust = np.zeros(len(data), dtype=bool)
    for start, (outcome, *_) in parts.items():
        robust[candidates[start:start + chunk]] = outcome
    checks = [part[1] for part in parts.values()]
    checks = np.array([all(c[0] for c in checks), all(c[1] for c in checks), sum(c[2] for c in checks)],
                      dtype=np.int64)
    spent = np.array([*sum((part[2] for part in parts.values()), np.zeros(2)), time.perf_counter() - started])
    diagnosis = sum((part[3] for part in parts.values()), np.zeros(len(DIAGNOSIS), dtype=np.int64))
    return _CellOutcome(robust, checks, spent, diagnosis)


class _Pin:
    """A chunk's padding entries (:attr:`Modality.padding`), pinned to their clean values for the attack.

    Without padding among the targets, everything passes through unchanged.
    Otherwise the attack gets the batch with an integer ``_row`` per sample
    and a model that overwrites the padding entries of its inputs with the
    clean ones (so they get no gradient and no query sees them); the examples
    it returns get the clean values back there.
    """

    def __init__(self, batch: Mapping[str, torch.Tensor], targets: Sequence[str],
                 padding: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.clean = batch
        self.masks = {}
        for m in targets:
            if m in padding:
                mask = padding[m](batch[m])
                if bool(mask.any()):
                    self.masks[m] = mask
        size = len(batch["label"])
        self.batch = {**batch, ROW: torch.arange(size, device=batch["label"].device)} if self.masks else batch

    def wrap(self, module: nn.Module) -> nn.Module:
        return _Pinned(module, self.clean, self.masks) if self.masks else module

    def restore(self, examples: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        restored = {k: v for k, v in examples.items() if k != ROW}
        for m, mask in self.masks.items():
            restored[m] = torch.where(mask, self.clean[m], restored[m])
        return restored


class _Pinned(nn.Module):
    """``module`` with the padding entries of its inputs replaced by the chunk's clean values."""

    def __init__(self, module: nn.Module, clean: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]):
        super().__init__()
        self.module, self.clean, self.masks = module, clean, masks

    def forward(self, batch: Mapping[str, torch.Tensor]):
        rows = batch[ROW]
        inputs = {k: v for k, v in batch.items() if k != ROW}
        for m, mask in self.masks.items():
            inputs[m] = torch.where(mask[rows], self.clean[m][rows], inputs[m])
        return self.module(inputs)


class _Expectation(nn.Module):
    """The mean logits of ``draws`` forward passes: the gradient of a randomised model in expectation
    (EOT; Athalye, Carlini & Wagner, ICML 2018)."""

    def __init__(self, module: nn.Module, draws: int):
        super().__init__()
        self.module, self.draws = module, draws

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([logits_of(self.module(batch)) for _ in range(self.draws)]).mean(0)


def _pinned_counts(data: Split, modalities, padding, batch_size: int) -> dict[str, dict[str, Any]]:
    """Per modality with a padding rule: what the rule masks and how many entries of the test set it masked."""
    counts = {}
    for m, rule in padding.items():
        masked = total = 0
        for batch in data.batches(batch_size, modalities=(m,)):
            x = batch[m]
            masked += int(rule(x).expand_as(x).sum())
            total += x.numel()
        doc = (rule.__doc__ or rule.__name__).strip().splitlines()[0]
        counts[m] = {"rule": doc, "entries": masked, "of": total}
    return counts


@torch.no_grad()
def _predict(model: nn.Module, batch: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    parts = [logits_of(model(take(batch, slice(start, start + batch_size)))).argmax(1)
             for start in range(0, len(batch["label"]), batch_size)]
    return torch.cat(parts)


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _clean_logits(model: nn.Module, data: Split, modalities, batch_size: int, device,
                  team: Team = SOLO, tag: str = "clean") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every sample, in order; each batch is run by one rank of ``team``."""
    parts = {}
    for start in team.mine(range(0, len(data), batch_size)):
        batch = data.batch(np.arange(start, min(start + batch_size, len(data))), modalities)
        parts[start] = (logits_of(model(_to(batch, device))).float().cpu(), batch["label"])
    parts = team.gather(parts, tag=tag)
    ordered = [parts[start] for start in sorted(parts)]
    return torch.cat([logits for logits, _ in ordered]), torch.cat([labels for _, labels in ordered])


class _frozen_eval:
    """Eval mode and no parameter gradients for the duration, for every module given (None skipped);
    each module's mode and flags restored after."""

    def __init__(self, *modules: nn.Module | None):
        self.modules = [m for m in modules if m is not None]

    def __enter__(self):
        self.saved = []
        for module in self.modules:  # shared parameters: the first save holds their original flags
            self.saved.append((module, module.training, [p.requires_grad for p in module.parameters()]))
            module.eval().requires_grad_(False)

    def __exit__(self, *exc):
        for module, training, flags in reversed(self.saved):
            module.train(training)
            for p, flag in zip(module.parameters(), flags):
                p.requires_grad_(flag)


def _audit_batch(data: Split, index: np.ndarray, modalities, given: Mapping[str, torch.Tensor],
                 adversarial: Mapping[str, torch.Tensor], targets: Sequence[str], eps: float, batch_size: int,
                 device) -> tuple[bool, bool]:
    """Against a fresh copy of the clean inputs: every perturbation inside its ball and [0, 1];
    untargeted inputs bit-identical; and the input the attack was given not changed in place."""
    within, untouched = True, True
    for start in range(0, len(index), batch_size):
        part = slice(start, start + batch_size)
        clean = _to(data.batch(index[part], modalities), device)
        for m in modalities:
            returned = adversarial[m][part]
            if m in targets:
                within &= (float((returned - clean[m]).abs().max()) <= eps + 1e-6
                           and float(returned.min()) >= 0.0 and float(returned.max()) <= 1.0)
            else:
                untouched &= torch.equal(returned, clean[m])
            untouched &= torch.equal(given[m][part], clean[m])
    return bool(within), bool(untouched)


def _sanity_checks(model: nn.Module, data: Split, modalities, device, cost: dict[str, float],
                   protocol: Protocol) -> dict[str, bool]:
    """Checks on the first batch that expose broken or gradient-masked models (passes added to ``cost``):
    ``protocol.randomness_passes`` forward passes must agree bit for bit, the input gradient must be
    finite and non-zero, and a huge budget must break the model."""
    batch = _to(data.batch(np.arange(min(32, len(data))), modalities), device)
    n = len(batch["label"])
    with torch.no_grad():
        first = logits_of(model(batch))
        deterministic = all(torch.equal(first, logits_of(model(batch))) for _ in range(protocol.randomness_passes - 1))
    with torch.enable_grad():
        leaves = {m: batch[m].clone().requires_grad_(True) for m in modalities}
        loss = torch.nn.functional.cross_entropy(logits_of(model({**batch, **leaves})), batch["label"])
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    gradients_ok = all(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
    # A large budget must break any model; if it does not, gradients are masked.
    huge = SignGradientAttack(Schedule(steps=10, rel_step=0.25))(model, batch, modalities, 0.5,
                                                                 starts=RandomStarts.numbered(n, protocol.seed))
    cost["forward_passes"] += protocol.randomness_passes * n + huge.forward_passes
    cost["gradient_passes"] += n + huge.gradient_passes
    return {"forward_deterministic": deterministic, "gradients_finite_nonzero": gradients_ok,
            "huge_eps_breaks_model": bool(result_accuracy(huge.fooled) <= 10.0)}


def result_accuracy(fooled: torch.Tensor) -> float:
    return 100.0 * float((~fooled).float().mean())
