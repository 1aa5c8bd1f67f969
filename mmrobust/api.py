"""The Python entry point for evaluating any model under a protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mmrobust.datasets.base import RGB, SKELETON, DatasetBundle, Split
from mmrobust.metrics import robust_metrics
from mmrobust.protocol import Protocol, evaluate as run_protocol, get_protocol, ordering_checks


def evaluate(model: nn.Module, data: DatasetBundle | Split | Mapping[str, Any],
             protocol: str | Protocol = "standard-v1", *, batch_size: int = 64,
             device: torch.device | str | None = None, surrogate: nn.Module | None = None,
             views: Mapping[str, nn.Module] | None = None, transfer: nn.Module | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` under ``protocol`` and return the metrics of a result record.

    Args:
        model: any ``nn.Module`` that takes the batch dict (``{"rgb": (B, 3, T, H, W),
            "skeleton": (B, C, T, V, M)}``, values in [0, 1]) and returns logits or
            a :class:`mmrobust.model.ModelOutput`. It is put in eval mode for the
            evaluation and restored after.
        data: a dataset (its test split is used), a split, or a mapping of
            whole-set arrays/tensors with ``label`` (N,) and one entry per modality.
        protocol: a protocol name or object (``"standard-v1"``, ``"strong-v1"``).
        device: where to run; default the model's device.
        surrogate: a differentiable stand-in attacked as well (BPDA).
        views: ``strong-v1``: differentiable views of the model to attack too
            (name -> module); their examples are judged on ``model``.
        transfer: ``strong-v1``: an undefended model of the same data whose
            examples are judged on ``model`` (the transfer indicator).

    Checks, before any attack: every modality finite and in [0, 1] (else ValueError naming it and its
    range) and the model's clean logits finite (else ValueError); the returned flags are those of a
    record: sanity checks (deterministic forward, finite non-zero gradients, a huge ε breaks the model,
    budgets kept, untargeted inputs untouched, verdicts confirmed, PGD ≤ FGSM, ✗RS ≤ min) and, under
    strong-v1, the attack-failure indicators.

    Returns:
        ``{"clean": ..., "clean_ci": ..., "n": ..., "attacks": {"fgsm": {"R": ..., ...}, ...},
        "flags": {"sanity": {...}, "indicators": {...}}}`` (percent), as in
        ``result.json``; RI needs a reference and is left None. A skeleton
        named ``skeleton`` has its empty person slots pinned (not perturbed).

    Example::

        import mmrobust
        metrics = mmrobust.evaluate(my_model, {"rgb": videos, "skeleton": joints, "label": labels})
        metrics["attacks"]["pgd20"]["RS"]
    """
    padding = {m.name: m.padding for m in (RGB, SKELETON) if m.padding is not None}
    if isinstance(data, DatasetBundle):
        split, padding = data.test, data.padding
    elif isinstance(data, Split):
        split = data
    elif isinstance(data, Mapping):
        split = Split({k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                       for k, v in data.items()})
    else:
        raise TypeError(f"data must be a DatasetBundle, a Split or a mapping of arrays, got {type(data).__name__}")
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
    modalities = getattr(model, "modalities", None) or split.modalities
    _check_inputs(split, modalities)
    evaluation = run_protocol(model, split, protocol, modalities=modalities, batch_size=batch_size, device=device,
                              surrogate=surrogate, views=views, transfer=transfer, padding=padding,
                              progress=progress)
    metrics = robust_metrics(evaluation.clean, evaluation.robust)
    checks = ordering_checks(protocol, metrics, evaluation.targets, len(evaluation.labels))
    metrics["flags"] = {"sanity": {**evaluation.audit, **checks}, "indicators": evaluation.indicators}
    return metrics


def _check_inputs(split: Split, modalities) -> None:
    """Every modality finite and inside [0, 1], where the attacks' budgets and clamps are defined."""
    for m in modalities:
        if m not in split.arrays:
            raise ValueError(f"the data has no modality {m!r} (it has {', '.join(split.modalities)})")
        values = np.asarray(split.arrays[m])
        if values.dtype == np.uint8:
            raise ValueError(f"modality {m!r} is uint8 (0-255); pass floats in [0, 1]")
        if not np.isfinite(values).all():
            raise ValueError(f"modality {m!r} holds non-finite values; inputs must be finite, in [0, 1]")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"modality {m!r} spans [{low:g}, {high:g}]; inputs must lie in [0, 1] (attack budgets "
                             "are fractions of that range: scale RGB by 1/255, map skeletons as the datasets do)")
