"""APGD-CE and APGD-T: the published schedule, per-modality radii, and parity with a reference implementation.

The reference is pyautoattack 0.2.0 (``pyautoattack.autopgd_base``, the
AutoAttack authors' APGD packaged for pip; installed with ``--no-deps`` by the
Makefile: it declares torchvision, which this module never imports). On a
one-modality model with 5-D inputs, the native attacks must leave no more
samples robust than the reference with the same iterations and targets.
"""

from __future__ import annotations

import pytest
import torch

import pyautoattack.autopgd_base as pyautoattack  # `make setup` installs it (pyautoattack==0.2.0, --no-deps)

from mmrobust.attack import RandomStarts, build_attack
from mmrobust.registry import ATTACKS
from test_attacks import SHAPES, TinyNet, make_batch, train
from test_attacks import one_thread  # noqa: F401  (fixture: one thread for the module)


def test_checkpoints_follow_the_published_schedule():
    checkpoints = __import__(ATTACKS.get("apgd-ce").__module__, fromlist=["checkpoints"]).checkpoints
    # p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): windows 22, 19, 16, 13, 10, 7, 6, 6 of 100.
    assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert checkpoints(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # windows 2, then the shortest, 1


@pytest.mark.parametrize("seed", [0, 1])
def test_native_apgd_leaves_no_more_samples_robust_than_the_reference(seed):
    shapes = {"rgb": (3, 4, 6, 6)}
    torch.manual_seed(seed)
    model = train(TinyNet(shapes, hidden=32), shapes)
    batch = make_batch(200, seed=10 + seed, shapes=shapes)
    eps = 4 / 255

    def forward(x):
        return model({"rgb": x})

    with torch.no_grad():
        clean = forward(batch["rgb"]).argmax(1) == batch["label"]
    starts = RandomStarts.numbered(len(clean), seed)
    native_ce = build_attack("apgd-ce")(model, batch, ("rgb",), eps, starts=starts)
    native_t = build_attack("apgd-t")(model, batch, ("rgb",), eps, starts=starts)
    reference_ce = pyautoattack.APGDAttack(forward, n_iter=100, eps=eps, seed=seed, loss="ce", device="cpu")
    reference_t = pyautoattack.APGDAttack_targeted(forward, n_iter=100, eps=eps, seed=seed, device="cpu",
                                                   n_target_classes=3)  # 4 classes: 3 targets, as natively
    robust = {}
    for name, attack in (("ce", reference_ce), ("t", reference_t)):
        adversarial = attack.perturb(batch["rgb"].clone(), batch["label"].clone())
        assert (adversarial - batch["rgb"]).abs().max() <= eps + 1e-6
        with torch.no_grad():
            robust[name] = int(((forward(adversarial).argmax(1) == batch["label"]) & clean).sum())
    assert 0 < robust["ce"] < int(clean.sum())  # the comparison has samples on both sides
    assert int((~native_ce.fooled).sum()) <= robust["ce"]
    assert int((~native_t.fooled).sum()) <= robust["t"]


def test_every_modality_moves_within_its_own_radius_by_the_same_fraction():
    torch.manual_seed(0)
    model = train(TinyNet(SHAPES, output=True), SHAPES)
    batch = make_batch(32, seed=3)
    eps = {"rgb": 8 / 255, "skeleton": 2 / 255, "depth": 4 / 255}
    for name in ("apgd-ce", "apgd-t"):
        result = build_attack(name, steps=20)(model, batch, tuple(eps), eps,
                                               starts=RandomStarts.numbered(32, 0))
        for m, radius in eps.items():
            moved = (result.batch[m] - batch[m]).abs()
            assert moved.max() <= radius + 1e-6 and moved.max() > radius / 2, (name, m)


def test_apgd_t_needs_four_classes():
    class ThreeClasses(torch.nn.Module):
        def forward(self, batch):
            return batch["rgb"].flatten(1)[:, :3] * 10

    batch = {"rgb": torch.rand(4, 3, 2, 2, 2), "label": torch.tensor([0, 1, 2, 0])}
    with pytest.raises(ValueError, match="'apgd-t' needs at least 4 classes.*has 3"):
        build_attack("apgd-t")(ThreeClasses(), batch, ("rgb",), 8 / 255)
