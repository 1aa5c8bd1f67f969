"""Describe a preset's model: stages, output shapes, parameter counts."""

from __future__ import annotations

from typing import Any

import torch

from mmrobust.backbones.base import count_parameters
from mmrobust.presets import build_model, get_preset
from mmrobust.model import stage_shapes


def describe_model(preset_name: str, num_classes: int,
                   skeleton_shape: tuple[int, int | None, int, int] = (3, None, 25, 2)) -> dict[str, Any]:
    """Per-branch stages with per-sample output shapes and parameter counts.

    ``skeleton_shape`` is (C, T, V, M); T None takes the preset's frame count.
    A branch's ``parameters`` is its whole backbone, classifier excluded.
    """
    preset = get_preset(preset_name)
    shapes = preset.input_shapes(skeleton_shape)
    model = build_model(preset, shapes, num_classes).eval()
    batch = {k: torch.rand(1, *s) for k, s in shapes.items()}
    stage_out = stage_shapes(model, batch)
    branches = {}
    for modality, branch in model.branches.items():
        name, options = preset.backbones[modality]
        stages = [{"name": stage, "shape": list(shape), "parameters": count_parameters(branch.stages[stage])}
                  for stage, shape in stage_out[modality]]
        branches[modality] = {
            "backbone": name, "options": options, "input_shape": list(shapes[modality]),
            "stages": stages, "embedding_dim": branch.embedding_dim, "parameters": count_parameters(branch),
        }
    head = count_parameters(model.head)
    return {"preset": preset.name, "num_classes": num_classes, "branches": branches,
            "head": {"parameters": head}, "total_parameters": count_parameters(model)}
