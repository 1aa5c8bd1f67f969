"""Every sanity flag of the protocol trips on a model or attack built to trip it, and stays up otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from mmrobust.attack import Attack, AttackResult, clean_fooled
from mmrobust.datasets.base import Split
from mmrobust.protocol import STANDARD_V1, AttackSetting, Protocol, evaluate, ordering_checks, target_sets
from mmrobust.registry import ATTACKS

SHAPES = {"rgb": (3, 2, 4, 4), "skeleton": (3, 4, 5, 1)}
CLASSES = 3
EPS = 8 / 255
PGD = Protocol("flags", EPS, (AttackSetting("pgd", "pgd", (("steps", 5), ("rel_step", 0.25))),))


class Linear(nn.Module):
    """A fused linear classifier; ``mode`` breaks it in one of the ways the flags look for."""

    modalities = ("rgb", "skeleton")

    def __init__(self, mode: str = "sound"):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.weights = nn.ModuleDict({m: nn.Linear(int(np.prod(s)), CLASSES) for m, s in SHAPES.items()})

    def forward(self, batch):
        inputs = {m: batch[m] for m in self.modalities}
        if self.mode == "masked":  # quantised inputs: zero gradient everywhere
            inputs = {m: torch.round(x * 4) / 4 for m, x in inputs.items()}
        if self.mode == "mutating":  # writes into the caller's tensors
            with torch.no_grad():
                batch["skeleton"].mul_(0.5)
        logits = sum(self.weights[m](x.flatten(1)) for m, x in inputs.items())
        if self.mode == "stochastic":
            logits = logits + 0.5 * torch.randn_like(logits)
        return logits


def data_for(model: nn.Module, n: int = 16) -> Split:
    """Clips the model classifies correctly (labels are its own predictions)."""
    rng = np.random.default_rng(0)
    arrays = {m: rng.random((n, *s), dtype=np.float32) for m, s in SHAPES.items()}
    with torch.no_grad():
        mode, model.mode = model.mode, "sound"
        labels = model({m: torch.from_numpy(a) for m, a in arrays.items()}).argmax(1).numpy()
        model.mode = mode
    return Split({**arrays, "label": labels.astype(np.int64)})


def flags(model: nn.Module, protocol: Protocol = PGD) -> dict[str, bool]:
    return evaluate(model, data_for(model), protocol, batch_size=8).audit


def test_a_sound_model_and_attack_raise_no_flag():
    audit = flags(Linear())
    assert audit == {"forward_deterministic": True, "gradients_finite_nonzero": True,
                     "huge_eps_breaks_model": True, "within_budget": True, "untargeted_untouched": True,
                     "verdicts_confirmed": True}


def test_stochastic_forward_trips_forward_deterministic():
    assert flags(Linear("stochastic"))["forward_deterministic"] is False


def test_zero_gradients_trip_the_gradient_and_huge_eps_flags():
    audit = flags(Linear("masked"))
    assert audit["gradients_finite_nonzero"] is False
    assert audit["huge_eps_breaks_model"] is False


def test_a_model_that_writes_into_its_inputs_trips_untargeted_untouched():
    assert flags(Linear("mutating"))["untargeted_untouched"] is False


@dataclass(frozen=True)
class NoParams:
    pass


class Broken(Attack):
    """Moves every target by 2ε (``leave``), touches the untargeted modality (``touch``),
    or claims every sample fooled while returning the clean input (``lie``)."""

    Params = NoParams
    how = ""

    def __call__(self, model, batch, targets, eps, *, clean_logits=None, starts=None, max_batch=None):
        fooled, _ = clean_fooled(model, batch, clean_logits)
        out = dict(batch)
        if self.how == "leave":
            out.update({m: (batch[m] + 2 * eps).clamp(0, 1) for m in targets})
        if self.how == "touch":
            out.update({m: batch[m] * 0.99 for m in batch if m != "label" and m not in targets})
        if self.how == "lie":
            fooled = torch.ones_like(fooled)
        return AttackResult(out, fooled)


@pytest.mark.parametrize("how, flag", [("leave", "within_budget"), ("touch", "untargeted_untouched"),
                                       ("lie", "verdicts_confirmed")])
def test_a_broken_attack_trips_its_flag(how, flag):
    with ATTACKS.scoped():
        ATTACKS.register(f"broken-{how}")(type(f"Broken{how}", (Broken,), {"how": how}))
        protocol = Protocol("flags", EPS, (AttackSetting("broken", f"broken-{how}"),))
        evaluation = evaluate(Linear(), data_for(Linear()), protocol, batch_size=8)
    assert evaluation.audit[flag] is False
    if how == "lie":  # the re-classified verdict counts, not the attack's claim
        assert all(evaluation.audit[k] for k in evaluation.audit if k != flag), evaluation.audit
        assert evaluation.disagreements == 3 * 16  # every sample of R, S and RS
        assert all(robust.all() for robust in evaluation.robust["broken"].values())


def metrics(fgsm: tuple[float, float, float], pgd: tuple[float, float, float]) -> dict:
    return {"attacks": {"fgsm": dict(zip(("R", "S", "RS"), fgsm)), "pgd20": dict(zip(("R", "S", "RS"), pgd))}}


def test_ordering_flags_follow_the_protocol_and_trip_on_inconsistent_accuracies():
    targets = target_sets(("rgb", "skeleton"))

    def checks(fgsm, pgd):
        return ordering_checks(STANDARD_V1, metrics(fgsm, pgd), targets, n=100)

    assert checks((50, 60, 40), (30, 40, 20)) == {"pgd_le_fgsm": True, "rs_le_min": True}
    assert checks((50, 60, 40), (55, 40, 20))["pgd_le_fgsm"] is False
    assert checks((50, 60, 40), (30, 40, 35))["rs_le_min"] is False
    assert checks((50, 60, 40), (50.5, 40, 20))["pgd_le_fgsm"] is True  # within one sample


def test_ordering_flags_are_named_by_the_protocols_attacks_and_the_modality_codes():
    protocol = Protocol("p", EPS, (AttackSetting("weak", "fgsm"), AttackSetting("strong", "cw-inf", at_most=("weak",))))
    targets = target_sets(("rgb", "depth"), {"depth": "D"})
    values = {"attacks": {"weak": {"R": 50, "D": 60, "RD": 40}, "strong": {"R": 60, "D": 30, "RD": 20}}}
    assert ordering_checks(protocol, values, targets, n=100) == {"cw-inf_le_fgsm": False, "rd_le_min": True}


def test_a_run_of_fewer_modalities_than_its_dataset_has_no_joint_target_to_compare():
    one = {"attacks": {"fgsm": {"R": 50}, "pgd20": {"R": 30}}}
    codes = {"rgb": "R", "skeleton": "S"}
    assert ordering_checks(STANDARD_V1, one, target_sets(("rgb",)), 100, codes) == {
        "pgd_le_fgsm": True, "rs_le_min": True}
    reordered = target_sets(("skeleton", "rgb"), codes)  # --modalities skeleton,rgb: the joint target is "SR"
    values = {"attacks": {"fgsm": {"S": 50, "R": 60, "SR": 70}, "pgd20": {"S": 30, "R": 40, "SR": 20}}}
    assert ordering_checks(STANDARD_V1, values, reordered, 100, codes) == {"pgd_le_fgsm": True, "rs_le_min": False}
