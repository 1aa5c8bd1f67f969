"""The defense contract and how a defense is built from its name and parameters.

A defense is a class registered with ``@register_defense`` that owns a frozen
``Params`` dataclass and overrides any of these hooks:

* ``build(model) -> model``: change the architecture (add mixers or filters);
* ``loss(model, batch, ctx) -> Tensor``: the training objective;
* ``after_training(model, train, ctx)``: post-training step (fill memory banks);
* ``surrogate(model) -> nn.Module | None``: a differentiable stand-in for
  adaptive (BPDA) evaluation, when inference is not usefully differentiable.

The defaults are those of an undefended model: no change, cross-entropy on
clean data, nothing after training, no surrogate.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.model import Batch, logits_of
from mmrobust.registry import DEFENSES


@dataclass(frozen=True)
class NoParams:
    """A defense without parameters."""


@dataclass
class TrainContext:
    """What a defense's hooks may use besides the model and the batch.

    Attributes:
        device: where the batch lives.
        epoch: current epoch (0-based).
        generator: seeded generator for any randomness of the defense
            (random starts of a training adversary), so training is reproducible.
        modalities: the model's modalities.
    """

    device: torch.device
    epoch: int = 0
    generator: torch.Generator | None = None
    modalities: tuple[str, ...] = ()


class Defense:
    """Base class: an undefended model trained with cross-entropy."""

    Params: ClassVar[type] = NoParams
    requires: ClassVar[tuple[str, ...]] = ()  # modalities the defense cannot do without

    def __init__(self, params: Any = None, name: str = "") -> None:
        self.params = params if params is not None else self.Params()
        self.name = name

    def check_modalities(self, modalities: typing.Sequence[str]) -> None:
        """Raise ValueError if the run lacks a modality this defense needs."""
        missing = [m for m in self.requires if m not in modalities]
        if missing:
            raise ValueError(f"defense {self.name!r} needs modality {missing[0]!r}, which this run lacks "
                             f"(modalities: {', '.join(modalities)})")

    def build(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        return F.cross_entropy(logits_of(model(batch)), batch["label"])

    def after_training(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        return None

    def surrogate(self, model: nn.Module) -> nn.Module | None:
        return None


def build_defense(name: str, params: dict[str, Any] | None = None) -> Defense:
    """Instantiate a registered defense, validating its parameters.

    Raises:
        ValueError: unknown defense (with suggestions), unknown or ill-typed
            parameter (named), or a value out of range.
    """
    factory = DEFENSES.get(name)
    params_type = factory.Params
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    for key in params or {}:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else (
                f"; its parameters are {', '.join(fields)}" if fields else "; it takes no parameters")
            raise ValueError(f"defense {name!r} has no parameter {key!r}{hint}")
    try:
        params_value = params_type(**(params or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"defense {name!r}: {error}") from None
    return factory(params_value, name=name)
