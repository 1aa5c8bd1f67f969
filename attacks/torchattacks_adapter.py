"""Any torchattacks attack on a chosen set of modalities.

torchattacks (Kim, "Torchattacks: A PyTorch Repository for Adversarial
Attacks", 2020, https://github.com/Harry24k/adversarial-attacks-pytorch) attacks
a model of one image tensor. This adapter hands it a single-tensor view of the
targeted modalities and a model that closes over the untargeted ones:

* one target: the modality tensor itself, e.g. (B, 3, T, H, W);
* several targets: each flattened per sample and concatenated, (B, D); the
  wrapped model splits the view and reshapes each part back.

With ``layout="image"`` the view is made 4-D instead, (B, C, ∏middle, last) for
one target and (B, 1, 1, D) for several, for attacks that assume images
(APGD, Square). All these views are plain reshapes, so an element-wise L∞
attack (FGSM, PGD) does exactly the same arithmetic on either.

Distance: L∞ with one ε for the whole view. torchattacks takes one ε per call,
so unequal per-modality radii are refused; use the native engine (``fgsm``,
``pgd``, ``cw-inf``) for those.

Arguments:
    attack (str): torchattacks class name ("PGD", "FGSM", "APGD", ...).
        Default "PGD".
    options (dict): keyword arguments for that class's constructor besides
        ``model`` and ``eps`` (e.g. ``steps``, ``alpha``). Default {}.
    layout (str): "native" or "image", as above. Default "native".

Samples misclassified clean are not attacked. There is no early stop:
the outcome comes from one forward on the final adversarial batch.
``gradient_passes`` counts the wrapped model's forwards run with autograd on
the view (an estimate: torchattacks may run such a forward without a backward);
``forward_passes`` counts the others plus the clean and final checks. The
model's train/eval mode, which torchattacks switches to eval during the
attack, is restored module by module afterwards.

torchattacks draws its random starts from the global RNG for the whole batch
it sees. So that a sample's outcome does not depend on its batch, the adapter
hands torchattacks one sample at a time, with the global RNG seeded from that
sample's (seed, sample id) inside a forked RNG state: results are the same at
any batch size and the caller's RNG is left alone. (Slower than whole
batches; the native engine is the fast path.) On the CPU and one target,
torchattacks.PGD then starts from the very noise the native engine draws for
that sample. ``max_batch`` has no effect here.

Input: the batch dict, every modality float in [0, 1], ``label`` int64 (B,).
Requires torchattacks 3.5.1, installed with
``pip install --no-deps torchattacks==3.5.1``.

Example::

    from mmrobust.attack import build_attack

    apgd = build_attack("ta:APGD", layout="image", steps=10)
    result = apgd(model, batch, targets=("rgb", "skeleton"), eps=8 / 255)
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmrobust.attack import (LABEL, Attack, AttackResult, Eps, RandomStarts, check_starts, clean_fooled,
                             labels_of, resolve_eps, resolve_targets, take)
from mmrobust.model import Batch, logits_of
from mmrobust.registry import ATTACKS, register_attack

INSTALL_HINT = "pip install --no-deps torchattacks==3.5.1"
LAYOUTS = ("native", "image")
_TOLERANCE = 1e-6  # float rounding of x ± ε near 1


def import_torchattacks() -> Any:
    """The torchattacks module, or an ImportError that says how to install it."""
    try:
        import torchattacks
    except ImportError as error:
        raise ImportError(
            f"torchattacks is not installed; install it with `{INSTALL_HINT}` (it declares torchvision and an "
            "old requests that it never imports; a plain install would pull another torch)"
        ) from error
    return torchattacks


def attack_class(name: str) -> type:
    """The torchattacks attack class called ``name`` (case-insensitive if unique)."""
    torchattacks = import_torchattacks()
    base = torchattacks.attack.Attack
    classes = {n: c for n in dir(torchattacks) if isinstance(c := getattr(torchattacks, n), type)
               and issubclass(c, base) and c is not base}
    if name in classes:
        return classes[name]
    folded = [n for n in classes if n.lower() == name.lower()]
    if len(folded) == 1:
        return classes[folded[0]]
    close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"available: {', '.join(sorted(classes))}"
    raise ValueError(f"torchattacks has no attack {name!r}; {hint}")


def check_options(cls: type, options: Mapping[str, Any]) -> None:
    """Reject constructor arguments ``cls`` does not take; ``eps`` comes per call."""
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in list(signature.parameters)[1:] if p != "model"]
    if "eps" not in accepted:
        raise ValueError(f"torchattacks.{cls.__name__} takes no eps: it is not bounded by an L∞ radius, "
                         "so it cannot run under this benchmark's ε budgets")
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    valid = [p for p in accepted if p != "eps" and signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    for key in options:
        if key == "eps":
            raise ValueError(f"torchattacks.{cls.__name__}: do not pass eps as an option; it is given per call")
        if key not in valid and not open_ended:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"torchattacks.{cls.__name__} has no parameter {key!r}; {hint}valid: {', '.join(valid)}")


def to_view(sub: Batch, targets: Sequence[str], layout: str) -> torch.Tensor:
    """The single tensor torchattacks attacks (see the module docstring)."""
    if len(targets) == 1:
        x = sub[targets[0]]
        if layout == "native" or x.dim() == 4:
            return x
        if x.dim() > 4:
            return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])
        return x.reshape(x.shape[0], 1, 1, -1)
    flat = torch.cat([sub[m].flatten(1) for m in targets], dim=1)
    return flat if layout == "native" else flat.reshape(flat.shape[0], 1, 1, -1)


def from_view(view: torch.Tensor, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Split a view of N samples back into its modalities."""
    n = view.shape[0]
    sizes = [math.prod(shape) for shape in shapes.values()]
    parts = view.reshape(n, -1).split(sizes, dim=1)
    return {m: part.reshape(n, *shape) for (m, shape), part in zip(shapes.items(), parts)}


