"""The defense contract, what defenses share, and how a defense is built from its name and parameters.

A defense is a class registered with ``@register_defense`` that owns a frozen
``Params`` dataclass and overrides any of these hooks:

* ``build(model) -> model``: change the architecture (add mixers or filters);
  :func:`defend` calls it once per model;
* ``loss(model, batch, ctx) -> Tensor``: the training objective;
* ``after_training(model, train, ctx)``: post-training step (fill memory banks);
* ``surrogate(model) -> nn.Module | None``: a differentiable stand-in for
  adaptive (BPDA) evaluation, when inference is not usefully differentiable
  (:func:`mmrobust.model.bpda_twin` builds one);
* ``adaptive(model) -> {name: nn.Module}``: the differentiable views of the
  model an adaptive protocol (``strong-v1``) attacks besides the model itself
  (default: the surrogate, as ``bpda``); each view's examples are judged on
  the model, and the worse outcome counts.

The defaults are those of an undefended model: no change, cross-entropy on
clean data, nothing after training, no surrogate. What several defenses share
lives here, not in one of them: the training adversary
(:class:`TrainingAdversary`, PGD as Madry et al. train with it), parameter
checks (:mod:`mmrobust.params`), and :func:`combine`, which makes one defense
of several registered ones (``minsim+exfmem``). Exactly one registered defense
sets ``reference = True``: the undefended model that the relative improvement
RI is measured against.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.attack import RandomStarts
from mmrobust.engine import Schedule, SignGradientAttack
from mmrobust.model import Batch, logits_of
from mmrobust.params import build_params, check_flag, check_number
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
        epochs: the length of the training schedule (0 outside training).
    """

    device: torch.device
    epoch: int = 0
    generator: torch.Generator | None = None
    modalities: tuple[str, ...] = ()
    epochs: int = 0


