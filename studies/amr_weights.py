"""``amr-weights``: what AMR learned, its mean weight per modality and per channel (AMR paper, Table 3, Fig. 4).

AMR multiplies each modality's feature map by a learned weight tensor. The
paper reports the mean of each tensor (Table 3: in every AMR the skeleton's
mean weight is above the video's) and plots the per-channel weights (Fig. 4:
the skeleton's fluctuate more). Here the trained models of ``amr`` (with
``--amrs`` reweighters) are read after training; the mean, standard
deviation and per-channel mean of each weight tensor are kept, and with
several seeds their mean and spread. AMRs are numbered in forward order
(AMR 1 the shallowest) and the table says after which stage each sits; the
paper does not say which end its numbering starts from. Unlike the other studies its data comes
from the models, not the records, so ``amr-weights.json`` keeps it. For
ntu60 and imigue the paper's Table 3 is shown, marked reported.

Example::

    mmrobust study amr-weights --dataset synthetic
    mmrobust study amr-weights --dataset synthetic --amrs 3 --seeds 0 1 2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmrobust.config import RunConfig
from mmrobust.registry import register_study
from mmrobust.study import Job, Result, Study, cell, defense_params, mean_spread

DEFENSE = "amr"
#: AMR paper, Table 3: mean weight of the video (R) and skeleton (S) tensors of AMR 1, 2, 3.
REPORTED = {"imigue": {"R": (0.4666, 0.4663, 0.4665), "S": (0.4693, 0.4939, 0.4905)},
            "ntu60": {"R": (0.3067, 0.3065, 0.3067), "S": (0.3187, 0.3275, 0.3240)}}


@dataclass(frozen=True)
class Params:
    """The trained AMR models.

    Attributes:
        amrs: AMRs of the model (paper: 1 on iMiGUE, 3 on NTU RGB+D).
    """

    amrs: int = field(default=1, metadata={"help": "AMRs of the model [paper: 1 iMiGUE, 3 NTU RGB+D]."})


@register_study("amr-weights")
class AMRWeights(Study):
    title = "AMR's learned weights (AMR paper, Table 3 and Fig. 4)"
    Params = Params
    from_records = False

    def jobs(self, base: RunConfig, params: Params) -> list[Job]:
        return [Job(DEFENSE, base.replace(defense=DEFENSE, defense_params=defense_params(DEFENSE, amrs=params.amrs)))]

    def collect(self, results: Sequence[Result], params: Params) -> dict[str, Any]:
        from mmrobust.run import load_trained

        mixers = []  # per AMR, per modality: per seed the mean, std and per-channel means
        for result in sorted(results, key=lambda r: r.seed):
            model = load_trained(result.run_dir).model
            found = [m for m in getattr(model, "mixers", ()) if m.modality_weights()]
            for index, mixer in enumerate(found):
                if index == len(mixers):
                    mixers.append({"attach": dict(mixer.attach), "weights": {}})
                for modality, weight in mixer.modality_weights().items():
                    weight = weight.detach().float().cpu()
                    entry = mixers[index]["weights"].setdefault(modality, {"mean": [], "std": [], "channels": []})
                    entry["mean"].append(float(weight.mean()))
                    entry["std"].append(float(weight.std()) if weight.numel() > 1 else 0.0)
                    entry["channels"].append([float(v) for v in weight.flatten(1).mean(dim=1)])
        return {"dataset": results[0].record.dataset, "seeds": sorted(r.seed for r in results), "amrs": mixers}

    def table(self, data: Mapping[str, Any], params: Params) -> pd.DataFrame:
        modalities = list(data["amrs"][0]["weights"]) if data["amrs"] else []
        rows = [{"weight": "after stage", **{f"AMR {i}": " / ".join(mixer["attach"][m] for m in modalities)
                                            for i, mixer in enumerate(data["amrs"], start=1)}, "source": "measured"}]
        for modality in modalities:
            row = {"weight": f"mean of W ({modality})"}
            for index, mixer in enumerate(data["amrs"], start=1):
                row[f"AMR {index}"] = cell(mixer["weights"][modality]["mean"], digits=4)
            row["source"] = "measured"
            rows.append(row)
        for code, values in REPORTED.get(data["dataset"], {}).items():
            rows.append({"weight": f"mean of W_{code} (paper)",
                         **{f"AMR {i}": f"{v:.4f}" for i, v in enumerate(values, start=1)}, "source": "reported"})
        return pd.DataFrame(rows).fillna("–")

    def plot(self, data: Mapping[str, Any], params: Params) -> Any:
        import matplotlib.pyplot as plt

        mixers = data["amrs"]
        modalities = list(mixers[0]["weights"]) if mixers else []
        fig, axes = plt.subplots(len(mixers), len(modalities), squeeze=False,
                                 figsize=(4.5 * len(modalities), 2.6 * len(mixers)))
        for row, mixer in enumerate(mixers):
            for col, modality in enumerate(modalities):
                entry = mixer["weights"][modality]
                channels = np.asarray(entry["channels"], dtype=float)
                mean = channels.mean(axis=0)
                ax = axes[row][col]
                ax.plot(np.arange(len(mean)), mean, linewidth=1.0)
                if len(channels) > 1:
                    spread = channels.std(axis=0, ddof=1)
                    ax.fill_between(np.arange(len(mean)), mean - spread, mean + spread, alpha=0.25, linewidth=0)
                ax.axhline(mean_spread(entry["mean"])[0], color="grey", linestyle="--", linewidth=0.8,
                           label="mean")
                ax.set_title(f"AMR {row + 1}: {modality} after {mixer['attach'][modality]}", fontsize=9)
                ax.set_xlabel("channel")
                ax.set_ylabel("mean weight")
                ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
