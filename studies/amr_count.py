"""``amr-count``: robustness against the number of AMRs (AMR paper, Table 4).

The paper trains AMR with 0 to 3 reweighters (0 is adversarial training on
both modalities, ``at-rs``) and attacks each with CW (PGD-30 on the margin
loss, ε = 8/255, α = 2/255), beside the undefended model: on NTU RGB+D RI
grows with every AMR, on iMiGUE it peaks at one, and every count beats none.
Each row here is one trained model, read from the protocol's ``cw30``
column; RI is against ``none`` of the same training seed. For ntu60 and
imigue the paper's rows are shown, marked reported.

Example::

    mmrobust study amr-count --dataset synthetic --counts 0 1 2 3
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
MAX_COUNT = 3
#: AMR paper, Table 4 (CW): ✓RS, ✗R, ✗S, ✗RS, Avg, RI per number of AMRs.
REPORTED = {
    "ntu60": {"none": (88.09, 0.98, 9.00, 0.00, 3.33, 0.0), 0: (61.42, 61.41, 38.74, 38.82, 46.32, 16.32),
              1: (76.44, 76.44, 37.89, 37.83, 50.72, 37.74), 2: (81.61, 67.93, 80.53, 66.00, 71.49, 61.68),
              3: (81.65, 68.62, 80.35, 66.61, 71.86, 62.09)},
    "imigue": {"none": (62.37, 0.13, 6.67, 0.02, 2.27, 0.0), 0: (39.01, 39.01, 30.94, 30.97, 33.64, 8.01),
               1: (43.89, 43.89, 32.46, 32.50, 36.28, 15.53), 2: (42.93, 42.93, 31.27, 31.16, 35.12, 13.41),
               3: (42.38, 42.38, 33.33, 33.42, 36.38, 14.12)},
}


@dataclass(frozen=True)
class Params:
    """The counts and the attack column.

    Attributes:
        counts: numbers of AMRs (0: at-rs, adversarial training of both modalities without AMR).
        attack: the protocol's attack column that is read (the paper's Table 4: CW-30).
    """

    counts: tuple[int, ...] = field(default=(0, 1, 2, 3), metadata={"help": "Numbers of AMRs, 0 to 3."})
    attack: str = field(default="cw30", metadata={"help": "Attack column of the protocol [paper: cw30]."})

    def __post_init__(self) -> None:
        if not self.counts or len(set(self.counts)) != len(self.counts) \
                or any(not isinstance(c, int) or not 0 <= c <= MAX_COUNT for c in self.counts):
            raise ValueError(f"counts must be distinct integers from 0 to {MAX_COUNT}, got {list(self.counts)}")
        check_attack(self.attack)


def _label(count: int) -> str:
    return "0 AMR (at-rs)" if count == 0 else f"{count} AMR{'s' if count > 1 else ''}"


@register_study("amr-count")
class AMRCount(Study):
    title = "Robustness against the number of AMRs (AMR paper, Table 4)"
    Params = Params

    def jobs(self, base: RunConfig, params: Params) -> list[Job]:
        jobs = [Job(REFERENCE, base.replace(defense=REFERENCE))]
        for count in params.counts:
            config = (base.replace(defense="at-rs") if count == 0 else
                      base.replace(defense="amr", defense_params=defense_params("amr", amrs=count)))
            jobs.append(Job(_label(count), config))
        return jobs

    def collect(self, results: Sequence[Result], params: Params) -> dict[str, Any]:
        return variant_data(results, params.attack, REFERENCE)

    def table(self, data: Mapping[str, Any], params: Params) -> pd.DataFrame:
        reported = REPORTED.get(data["dataset"], {})
        return variant_table(data, "model", {f"{k if k == REFERENCE else _label(k)} (paper)": v
                                             for k, v in reported.items()})

    def plot(self, data: Mapping[str, Any], params: Params) -> Any:
        return variant_plot(data, f"number of AMRs, {data['attack']}")
