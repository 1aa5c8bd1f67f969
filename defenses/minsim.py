"""``minsim``: the cross-modal dissimilarity constraint of Tian & Xu (CVPR 2021), as released.

Tian & Xu, "Can audio-visual integration strengthen robustness under multimodal
attacks?", CVPR 2021 (YapengTian/AV-Robustness-CVPR21, ``main_defense.py``).
The released training loss is the cross-entropy plus the mean cosine
similarity of the two unimodal embeddings right before the fusion classifier,
with weight w = 1; minimising it pushes the modalities' embeddings apart::

    L = CE(f(x), y) + w · mean_i cos( e_R,i , e_S,i )

The release computes the cosine on the raw embeddings, which there have the
same width (512 after the global max pool of ResNet-18 and of the sound net):
no parameter stands between the term and the backbones. Where the widths
differ (I3D 1024, HCN 256 in the ``paper`` preset; both 128 in ``tiny``, where
nothing is mapped), the wider embedding is brought to the narrower width by a
fixed mean over groups of consecutive units (adaptive average pooling). The
map is chosen to keep the release's pressure on the embeddings themselves:

* it has no parameter, so the term cannot be satisfied by a learned head
  while the backbones stay as they were (learned projections did exactly
  that: they anti-aligned at cosine ≈ −0.9 and left the embeddings alone);
* it is non-negative, so the cosine of two ReLU-pooled embeddings stays in
  [0, 1] as in the release, where it is minimised by embeddings on disjoint
  units, not by opposite ones;
* it has no null space on non-negative vectors, so the wider modality
  cannot lower the term by moving its mass to units the cosine ignores.

With more than two modalities the term is the mean over all pairs.

Modalities: needs both ``rgb`` and ``skeleton``. Trained on clean data, as the
authors do; ``adversarial=true`` computes both terms on a PGD-10 batch of both
modalities instead (the ``at-rs`` adversary, eval-mode generation). Threat
model: no adversary is assumed in training by default; robustness is claimed
from the dispersion of the modalities.

Example::

    mmrobust run --defense minsim --dataset synthetic
    mmrobust run --defense minsim --dataset synthetic --defense-param adversarial=true
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.defense import Defense, TrainContext, TrainingAdversary
from mmrobust.model import Batch, ModelOutput
from mmrobust.params import check_flag, check_number
from mmrobust.registry import register_defense

@dataclass(frozen=True)
class Params:
    """MinSim's weight and training data.

    Attributes:
        weight: w, the weight of the cosine term (1 as released).
        adversarial: compute the loss on a PGD-10 batch of both modalities.
    """

    weight: float = 1.0
    adversarial: bool = False

    def __post_init__(self) -> None:
        check_number("weight", self.weight, 0.0)
        check_flag("adversarial", self.adversarial)


def common_width(embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each (B, d_m) embedding at the narrowest width: wider ones averaged over groups of consecutive units
    (fixed, non-negative; see the module docstring). Embeddings of that width are returned as they are."""
    width = min(e.shape[1] for e in embeddings.values())
    return {m: e if e.shape[1] == width else F.adaptive_avg_pool1d(e.unsqueeze(1), width).squeeze(1)
            for m, e in embeddings.items()}


def mean_cosine(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over samples and modality pairs of the cosine of the embeddings (at their common width)."""
    mapped = list(common_width(embeddings).values())
    pairs = [F.cosine_similarity(a, b, dim=1).mean() for a, b in itertools.combinations(mapped, 2)]
    return torch.stack(pairs).mean()


@register_defense("minsim")
class MinSim(Defense):
    """Cross-entropy plus w · cosine similarity of the modality embeddings."""

    Params = Params
    requires = ("rgb", "skeleton")

    def __init__(self, params: Params | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.adversary = TrainingAdversary() if self.params.adversarial else None

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        if self.adversary is not None:
            batch = self.adversary(model, batch, model.modalities, ctx.generator)
        output: ModelOutput = model(batch)
        similarity = mean_cosine(output.embeddings)
        return F.cross_entropy(output.logits, batch["label"]) + self.params.weight * similarity
