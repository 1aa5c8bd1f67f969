"""The evaluation protocol: what the benchmark measures, and how.

``standard-v1`` reproduces the AMR paper's evaluation (Sec. 4.2, Table 2):

* clean accuracy of the fused model (✓RS);
* FGSM (ε = 8/255), PGD-20 (ε = 8/255, α = 2/255, random start) and CW∞
  (PGD-30 on the margin loss, ε = 8/255, α = 2/255), white-box;
* each attack on RGB only (R), skeleton only (S) and both (RS).

The model is in eval mode and the test clips are fixed. Every outcome is kept
per sample, so any aggregate (Avg, RI, the worst case over attacks, confidence
intervals) is recomputed from them by :mod:`mmrobust.metrics`.

Cost is kept down without changing any number: one clean forward per sample is
shared by every cell, a sample misclassified clean is never attacked, and a
sample leaves an attack at the step that fools it, keeping that example (exact
for robust accuracy). A defense that ships a differentiable surrogate (BPDA) is
attacked through both the model and the surrogate; a sample counts as robust
only if it survives both.

A protocol with changed settings gets another name (``standard-v1~<digest>``),
so its numbers are never ranked against ``standard-v1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from mmrobust.attack import RandomStarts, build_attack, take
from mmrobust.datasets.base import Split
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
    """A named, versioned evaluation suite."""

    name: str
    eps: float
    attacks: tuple[AttackSetting, ...]
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The settings as plain data (stored with every result)."""
        return {"eps": self.eps, "seed": self.seed,
                "attacks": {a.key: {"attack": a.attack, **dict(a.params)} for a in self.attacks}}

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
PROTOCOLS = {STANDARD_V1.name: STANDARD_V1}


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
    ``cw30``), any registered attack name with its defaults, or ``ta:<Class>``.
    Changed settings yield the name ``<name>~<digest>``.
    """
    base_name = name.split("~")[0]
    if base_name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[base_name]
    chosen = base.attacks
    if attacks:
        known = {a.key: a for a in base.attacks}
        chosen = tuple(known.get(key) or AttackSetting(key, key) for key in attacks)
        for setting in chosen:
            setting.build()  # unknown attack names fail here, with suggestions
    protocol = Protocol(base.name, base.eps if eps is None else eps, chosen, base.seed)
    if protocol.settings() != base.settings():
        protocol = Protocol(f"{base.name}~{protocol.digest()}", protocol.eps, protocol.attacks, protocol.seed)
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


# "labels", "clean", "<attack>/<target>" -> per-sample arrays; "<attack>/<target>#checks" -> CHECKS of that cell
Outcomes = MutableMapping[str, np.ndarray]
CHECKS = ("within_budget", "untargeted_untouched", "disagreements")


@dataclass
class Evaluation:
    """Per-sample outcomes of one protocol run.

    ``clean[i]`` and ``robust[attack][target][i]`` are True where sample i is
    classified correctly. ``audit`` holds the sanity checks, ``cost`` the
    forward/backward passes spent and the wall time. ``disagreements`` counts
    the samples whose re-classified adversarial example contradicts the
    attack's own verdict (0 for a sound attack on a deterministic model).
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


