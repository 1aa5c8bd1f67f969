"""The synthetic dataset does what it is for: fusion matters, and it is calibrated.

Trained for eight epochs from scratch (tiny preset), the fused model must
reach at least 90 % clean accuracy on the test subjects, and each
single-modality model must stay at least 10 points below it: three class pairs
differ only in a held object (RGB sees it, the joints do not) and three only
in motion in depth (the 3-D skeleton sees it, the orthographic video does not).

Calibration: as on both real datasets of the AMR paper (Fig. 2, Table 1), the
undefended fused model is more robust with its skeleton attacked than with its
video attacked, under FGSM and under PGD-20 (standard-v1 settings). Eight
epochs from scratch leave the balance between the streams partly to chance,
and which seeds show it depends on the CPU model: PGD-20 shows the ordering on
every seed, FGSM on most (``benchmarks/calibration.py`` at one thread: 3 of
seeds 0–3 on an Intel Xeon, 2 of 0–3 and 4 of 0–5 on an AMD EPYC, where
seeds 0 and 1 are the two exceptions). So PGD-20 is checked on each of
training seeds 0–3 and FGSM on their mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrobust.config import RunConfig
from mmrobust.protocol import evaluate, get_protocol
from mmrobust.run import prepare
from mmrobust.training import predict, train

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2, 3)  # training seeds of the fused model in the calibration check
EPOCHS = 8
EVALUATED = 270  # test clips scored: an even stride over the test split (every subject and class)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple]:
    """Model and data per modality set (and a second seed of the fused model), trained once for the module."""
    results = {}
    runs = [(("rgb", "skeleton"), 0), (("rgb",), 0), (("skeleton",), 0)] + [(("rgb", "skeleton"), s) for s in SEEDS[1:]]
    for modalities, seed in runs:
        exp = prepare(RunConfig(modalities=modalities, seed=seed, epochs=EPOCHS), progress=False)
        run_dir = tmp_path_factory.mktemp("_".join(modalities))
        train(exp.model, exp.defense, exp.data.train, exp.config, exp.config.epochs, run_dir,
              device=exp.device, progress=False)
        test = exp.data.test
        test = test.take(np.arange(0, len(test), len(test) // EVALUATED))
        results["+".join(modalities) + ("" if seed == 0 else f"@{seed}")] = (exp.model, test, exp.device)
    return results


@pytest.fixture(scope="module")
def accuracies(trained) -> dict[str, float]:
    results = {}
    for name, (model, test, device) in trained.items():
        if "@" in name:
            continue
        predictions = predict(model, test, 64, device, tuple(name.split("+")))
        results[name] = 100.0 * float((predictions == torch.from_numpy(test.labels)).float().mean())
    return results


def test_fused_model_reaches_90_percent(accuracies):
    assert accuracies["rgb+skeleton"] >= 90.0, accuracies


@pytest.mark.parametrize("single", ["rgb", "skeleton"])
def test_each_modality_alone_is_at_least_10_points_below_fusion(accuracies, single):
    assert accuracies[single] <= accuracies["rgb+skeleton"] - 10.0, accuracies


def test_undefended_skeleton_stream_is_more_robust_than_rgb(trained):
    protocol = get_protocol("standard-v1", attacks=("fgsm", "pgd20"))
    robust = []
    for name in ["rgb+skeleton"] + [f"rgb+skeleton@{seed}" for seed in SEEDS[1:]]:
        model, test, device = trained[name]
        evaluation = evaluate(model, test, protocol, modalities=("rgb", "skeleton"), device=device)
        robust.append({attack: {target: 100.0 * float(np.mean(outcome)) for target, outcome in cells.items()}
                       for attack, cells in evaluation.robust.items()})
    for seed in robust:
        assert seed["pgd20"]["S"] > seed["pgd20"]["R"], robust
    mean = {target: np.mean([seed["fgsm"][target] for seed in robust]) for target in ("R", "S")}
    assert mean["S"] > mean["R"], robust
