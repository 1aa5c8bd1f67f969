"""MultimodalNet: per-modality backbones, optional mixers, a fusion head.

    batch ─► branch["rgb"]: normalize → stage … stage ─┐
          └► branch["skeleton"]: normalize → stage … ──┤ mixers between stages
                                                       ▼
             embeddings ─► (embedding filters) ─► concat ─► dropout ─► linear ─► logits

A unimodal baseline is the same class with one branch. Mixers (AMR, for
instance) see the feature maps of all branches at their attachment stages and
may return auxiliary logits; embedding filters (ExFMem, for instance) rewrite
an embedding before fusion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mmrobust.backbones.base import Backbone

Batch = dict[str, torch.Tensor]


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        logits: fused class scores, (B, K).
        embeddings: per-modality embeddings entering the fusion head.
        aux_logits: one (B, K) tensor per mixer that classifies.
    """

    logits: torch.Tensor
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_logits: tuple[torch.Tensor, ...] = ()


def logits_of(output: ModelOutput | torch.Tensor) -> torch.Tensor:
    """Logits from either a :class:`ModelOutput` or a plain tensor."""
    return output.logits if isinstance(output, ModelOutput) else output


class Mixer(nn.Module):
    """A module run between backbone stages that sees every branch.

    ``attach`` maps each modality to the stage after which the mixer runs;
    ``forward`` takes and returns the feature maps (same keys and shapes), plus
    optional auxiliary logits.
    """

    attach: dict[str, str]

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        raise NotImplementedError

    def modality_weights(self) -> dict[str, torch.Tensor]:
        """The learned weight tensor per modality, for mixers that reweight features (empty otherwise);
        what studies of learned weights read."""
        return {}


class MultimodalNet(nn.Module):
    """Branches + mixers + a late-fusion linear head.

    Args:
        branches: backbone per modality; the fusion order is the mapping's order.
        num_classes: K.
        dropout: dropout before the fusion classifier.
        input_shapes: per-sample input shape of each modality (no batch axis),
            for modules that size themselves on feature maps (AMR's weights).
    """

    def __init__(self, branches: Mapping[str, Backbone], num_classes: int, dropout: float = 0.5,
                 input_shapes: Mapping[str, Sequence[int]] | None = None):
        super().__init__()
        if not branches:
            raise ValueError("MultimodalNet needs at least one branch")
        self.branches = nn.ModuleDict(branches)
        self.mixers = nn.ModuleList()
        self.filters = nn.ModuleDict()
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sum(b.embedding_dim for b in branches.values()), num_classes)
        self._input_shapes = {m: tuple(int(n) for n in shape) for m, shape in (input_shapes or {}).items()}

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample input shape of each modality as built; empty if not given."""
        return dict(self._input_shapes)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.branches.keys())

    def twin(self, filters: Mapping[str, nn.Module]) -> MultimodalNet:
        """A model with this one's branches, mixers, fusion head and dropout (the very modules, not
        copies) and the embedding ``filters`` given: the same forward except for the filters.

        Other attributes a defense added (modules only its loss uses) are not
        carried over; the forward never reads them.
        """
        twin = MultimodalNet.__new__(type(self))
        nn.Module.__init__(twin)
        twin.branches, twin.mixers, twin.head, twin.dropout = self.branches, self.mixers, self.head, self.dropout
        twin.filters = nn.ModuleDict(filters)
        twin.num_classes = self.num_classes
        twin._input_shapes = dict(self._input_shapes)
        twin.training = self.training  # its own flag only: the shared modules keep theirs
        return twin

    def add_mixer(self, mixer: Mixer) -> None:
        """Insert a mixer; mixers run in order of their attachment depth."""
        for modality, stage in mixer.attach.items():
            if modality not in self.branches:
                raise ValueError(f"mixer attaches to {modality!r}, which is not a branch ({', '.join(self.modalities)})")
            if stage not in self.branches[modality].stages:
                names = ", ".join(self.branches[modality].stage_names)
                raise ValueError(f"{modality} backbone has no stage {stage!r} (stages: {names})")
        self.mixers.append(mixer)
        order = sorted(self.mixers, key=lambda m: [self.branches[k].stage_names.index(s) for k, s in m.attach.items()])
        self.mixers = nn.ModuleList(order)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        features = {m: branch.normalize(batch[m]) for m, branch in self.branches.items()}
        done = {m: 0 for m in self.branches}  # stages already run per branch
        aux: list[torch.Tensor] = []

        def advance(modality: str, upto: int) -> None:
            stages = list(self.branches[modality].stages.values())
            for stage in stages[done[modality]:upto]:
                features[modality] = stage(features[modality])
            done[modality] = max(done[modality], upto)

        for mixer in self.mixers:
            for modality, stage in mixer.attach.items():
                advance(modality, self.branches[modality].stage_names.index(stage) + 1)
            mixed, aux_logits = mixer({m: features[m] for m in mixer.attach})
            features.update(mixed)
            if aux_logits is not None:
                aux.append(aux_logits)
        embeddings = {}
        for modality, branch in self.branches.items():
            advance(modality, len(branch.stages))
            embedding = branch.embed(features[modality])
            if modality in self.filters:
                embedding = self.filters[modality](embedding)
            embeddings[modality] = embedding
        fused = torch.cat([embeddings[m] for m in self.branches], dim=1)
        return ModelOutput(self.head(self.dropout(fused)), embeddings, tuple(aux))


class StraightThrough(nn.Module):
    """BPDA (Athalye, Carlini & Wagner, ICML 2018): the wrapped module's output forward, the identity's
    gradient backward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.inner(x) - x).detach()


def bpda_twin(model: MultimodalNet, wrap: Callable[[nn.Module], bool]) -> MultimodalNet:
    """A twin of ``model`` (:meth:`MultimodalNet.twin`) whose embedding filters that ``wrap`` selects are
    straight-through (:class:`StraightThrough`): the same forward, the identity's gradient through them.

    For a defense whose filter is not usefully differentiable; ``model`` is left as it is.
    """
    return model.twin({m: StraightThrough(f) if wrap(f) else f for m, f in model.filters.items()})


def stage_shapes(model: MultimodalNet, batch: Mapping[str, torch.Tensor]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Per-sample output shape of every stage, found by a dry run (no mixers)."""
    shapes: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    with torch.no_grad():
        for modality, branch in model.branches.items():
            x = branch.normalize(batch[modality][:1])
            rows = []
            for name, stage in branch.stages.items():
                x = stage(x)
                rows.append((name, tuple(x.shape[1:])))
            shapes[modality] = rows
    return shapes


def unimodal_modalities(modalities: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    """Validate a ``--modalities`` choice against a dataset's modalities."""
    unknown = [m for m in modalities if m not in available]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}; this dataset has {', '.join(available)}")
    return tuple(modalities)
