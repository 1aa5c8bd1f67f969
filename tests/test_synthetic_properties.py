"""The synthetic dataset does what it is for: fusion matters.

Trained with the default recipe (tiny preset, the dataset's epochs), the fused
model must reach at least 90 % clean accuracy on the test subjects, and each
single-modality model must stay at least 10 points below it: three class pairs
differ only in a held object (RGB sees it, the joints do not) and three only
in motion in depth (the 3-D skeleton sees it, the orthographic video does not).
"""

from __future__ import annotations

import pytest
import torch

from mmrobust.config import RunConfig
from mmrobust.run import prepare
from mmrobust.training import predict, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory) -> dict[str, float]:
    results = {}
    for modalities in (("rgb", "skeleton"), ("rgb",), ("skeleton",)):
        exp = prepare(RunConfig(modalities=modalities), progress=False)
        run_dir = tmp_path_factory.mktemp("_".join(modalities))
        train(exp.model, exp.defense, exp.data.train, exp.config, exp.config.epochs, run_dir,
              device=exp.device, progress=False)
        predictions = predict(exp.model, exp.data.test, 64, exp.device, modalities)
        labels = torch.from_numpy(exp.data.test.labels)
        results["+".join(modalities)] = 100.0 * float((predictions == labels).float().mean())
    return results


def test_fused_model_reaches_90_percent(accuracies):
    assert accuracies["rgb+skeleton"] >= 90.0, accuracies


@pytest.mark.parametrize("single", ["rgb", "skeleton"])
def test_each_modality_alone_is_at_least_10_points_below_fusion(accuracies, single):
    assert accuracies[single] <= accuracies["rgb+skeleton"] - 10.0, accuracies
