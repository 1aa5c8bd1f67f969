"""``unimodal``: the fused model attacked on one modality against each modality's own model (AMR paper, Table 1).

The paper trains the undefended RGB + skeleton model and, as baselines, an
RGB-only and a skeleton-only model with the same recipe, and attacks them
with FGSM, PGD and CW at ε = 6/255. Its point: the fused model with one
modality attacked (✗R keeps the skeleton clean, ✗S the video) is less
accurate than the other modality's unimodal model on clean data, so fusion
lets the weaker stream drag the stronger one down. Here each attack of the
protocol gives one row: the fused model's ✓ and ✗ columns, then each
unimodal model's clean accuracy and its accuracy under the same attack.
The paper's PGD is PGD-10; this study uses the protocol's attacks (PGD-20 in
standard-v1). For ntu60 and imigue the paper's rows are shown, marked
reported.

Example::

    mmrobust study unimodal --dataset synthetic
    mmrobust study unimodal --dataset synthetic --eps 8 --seeds 0 1 2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmrobust.config import RunConfig
from mmrobust.leaderboard import target_codes
from mmrobust.registry import register_study
from mmrobust.study import Job, Result, Study, accuracy, by_seed, cell

FUSED = "fused"
WORST = "worst"

#: AMR paper, Table 1 (ε = 6/255; PGD is PGD-10): ✓RS, then per attack ✗R, ✗S, ✗RS, Avg; unimodal clean accuracy.
REPORTED = {
    "ntu60": {"clean": 88.09, "unimodal": {"R": 81.46, "S": 81.46},
              "attacks": {"FGSM": (50.48, 66.42, 22.12, 46.34), "PGD-10": (6.39, 25.18, 1.66, 11.08),
                          "CW": (4.55, 22.46, 0.21, 9.03)}},
    "imigue": {"clean": 62.37, "unimodal": {"R": 59.48, "S": 46.86},
               "attacks": {"FGSM": (6.86, 48.61, 2.52, 19.03), "PGD-10": (0.35, 19.94, 0.24, 6.84),
                           "CW": (0.20, 20.82, 0.26, 7.09)}},
}


@dataclass(frozen=True)
class Params:
    """The defense of all three models, their modalities and the budget.

    Attributes:
        defense: trained into the fused and the unimodal models alike.
        modalities: the modalities with a unimodal baseline each.
        eps: ε in /255 (the paper's Table 1: 6).
    """

    defense: str = field(default="none", metadata={"help": "Defense of the fused and unimodal models."})
    modalities: tuple[str, ...] = field(default=("rgb", "skeleton"),
                                        metadata={"help": "Modalities with a unimodal model each."})
    eps: float = field(default=6.0, metadata={"help": "ε in /255 [paper: 6]."})

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 255:
            raise ValueError(f"eps is in /255 and must be in (0, 255], got {self.eps}")
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be at least two distinct names, got {list(self.modalities)}")


@register_study("unimodal")
class Unimodal(Study):
    title = "The fused model against unimodal models (AMR paper, Table 1)"
    Params = Params

    def jobs(self, base: RunConfig, params: Params) -> list[Job]:
        eps = params.eps / 255
        fused = base.replace(defense=params.defense)  # every modality of the dataset, as a sweep's run
        return [Job(FUSED, fused, eps=eps)] + [
            Job(f"{m} only", base.replace(defense=params.defense, modalities=(m,)), eps=eps)
            for m in params.modalities]

    def collect(self, results: Sequence[Result], params: Params) -> dict[str, Any]:
        grouped = by_seed(results)
        fused = [r.record for r in grouped[FUSED]]
        codes = target_codes(fused)
        attacks = [a for a in fused[0].metrics["attacks"] if a != WORST]
        unimodal = {}
        for modality in params.modalities:
            records = [r.record for r in grouped[f"{modality} only"]]
            code = target_codes(records)[0]
            unimodal[code] = {"modality": modality, "clean": [accuracy(r, None, None) for r in records],
                              "robust": {a: [accuracy(r, a, code) for r in records] for a in attacks}}
        return {"dataset": fused[0].dataset, "eps": params.eps, "targets": codes, "attacks": attacks,
                "clean": [accuracy(r, None, None) for r in fused],
                "robust": {a: {c: [accuracy(r, a, c) for r in fused] for c in codes} for a in attacks},
                "avg": {a: [sum(accuracy(r, a, c) for c in codes) / len(codes) for r in fused] for a in attacks},
                "unimodal": unimodal}

    def table(self, data: Mapping[str, Any], params: Params) -> pd.DataFrame:
        joint = max(data["targets"], key=len)
        singles = [c for c in data["targets"] if c in data["unimodal"]]
        rows = []
        for attack in data["attacks"]:
            row = {"attack": attack, f"✓{joint}": cell(data["clean"])}
            row.update({f"✗{c}": cell(data["robust"][attack][c]) for c in data["targets"]})
            row["Avg"] = cell(data["avg"][attack])
            for code in singles:
                row[f"Unimodal ✓{code}"] = cell(data["unimodal"][code]["clean"])
            for code in singles:
                row[f"Unimodal ✗{code}"] = cell(data["unimodal"][code]["robust"][attack])
            row["source"] = "measured"
            rows.append(row)
        reported = REPORTED.get(data["dataset"])
        if reported:
            for attack, values in reported["attacks"].items():
                row = {"attack": f"{attack} (paper, ε = 6/255)", f"✓{joint}": f"{reported['clean']:.2f}"}
                row.update({f"✗{c}": f"{v:.2f}" for c, v in zip(("R", "S", "RS"), values)})
                row["Avg"] = f"{values[3]:.2f}"
                row.update({f"Unimodal ✓{c}": f"{v:.2f}" for c, v in reported["unimodal"].items()})
                row["source"] = "reported"
                rows.append(row)
        return pd.DataFrame(rows).fillna("–")