class ClosedModel(nn.Module):
    """The model as a function of the view alone, the other modalities fixed.

    Args:
        model: the multimodal model.
        sub: the one attacked sample's batch (all modalities and the label).
        targets: modalities the view holds.
        clean_view: the view of ``sub``.
        eps: the L∞ radius every legitimate row stays within.

    Every row of a call is a version of that one sample (torchattacks may call
    the model on several candidates at once).
    """

    def __init__(self, model: nn.Module, sub: Batch, targets: Sequence[str], clean_view: torch.Tensor,
                 eps: float) -> None:
        super().__init__()
        self.model = model
        self.sub = sub
        self.targets = tuple(targets)
        self.shapes = {m: sub[m].shape[1:] for m in self.targets}
        self.view_shape = tuple(clean_view.shape[1:])
        self.gradient_passes = 0
        self.forward_passes = 0

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        if tuple(view.shape[1:]) != self.view_shape:
            raise ValueError(f"the model was called with shape {tuple(view.shape)}, "
                             f"expected (N, {', '.join(map(str, self.view_shape))})")
        rows = view.shape[0]
        inputs = dict(self.sub) if rows == 1 else take(self.sub, torch.zeros(rows, dtype=torch.long))
        inputs.update(from_view(view, self.shapes))
        if torch.is_grad_enabled() and view.requires_grad:
            self.gradient_passes += view.shape[0]
        else:
            self.forward_passes += view.shape[0]
        return logits_of(self.model(inputs))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG with ``seed`` in a forked RNG state."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Params:
    attack: str = "PGD"
    options: dict[str, Any] = field(default_factory=dict)
    layout: str = "native"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


