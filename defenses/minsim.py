"""``minsim``: the cross-modal dissimilarity constraint of Tian & Xu (CVPR 2021), as released.

Tian & Xu, "Can audio-visual integration strengthen robustness under multimodal
attacks?", CVPR 2021 (YapengTian/AV-Robustness-CVPR21, ``main_defense.py``).
The released training loss is the cross-entropy plus the mean cosine
similarity of the two unimodal embeddings right before the fusion classifier,
with weight w = 1; minimising it pushes the modalities' embeddings apart::

    L = CE(f(x), y) + w · mean_i cos( p_R(e_R,i), p_S(e_S,i) )

Here the I3D and HCN embeddings differ in width, so each modality gets a
learned linear projection p_m to a common width (``dim``) before the cosine;
the projections are bias-free, since a learned bias alone could drive the
cosine to −1 without touching the embeddings. They are trained by this term
only and do not take part in inference. With more than two modalities the
term is the mean over all pairs.

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

PROJECTION = "minsim_projection"  # attribute of the model holding the projections


@dataclass(frozen=True)
class Params:
    """MinSim's weight and projection width.

    Attributes:
        weight: w, the weight of the cosine term (1 as released).
        dim: common width of the projected embeddings.
        adversarial: compute the loss on a PGD-10 batch of both modalities.
    """

    weight: float = 1.0
    dim: int = 128
    adversarial: bool = False

    def __post_init__(self) -> None:
        check_number("weight", self.weight, 0.0)
        check_number("dim", self.dim, 1, integer=True)
        check_flag("adversarial", self.adversarial)


def mean_cosine(embeddings: dict[str, torch.Tensor], projections: nn.ModuleDict) -> torch.Tensor:
    """Mean over samples and modality pairs of the cosine of the projected embeddings."""
    projected = [projections[m](e) for m, e in embeddings.items()]
    pairs = [F.cosine_similarity(a, b, dim=1).mean() for a, b in itertools.combinations(projected, 2)]
    return torch.stack(pairs).mean()


@register_defense("minsim")
class MinSim(Defense):
    """Cross-entropy plus w · cosine similarity of projected modality embeddings."""

    Params = Params
    requires = ("rgb", "skeleton")

    def __init__(self, params: Params | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.adversary = TrainingAdversary() if self.params.adversarial else None

    def build(self, model: nn.Module) -> nn.Module:
        model.add_module(PROJECTION, nn.ModuleDict({
            m: nn.Linear(branch.embedding_dim, self.params.dim, bias=False) for m, branch in model.branches.items()
        }))
        return model

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        if self.adversary is not None:
            batch = self.adversary(model, batch, model.modalities, ctx.generator)
        output: ModelOutput = model(batch)
        similarity = mean_cosine(output.embeddings, getattr(model, PROJECTION))
        return F.cross_entropy(output.logits, batch["label"]) + self.params.weight * similarity
