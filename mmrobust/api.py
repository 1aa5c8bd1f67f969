"""The Python entry point for evaluating any model under a protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mmrobust.datasets.base import DatasetBundle, Split
from mmrobust.metrics import robust_metrics
from mmrobust.protocol import Protocol, evaluate as run_protocol, get_protocol


def evaluate(model: nn.Module, data: DatasetBundle | Split | Mapping[str, Any],
             protocol: str | Protocol = "standard-v1", *, batch_size: int = 64,
             device: torch.device | str | None = None, surrogate: nn.Module | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` under ``protocol`` and return the metrics of a result record.

    Args:
        model: any ``nn.Module`` that takes the batch dict (``{"rgb": (B, 3, T, H, W),
            "skeleton": (B, C, T, V, M)}``, values in [0, 1]) and returns logits or
            a :class:`mmrobust.model.ModelOutput`. It is put in eval mode for the
            evaluation and restored after.
        data: a dataset (its test split is used), a split, or a mapping of
            whole-set arrays/tensors with ``label`` (N,) and one entry per modality.
        protocol: a protocol name or object (``"standard-v1"``).
        device: where to run; default the model's device.
        surrogate: a differentiable stand-in attacked as well (BPDA).

    Returns:
        ``{"clean": ..., "clean_ci": ..., "n": ..., "attacks": {"fgsm": {"R": ..., ...}, ...}}``
        (percent), as in ``result.json``; RI needs a reference and is left None.

    Example::

        import mmrobust
        metrics = mmrobust.evaluate(my_model, {"rgb": videos, "skeleton": joints, "label": labels})
        metrics["attacks"]["pgd20"]["RS"]
    """
    if isinstance(data, DatasetBundle):
        split = data.test
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
    evaluation = run_protocol(model, split, protocol, modalities=modalities, batch_size=batch_size, device=device,
                              surrogate=surrogate, progress=progress)
    return robust_metrics(evaluation.clean, evaluation.robust)