def evaluate(model: nn.Module, data: Split, protocol: Protocol = STANDARD_V1, *,
             modalities: Sequence[str] | None = None, batch_size: int = 64,
             device: torch.device | str = "cpu", surrogate: nn.Module | None = None,
             store: Outcomes | None = None, codes: Mapping[str, str] | None = None,
             progress: bool = False) -> Evaluation:
    """Run ``protocol`` on every sample of ``data``.

    Args:
        model: takes the batch dict, returns logits or a ModelOutput.
        data: the test split.
        modalities: the model's inputs (default: the model's, else the split's).
        batch_size: samples run through the model at once. Each sample's
            random starts come from (protocol seed, sample index, restart), so
            outcomes depend on it only as far as the model's own rounding at
            another batch shape does.
        surrogate: a differentiable stand-in (BPDA); attacked as well.
        store: where outcomes go as they are finished (``labels``, ``clean``,
            ``<attack>/<target>`` and that cell's checks); a cell already in it
            is not attacked again, so an interrupted evaluation resumes. The
            caller keys it to the model, data and protocol
            (:class:`mmrobust.results.OutcomeStore`). If its clean outcomes
            differ from the model's, it is emptied first.
        codes: the modalities' short codes, which name the targets
            (:func:`target_sets`; the dataset's ``DatasetBundle.codes``).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    modalities = tuple(modalities or getattr(model, "modalities", ()) or data.modalities)
    targets = target_sets(modalities, codes)
    cells = [(setting, code) for setting in protocol.attacks for code in targets]
    store = {} if store is None else store
    started = time.perf_counter()

    with _frozen_eval(model), _frozen_eval(surrogate):
        clean_logits, labels = _clean_logits(model, data, modalities, batch_size, device)
        clean = (clean_logits.argmax(1) == labels).numpy()
        if "clean" in store and not np.array_equal(store["clean"], clean):
            log.warning("the stored clean outcomes differ from this model's (another device or thread count?); "
                        "evaluating every cell afresh")
            store.clear()
        store["labels"], store["clean"] = labels.numpy(), clean
        surrogate_logits = (_clean_logits(surrogate, data, modalities, batch_size, device)[0]
                            if surrogate is not None else None)
        cost = {"gradient_passes": 0, "forward_passes": len(data) * (2 if surrogate is not None else 1)}
        audit = _sanity_checks(model, data, modalities, device, cost, protocol.seed)
        bar = tqdm(total=len(cells) * len(data), disable=None if progress else True, unit="clip",
                   desc="evaluating", dynamic_ncols=True, leave=False)
        robust: dict[str, dict[str, np.ndarray]] = {}
        disagreements = 0
        for setting, code in cells:
            key = f"{setting.key}/{code}"
            done, checks = store.get(key), store.get(f"{key}#checks")
            if done is None or checks is None:
                done, checks = _attack_cell(model, surrogate, setting, targets[code], data, modalities, protocol,
                                            clean_logits, surrogate_logits, batch_size, device, cost, bar)
                store[f"{key}#checks"] = checks  # first: a cell counts as done only once its outcomes follow
                store[key] = done
            else:
                bar.update(len(data))
            robust.setdefault(setting.key, {})[code] = done
            checked = dict(zip(CHECKS, checks.tolist()))
            for name in CHECKS[:2]:
                audit[name] = audit.get(name, True) and bool(checked[name])
            disagreements += int(checked["disagreements"])
        bar.close()
    audit["verdicts_confirmed"] = disagreements == 0
    cost["seconds"] = time.perf_counter() - started
    return Evaluation(protocol, labels.numpy(), clean, robust, audit, cost, surrogate is not None, disagreements,
                      targets)


def _attack_cell(model, surrogate, setting, targets, data, modalities, protocol, clean_logits, surrogate_logits,
                 batch_size, device, cost, bar) -> tuple[np.ndarray, np.ndarray]:
    """Robust (True) / fooled (False) per sample for one attack on one target set, and the cell's checks.

    A sample counts as fooled only if the model, run again on the example the
    attack returned, misclassifies it (as RobustBench does). The checks
    (:data:`CHECKS`): every example inside the budget, untargeted inputs
    untouched, and the number of samples whose re-classified verdict differs
    from the attack's own.
    """
    attack = setting.build()
    robust = np.zeros(len(data), dtype=bool)
    within, untouched, disagreements = True, True, 0
    # Samples stream through the attack's pool of batch_size; a chunk of several
    # batches keeps the pool full while early-stopped samples leave.
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, len(data), chunk):
        index = np.arange(start, min(start + chunk, len(data)))
        batch = _to(data.batch(index, modalities), device)
        starts = RandomStarts(protocol.seed, torch.from_numpy(index))
        result = attack(model, batch, targets, protocol.eps, clean_logits=clean_logits[index].to(device),
                        starts=starts, max_batch=batch_size)
        fooled = _predict(model, result.batch, batch_size) != batch["label"]
        disagreements += int((fooled != result.fooled).sum())
        ok = _audit_batch(data, index, modalities, batch, result.batch, targets, protocol.eps, batch_size, device)
        within, untouched = within and ok[0], untouched and ok[1]
        cost["gradient_passes"] += result.gradient_passes
        cost["forward_passes"] += result.forward_passes + len(index)
        if surrogate is not None:
            transfer = attack(surrogate, batch, targets, protocol.eps,
                              clean_logits=surrogate_logits[index].to(device), starts=starts, max_batch=batch_size)
            ok = _audit_batch(data, index, modalities, batch, transfer.batch, targets, protocol.eps, batch_size,
                              device)
            within, untouched = within and ok[0], untouched and ok[1]
            fooled = fooled | (_predict(model, transfer.batch, batch_size) != batch["label"])
            cost["gradient_passes"] += transfer.gradient_passes
            cost["forward_passes"] += transfer.forward_passes + len(index)
        robust[index] = ~fooled.cpu().numpy() & (clean_logits[index].argmax(1) == batch["label"].cpu()).numpy()
        bar.update(len(index))
    return robust, np.array([within, untouched, disagreements], dtype=np.int64)


@torch.no_grad()
def _predict(model: nn.Module, batch: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    parts = [logits_of(model(take(batch, slice(start, start + batch_size)))).argmax(1)
             for start in range(0, len(batch["label"]), batch_size)]
    return torch.cat(parts)


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _clean_logits(model: nn.Module, data: Split, modalities, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = [], []
    for batch in data.batches(batch_size, modalities=modalities):
        logits.append(logits_of(model(_to(batch, device))).float().cpu())
        labels.append(batch["label"])
    return torch.cat(logits), torch.cat(labels)


class _frozen_eval:
    """Eval mode and no parameter gradients for the duration; both restored after."""

    def __init__(self, model: nn.Module | None):
        self.model = model

    def __enter__(self):
        if self.model is not None:
            self.training = self.model.training
            self.flags = [p.requires_grad for p in self.model.parameters()]
            self.model.eval().requires_grad_(False)

    def __exit__(self, *exc):
        if self.model is not None:
            self.model.train(self.training)
            for p, flag in zip(self.model.parameters(), self.flags):
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
                   seed: int) -> dict[str, bool]:
    """Checks on the first batch that expose broken or gradient-masked models (passes added to ``cost``)."""
    batch = _to(data.batch(np.arange(min(32, len(data))), modalities), device)
    with torch.no_grad():
        deterministic = torch.equal(logits_of(model(batch)), logits_of(model(batch)))
    with torch.enable_grad():
        leaves = {m: batch[m].clone().requires_grad_(True) for m in modalities}
        loss = torch.nn.functional.cross_entropy(logits_of(model({**batch, **leaves})), batch["label"])
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    gradients_ok = all(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
    # A large budget must break any model; if it does not, gradients are masked.
    n = len(batch["label"])
    huge = SignGradientAttack(Schedule(steps=10, rel_step=0.25))(model, batch, modalities, 0.5,
                                                                 starts=RandomStarts.numbered(n, seed))
    cost["forward_passes"] += 2 * n + huge.forward_passes
    cost["gradient_passes"] += n + huge.gradient_passes
    return {"forward_deterministic": deterministic, "gradients_finite_nonzero": gradients_ok,
            "huge_eps_breaks_model": bool(result_accuracy(huge.fooled) <= 10.0)}


def result_accuracy(fooled: torch.Tensor) -> float:
    return 100.0 * float((~fooled).float().mean())
