"""``curves``: accuracy against the attack budget ε for every attack and target (AMR paper, Fig. 2).

The paper draws, for the undefended fused model on NTU RGB+D and iMiGUE, the
accuracy under FGSM, PGD and CW on RGB only, skeleton only and both, for ε
from 0 to 8 × 2/255 (its x-axis unit), beside the clean accuracy; the
skeleton's curve falls slowest. Here one trained model of ``--defense`` is
evaluated under the protocol at each ε (one evaluation per ε: the clean
forward is shared by all its attacks and targets; ε = 0 is the clean
accuracy); ``--strong`` adds the worst case of strong-v1 at each ε. The
skeleton's ε is also given in physical units through the dataset's scale.
The paper gives the figure only, not its numbers, so nothing reported is
drawn beside it.

Example::

    mmrobust study curves --dataset synthetic --defense none
    mmrobust study curves --dataset synthetic --defense amr --eps 0 2 4 6 8 --seeds 0 1 2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmrobust.config import RunConfig
from mmrobust.leaderboard import target_codes
from mmrobust.registry import register_study
from mmrobust.study import Job, Result, Study, accuracy, by_seed, cell, mean_spread

UNIT = 2 / 255  # the paper's x-axis unit
STRONG = "strong-v1"
WORST = "worst"


@dataclass(frozen=True)
class Params:
    """The model and the ε grid.

    Attributes:
        defense: the defense whose trained model is attacked.
        eps: ε values in units of 2/255 (the paper's x-axis: 0 to 8).
        strong: also the worst case of strong-v1 at each ε (AutoAttack-style; minutes per ε on a CPU).
    """

    defense: str = field(default="none", metadata={"help": "Defense whose model is attacked."})
    eps: tuple[int, ...] = field(default=(0, 1, 2, 3, 4, 5, 6, 7, 8),
                                 metadata={"help": "ε values in units of 2/255, e.g. --eps 0 2 4 8."})
    strong: bool = field(default=False, metadata={"help": "Also strong-v1's worst case at each ε."})

    def __post_init__(self) -> None:
        if not self.eps or any(not isinstance(v, int) or v < 0 or v * UNIT > 1 for v in self.eps) \
                or len(set(self.eps)) != len(self.eps):
            raise ValueError(f"eps must be distinct integers from 0 to {int(1 / UNIT)} (units of 2/255), "
                             f"got {list(self.eps)}")


def _key(protocol: str, step: int) -> str:
    return f"{protocol} ε={step}×2/255"


@register_study("curves")
class Curves(Study):
    title = "Accuracy against ε (AMR paper, Fig. 2)"
    Params = Params

    def jobs(self, base: RunConfig, params: Params) -> list[Job]:
        config = base.replace(defense=params.defense)
        steps = [step for step in sorted(params.eps) if step > 0] or [4]  # ε = 0 reads the clean accuracy
        jobs = [Job(_key("standard-v1", step), config, eps=2 * step / 255) for step in steps]
        if params.strong:
            jobs += [Job(_key(STRONG, step), config, eps=2 * step / 255, protocol=STRONG) for step in steps]
        return jobs

    def collect(self, results: Sequence[Result], params: Params) -> dict[str, Any]:
        grouped = by_seed(results)
        standard = [key for key in grouped if key.startswith("standard-v1")]
        first = grouped[standard[0]][0].record
        codes = target_codes(r.record for r in results)
        attacks = [a for a in first.metrics["attacks"] if a != WORST]
        clean = [accuracy(r.record, None, None) for r in grouped[standard[0]]]
        steps = sorted(params.eps)

        def series(protocol: str, attack: str, code: str) -> list[list[float]]:
            values = []
            for step in steps:
                values.append(clean if step == 0 else
                              [accuracy(r.record, attack, code) for r in grouped[_key(protocol, step)]])
            return values

        curves = [{"protocol": "standard-v1", "attack": a, "target": c, "values": series("standard-v1", a, c)}
                  for a in attacks for c in codes]
        if params.strong:
            curves += [{"protocol": STRONG, "attack": WORST, "target": c, "values": series(STRONG, WORST, c)}
                       for c in codes]
        return {"defense": params.defense, "eps": steps, "unit": "2/255", "targets": codes, "clean": clean,
                "skeleton_scale": first.data.get("skeleton_scale"), "skeleton_unit": first.data.get("skeleton_unit"),
                "curves": curves}

    def table(self, data: Mapping[str, Any], params: Params) -> pd.DataFrame:
        rows = []
        for index, step in enumerate(data["eps"]):
            row = {"ε (×2/255)": str(step), "ε": f"{2 * step}/255"}
            physical = _physical(data, step)
            if physical:
                row[f"skeleton ε ({physical[1]})"] = f"{physical[0]:.1f}"
            for curve in data["curves"]:
                name = f"{curve['attack']} ✗{curve['target']}"
                if curve["protocol"] != "standard-v1":
                    name = f"{curve['protocol']} {name}"
                row[name] = cell(curve["values"][index])
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, data: Mapping[str, Any], params: Params) -> Any:
        import matplotlib.pyplot as plt

        panels = list(dict.fromkeys((c["protocol"], c["attack"]) for c in data["curves"]))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
        steps = np.asarray(data["eps"], dtype=float)
        clean, _ = mean_spread(data["clean"])
        for ax, (protocol, attack) in zip(axes[0], panels):
            for curve in (c for c in data["curves"] if (c["protocol"], c["attack"]) == (protocol, attack)):
                means = np.array([mean_spread(v)[0] for v in curve["values"]])
                spreads = np.array([mean_spread(v)[1] for v in curve["values"]])
                line, = ax.plot(steps, means, marker="o", markersize=3, label=f"{attack}-{curve['target']}")
                if not np.isnan(spreads).all():
                    ax.fill_between(steps, means - spreads, means + spreads, color=line.get_color(), alpha=0.2,
                                    linewidth=0)
            ax.axhline(clean, color="black", linestyle="--", linewidth=0.9, label="clean acc")
            ax.set_title(attack if protocol == "standard-v1" else f"{protocol} ({attack})", fontsize=10)
            ax.set_xlabel("ε (×2/255)")
            ax.set_xticks(steps)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
            physical = _physical(data, 1)
            if physical:
                top = ax.secondary_xaxis("top", functions=(lambda x, k=physical[0]: x * k,
                                                           lambda x, k=physical[0]: x / k))
                top.set_xlabel(f"skeleton ε ({physical[1]})", fontsize=8)
        axes[0][0].set_ylabel("accuracy (%)")
        seeds = len(data["clean"])
        fig.suptitle(f"{data['defense']}: accuracy against ε"
                     + (f" (mean ± spread over {seeds} seeds)" if seeds > 1 else ""), fontsize=11)
        fig.tight_layout()
        return fig


def _physical(data: Mapping[str, Any], step: int) -> tuple[float, str] | None:
    """The skeleton budget of ``step`` × 2/255 in the dataset's unit (centimetres for metres), if it has one."""
    scale, unit = data.get("skeleton_scale"), data.get("skeleton_unit")
    if not isinstance(scale, (int, float)) or not unit or math.isnan(scale):
        return None
    value = step * UNIT * scale
    return (value * 100, "cm") if unit == "m" else (value, unit)