class Defense:
    """Base class: an undefended model trained with cross-entropy."""

    Params: ClassVar[type] = NoParams
    requires: ClassVar[tuple[str, ...]] = ()  # modalities the defense cannot do without
    # The undefended model RI is measured against: set on exactly one registered class (not inherited).
    reference: ClassVar[bool] = False

    def __init__(self, params: Any = None, name: str = "") -> None:
        self.params = params if params is not None else self.Params()
        self.name = name

    @classmethod
    def params_type(cls) -> type:
        """The dataclass of this defense's parameters."""
        return cls.Params

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

    def before_epoch(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        """Called at the start of every training epoch (``ctx.epoch`` of ``ctx.epochs``), before its first
        batch, with the training split; a resumed run calls it again for the epoch it resumes. Default:
        nothing."""
        return None

    def after_training(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        return None

    def surrogate(self, model: nn.Module) -> nn.Module | None:
        return None

    def adaptive(self, model: nn.Module) -> dict[str, nn.Module]:
        """Views of ``model`` (name -> module taking the batch dict) that adaptive protocols attack with a
        gradient attack, judging each example on ``model`` itself. Default: the surrogate, as ``bpda``."""
        surrogate = self.surrogate(model)
        return {} if surrogate is None else {"bpda": surrogate}


def adaptive_views(defense: Defense, model: nn.Module) -> dict[str, nn.Module]:
    """``defense.adaptive(model)``, checked: a view that fails to build, or is not a module, is a ValueError
    naming the defense."""
    try:
        views = defense.adaptive(model)
    except Exception as error:  # noqa: BLE001 - any failure of a defense's own hook is reported as its own
        raise ValueError(f"defense {defense.name!r}: its adaptive attack views failed to build "
                         f"({type(error).__name__}: {error})") from error
    for name, view in dict(views).items():
        if not isinstance(view, nn.Module) or not name or "/" in name or "@" in name:
            raise ValueError(f"defense {defense.name!r}: adaptive view {name!r} must be an nn.Module under a "
                             f"name without '/' or '@', got {type(view).__name__}")
    return dict(views)


def build_defense(name: str, params: dict[str, Any] | None = None) -> Defense:
    """Instantiate a registered defense, validating its parameters (:func:`mmrobust.params.build_params`).

    Raises:
        ValueError: unknown defense (with suggestions), unknown or ill-typed
            parameter (named), or a value out of range.
    """
    factory = DEFENSES.get(name)
    return factory(build_params(factory.params_type(), params or {}, owner=f"defense {name!r}"), name=name)


def changed_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the values equal to defense ``name``'s defaults: what makes a run of it another
    model (its folder name, its leaderboard row); all of them for a defense that is not registered here."""
    if name not in DEFENSES:
        return dict(params)
    defaults = DEFENSES.get(name).params_type()()
    return {k: v for k, v in params.items() if getattr(defaults, k, object()) != v}


def defend(defense: Defense, model: nn.Module) -> nn.Module:
    """``defense.build(model)``, once: a model already built by a defense is refused.

    Raises:
        ValueError: the model was built by a defense before.
    """
    previous = getattr(model, "defended_by", None)
    if previous is not None:
        raise ValueError(f"the model is already built with defense {previous!r}; build it once")
    model = defense.build(model)
    model.defended_by = defense.name
    return model


def reference_defense() -> str:
    """The name of the registered defense whose class sets ``reference = True`` itself (a subclass of it
    does not inherit the mark): RI's reference, AMR paper Eq. 14.

    Raises:
        ValueError: none or several are so marked.
    """
    marked = [name for name, factory in DEFENSES.items() if vars(factory).get("reference") is True]
    if len(marked) != 1:
        raise ValueError(f"exactly one registered defense must set reference = True; found {marked or 'none'}")
    return marked[0]


# -- the training adversary ------------------------------------------------------------------------

@dataclass(frozen=True)
class AdversaryParams:
    """PGD as adversarial training uses it (Madry et al., ICLR 2018; AMR paper: PGD-10, ε = 8/255, α = 2/255).

    Attributes:
        eps: L∞ radius per target modality, in the [0, 1] input domain.
        rel_step: PGD step as a fraction of ``eps`` (0.25 → α = 2/255).
        steps: PGD iterations.
        random_start: start from a uniform point of the ε-ball.
    """

    eps: float = 8 / 255
    rel_step: float = 0.25
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        check_number("eps", self.eps, 0.0, 1.0, low_open=True)
        check_number("rel_step", self.rel_step, 0.0, low_open=True)
        check_number("steps", self.steps, 1, integer=True)
        check_flag("random_start", self.random_start)


class TrainingAdversary:
    """The inner maximisation of adversarial training: PGD examples of a training batch.

    * It is the native engine with every sample attacked (``attack_all``: a
      sample the model gets wrong is perturbed too) for all its steps, keeping
      the last iterate, as in Madry et al.; no forward checks the examples,
      since training needs the examples, not whether they fool the model.
    * It attacks the model in eval mode (BatchNorm running statistics, no
      dropout), so the inner loop leaves the running statistics alone; the
      caller's mode is restored.
    * It differentiates with respect to the inputs only: the parameters'
      ``.grad`` are untouched.
    * Its random starts come from the training context's generator, so a run
      is reproducible.

    Example::

        adversary = TrainingAdversary(AdversaryParams(steps=10))
        attacked = adversary(model, batch, ("rgb", "skeleton"), ctx.generator)
    """

    def __init__(self, params: AdversaryParams | None = None) -> None:
        self.params = params or AdversaryParams()
        p = self.params
        self.engine = SignGradientAttack(Schedule(steps=p.steps, rel_step=p.rel_step, random_start=p.random_start,
                                                  early_stop=False, final_check=False))

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str],
                 generator: torch.Generator | None) -> Batch:
        """The batch with ``targets`` replaced by their PGD examples; other modalities and the label as given."""
        was_training = model.training
        model.eval()
        try:
            result = self.engine(model, batch, targets, self.params.eps, attack_all=True,
                                 starts=_starts(generator, len(batch["label"])))
        finally:
            model.train(was_training)
        return {k: (v.detach() if k in targets else v) for k, v in result.batch.items()}


def _starts(generator: torch.Generator | None, size: int) -> RandomStarts:
    """Random starts for one training batch, seeded from the training context's generator (else the global RNG)."""
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return RandomStarts.numbered(size, seed)


# -- combining defenses ----------------------------------------------------------------------------

def combine(*names: str) -> type[Defense]:
    """One defense made of the registered defenses ``names``, applied in order.

    Its parameters are the union of theirs (a name used by two is an error);
    ``build``, ``before_epoch`` and ``after_training`` run each part's in order; the training
    loss and the surrogate come from the one part that defines each (two
    parts defining the same one is an error); ``requires`` is the union.
    The parts are looked up by name when the combination is first built, so
    a file may register a combination of defenses it does not import.

    Example::

        register_defense("minsim+exfmem", combine("minsim", "exfmem"))
    """
    if len(names) < 2:
        raise ValueError(f"combine needs at least two defenses, got {names}")

    class Combination(Defense):
        parts: ClassVar[tuple[str, ...]] = names
        _params: ClassVar[type | None] = None

        @classmethod
        def params_type(cls) -> type:
            if cls._params is None:
                cls._params = cls.Params = _union_params(names)
            return cls._params

        def __init__(self, params: Any = None, name: str = "") -> None:
            params = params if params is not None else self.params_type()()
            super().__init__(params, name)
            self.members = [_member(part, params, name) for part in names]
            self.requires = tuple(dict.fromkeys(m for member in self.members for m in member.requires))
            self._loss = _the_one(self.members, "loss", names)
            self._surrogate = _the_one(self.members, "surrogate", names)

        def build(self, model: nn.Module) -> nn.Module:
            for member in self.members:
                model = member.build(model)
            return model

        def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
            return self._loss.loss(model, batch, ctx) if self._loss else super().loss(model, batch, ctx)

        def before_epoch(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
            for member in self.members:
                member.before_epoch(model, train, ctx)

        def after_training(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
            for member in self.members:
                member.after_training(model, train, ctx)

        def surrogate(self, model: nn.Module) -> nn.Module | None:
            return self._surrogate.surrogate(model) if self._surrogate else None

        def adaptive(self, model: nn.Module) -> dict[str, nn.Module]:
            views: dict[str, nn.Module] = {}
            for member in self.members:
                for view, module in member.adaptive(model).items():
                    if view in views:
                        raise ValueError(f"{' and '.join(names)} both declare an adaptive view {view!r}")
                    views[view] = module
            return views

    Combination.__qualname__ = Combination.__name__ = "Combination_" + "_".join(n.replace("-", "_") for n in names)
    Combination.__doc__ = f"The defenses {', '.join(names)} applied in order (:func:`mmrobust.defense.combine`)."
    return Combination


def _union_params(names: Sequence[str]) -> type:
    fields, owners = [], {}
    for part in names:
        for f in dataclasses.fields(DEFENSES.get(part).params_type()):
            if f.name in owners:
                raise ValueError(f"cannot combine {' and '.join(names)}: both {owners[f.name]!r} and {part!r} have "
                                 f"a parameter {f.name!r}")
            owners[f.name] = part
            default = (dataclasses.field(default_factory=f.default_factory)
                       if f.default_factory is not dataclasses.MISSING else dataclasses.field(default=f.default))
            fields.append((f.name, f.type, default))

    def __post_init__(self) -> None:
        for part in names:  # each part's own range checks
            _part_params(part, self)

    return dataclasses.make_dataclass("Params", fields, frozen=True, namespace={"__post_init__": __post_init__})


def _part_params(part: str, params: Any) -> Any:
    params_type = DEFENSES.get(part).params_type()
    return params_type(**{f.name: getattr(params, f.name) for f in dataclasses.fields(params_type)})


def _member(part: str, params: Any, name: str) -> Defense:
    return DEFENSES.get(part)(_part_params(part, params), name=name)


def _the_one(members: Sequence[Defense], hook: str, names: Sequence[str]) -> Defense | None:
    defining = [m for m in members if getattr(type(m), hook) is not getattr(Defense, hook)]
    if len(defining) > 1:
        raise ValueError(f"cannot combine {' and '.join(names)}: more than one defines {hook}")
    return defining[0] if defining else None