@register_attack("torchattacks")
class TorchAttack(Attack):
    """A torchattacks attack run on a single-tensor view of the targets."""

    Params = Params
    example = {"attack": "PGD", "options": {"steps": 5, "alpha": 1 / 255}}

    def __init__(self, params: Params | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.attack_class = attack_class(self.params.attack)
        check_options(self.attack_class, self.params.options)
        self.name = name or f"{PREFIX}{self.attack_class.__name__}"

    def __call__(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps, *,
                 clean_logits: torch.Tensor | None = None,
                 starts: RandomStarts | None = None, max_batch: int | None = None) -> AttackResult:
        size = labels_of(batch).shape[0]
        starts = starts if starts is not None else RandomStarts.numbered(size)
        check_starts(starts, size)
        if size == 1:
            return self._attack_one(model, batch, targets, eps, clean_logits, starts.seed_of(0, 0))
        if size == 0:
            resolve_eps(eps, resolve_targets(batch, targets), batch)  # bad arguments fail even without samples
            return AttackResult(dict(batch), torch.zeros(0, dtype=torch.bool, device=labels_of(batch).device))
        # One sample at a time, each from its own seed: see the module docstring.
        parts = [self._attack_one(model, take(batch, slice(i, i + 1)), targets, eps,
                                  None if clean_logits is None else clean_logits[i:i + 1],
                                  starts.seed_of(i, 0)) for i in range(size)]
        merged = {k: torch.cat([p.batch[k] for p in parts]) if isinstance(v, torch.Tensor) and v.dim() > 0
                  and v.shape[0] == size else v for k, v in batch.items()}
        merged.update({k: batch[k] for k in batch if k not in targets})  # untargeted: the very same tensors
        return AttackResult(merged, torch.cat([p.fooled for p in parts]),
                            sum(p.gradient_passes for p in parts), sum(p.forward_passes for p in parts))

    def _attack_one(self, model: nn.Module, batch: Batch, targets: Sequence[str], eps: Eps,
                    clean_logits: torch.Tensor | None, seed: int) -> AttackResult:
        targets = resolve_targets(batch, targets)
        radius = resolve_eps(eps, targets, batch)
        if len(set(radius.values())) > 1:
            raise ValueError(f"torchattacks takes one eps per call, but the targets have different radii "
                             f"({', '.join(f'{m}={e:.6g}' for m, e in radius.items())}); use the native engine "
                             "(fgsm, pgd, cw-inf) for per-modality radii")
        epsilon = radius[targets[0]]
        fooled, forward_passes = clean_fooled(model, batch, clean_logits)
        attacked = (~fooled).nonzero().squeeze(1)
        if attacked.numel() == 0:
            return AttackResult(dict(batch), fooled, 0, forward_passes)

        sub = take(batch, attacked)
        clean_view = to_view(sub, targets, self.params.layout)
        closed = ClosedModel(model, sub, targets, clean_view, epsilon)
        name = f"torchattacks.{self.attack_class.__name__}"
        with contextlib.redirect_stdout(io.StringIO()):  # its constructor may print about devices
            attack = self.attack_class(closed, eps=epsilon, **self.params.options)
        attack.set_device(clean_view.device)
        modes = [(module, module.training) for module in model.modules()]
        try:
            with torch.enable_grad(), _seeded(seed, clean_view.device):
                adversarial_view = attack(clean_view, sub[LABEL])
        except (MemoryError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as error:
            raise ValueError(f"{name} cannot attack the {self.params.layout} view of shape "
                             f"{tuple(clean_view.shape)} (targets: {', '.join(targets)}): {error}") from error
        finally:
            for module, training in modes:
                module.training = training

        if not isinstance(adversarial_view, torch.Tensor) or adversarial_view.shape != clean_view.shape:
            found = tuple(adversarial_view.shape) if isinstance(adversarial_view, torch.Tensor) else adversarial_view
            raise ValueError(f"{name} returned {found}, expected shape {tuple(clean_view.shape)}")
        adversarial_view = adversarial_view.detach().to(clean_view.dtype)
        excess = (adversarial_view - clean_view).abs().amax().item()
        if not excess <= epsilon + _TOLERANCE or adversarial_view.min() < -_TOLERANCE \
                or adversarial_view.max() > 1 + _TOLERANCE:
            raise ValueError(f"{name} left the budget: max |δ| = {excess:.6g} for eps = {epsilon:.6g}, or values "
                             "outside [0, 1]; its results would not be comparable")
        parts = {m: part.clamp(0, 1) for m, part in from_view(adversarial_view, closed.shapes).items()}

        with torch.no_grad():
            logits = logits_of(model({**sub, **parts}))
        forward_passes += attacked.numel() + closed.forward_passes
        fooled[attacked] = logits.argmax(dim=1) != sub[LABEL]
        adversarial = {}
        for m in targets:
            adversarial[m] = batch[m].clone()
            adversarial[m][attacked] = parts[m]
        return AttackResult({**batch, **adversarial}, fooled, closed.gradient_passes, forward_passes)


class ByClassName:
    """What ``ta:<Class>`` names in the attack registry: the adapter for one torchattacks class.

    ``build_attack("ta:APGD", layout="image", steps=10)`` creates
    ``TorchAttack(Params(attack="APGD", options={"steps": 10}, layout="image"))``.
    """

    Params = Params

    def __init__(self, class_name: str) -> None:
        self.class_name = attack_class(class_name).__name__  # unknown names fail here, with suggestions

    def create(self, name: str, values: Mapping[str, Any]) -> TorchAttack:
        options = dict(values)
        layout = options.pop("layout", "native")
        return TorchAttack(Params(attack=self.class_name, options=options, layout=layout),
                           name=f"{PREFIX}{self.class_name}")


PREFIX = "ta:"
ATTACKS.register_family(PREFIX, ByClassName)
