"""``lambda``: robustness against AMR's loss weight λ (AMR paper, Table 5).

λ weighs the adversarial terms of AMR's loss (paper Eq. 12). The paper
trains one AMR on iMiGUE with λ ∈ {0.1, 0.5, 1, 2, 5} and attacks each with
PGD-20: λ = 0.1 keeps the most clean accuracy and RI, larger λ trades clean
accuracy for ✗S. Each row here is one trained model, read from the
protocol's ``pgd20`` column; RI is against ``none`` of the same training
seed. For imigue the paper's rows are shown, marked reported.

Example::

    mmrobust study lambda --dataset synthetic --values 0.1 0.5 1 2 5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmrobust.config import RunConfig
from mmrobust.registry import register_study
from mmrobust.study import (Job, Result, Study, check_attack, defense_params, variant_data, variant_plot,
                            variant_table)

REFERENCE = "none"
#: AMR paper, Table 5 (iMiGUE, 1 AMR, PGD-20): ✓RS, ✗R, ✗S, ✗RS, Avg, RI per λ.
REPORTED = {"imigue": {"none": (62.37, 0.11, 6.97, 0.07, 2.38, 0.0), 0.1: (60.25, 36.23, 59.15, 32.02, 42.47, 37.97),
                       0.5: (45.08, 45.08, 27.39, 27.24, 33.24, 13.57), 1: (43.89, 43.89, 32.85, 32.94, 36.56, 15.70),
                       2: (42.76, 42.76, 34.82, 34.80, 37.46, 15.47), 5: (41.64, 41.64, 37.50, 37.56, 38.90, 15.79)}}


@dataclass(frozen=True)
class Params:
    """The λ values, the number of AMRs and the attack column.

    Attributes:
        values: λ of each model (paper: 0.1, 0.5, 1, 2, 5).
        amrs: AMRs of every model (paper: 1, the iMiGUE recipe).
        attack: the protocol's attack column that is read (paper: PGD-20).
    """

    values: tuple[float, ...] = field(default=(0.1, 0.5, 1.0, 2.0, 5.0), metadata={"help": "λ values."})
    amrs: int = field(default=1, metadata={"help": "AMRs of every model [paper: 1]."})
    attack: str = field(default="pgd20", metadata={"help": "Attack column of the protocol [paper: pgd20]."})

    def __post_init__(self) -> None:
        values = [float(v) for v in self.values]
        if not values or len(set(values)) != len(values) or min(values) < 0:
            raise ValueError(f"values must be distinct non-negative numbers, got {list(self.values)}")
        check_attack(self.attack)


@register_study("lambda")
class Lambda(Study):
    title = "Robustness against AMR's loss weight λ (AMR paper, Table 5)"
    Params = Params

    def jobs(self, base: RunConfig, params: Params) -> list[Job]:
        jobs = [Job(REFERENCE, base.replace(defense=REFERENCE))]
        for value in params.values:
            config = base.replace(defense="amr", defense_params=defense_params("amr", amrs=params.amrs,
                                                                               lam=float(value)))
            jobs.append(Job(f"λ = {float(value):g}", config))
        return jobs

    def collect(self, results: Sequence[Result], params: Params) -> dict[str, Any]:
        return variant_data(results, params.attack, REFERENCE)

    def table(self, data: Mapping[str, Any], params: Params) -> pd.DataFrame:
        reported = REPORTED.get(data["dataset"], {})
        return variant_table(data, "model", {f"{k if k == REFERENCE else f'λ = {k:g}'} (paper)": v
                                             for k, v in reported.items()})

    def plot(self, data: Mapping[str, Any], params: Params) -> Any:
        return variant_plot(data, f"AMR's λ, {data['attack']}")
