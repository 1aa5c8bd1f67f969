"""Every registered backbone meets the contract of :class:`mmrobust.backbones.base.Backbone`.

Parametrised over the registry when the tests are collected, so a backbone
added as a module of ``mmrobust/backbones/`` or through a third-party entry
point is tested here without editing this file. Each test builds the small
instance the backbone's ``example()`` gives (the ``tiny`` preset's
configuration for the built-in ones) and runs a batch of two on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from mmrobust.backbones.base import Backbone, count_parameters
from mmrobust.memory import checkpoint_blocks
from mmrobust.presets import PRESETS
from mmrobust.registry import BACKBONES

NAMES = BACKBONES.names()
#: Parameters of the built-in examples; a change here changes every tiny-preset model.
PARAMETERS = {"i3d": 90_548, "hcn": 164_320}


def build(name: str, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return BACKBONES.get(name).example().eval()


def example_input(name: str, batch: int = 2) -> torch.Tensor:
    return BACKBONES.get(name).example_input(batch, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
def test_stages_then_embed_give_one_embedding_per_sample(name):
    backbone, x = build(name), example_input(name, batch=2)
    with torch.no_grad():
        feature = backbone.normalize(x)
        for stage_name, stage in backbone.stages.items():
            feature = stage(feature)
            pooled = backbone.pool_map(feature)
            assert pooled.shape[0] == 2 and pooled.ndim == 2, f"pool_map after {stage_name}: {tuple(pooled.shape)}"
        embedding = backbone.embed(feature)
        assert embedding.shape == (2, backbone.embedding_dim)
        assert torch.isfinite(embedding).all()
        torch.testing.assert_close(backbone(x), embedding, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_stage_names_are_unique_and_in_execution_order(name):
    backbone = build(name)
    names = backbone.stage_names
    assert names and all(names) and len(set(names)) == len(names)
    assert names == list(backbone.stages.keys())


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_builds_the_same_weights(name):
    first, second = build(name, seed=3), build(name, seed=3)
    assert count_parameters(first) == count_parameters(second) > 0
    for (key, a), (other, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert key == other and torch.equal(a, b), key


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_input(name):
    backbone = build(name)
    x = example_input(name).requires_grad_()
    backbone(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_checkpointed_blocks_leave_a_training_step_bit_identical(name):
    plain, checkpointed = build(name, seed=2).train(), build(name, seed=2).train()
    checkpoint_blocks(checkpointed)
    gradients = []
    for backbone in (plain, checkpointed):
        x = example_input(name).requires_grad_()
        torch.manual_seed(4)
        backbone(x).square().sum().backward()
        torch.optim.SGD(backbone.parameters(), lr=0.1).step()
        gradients.append(x.grad)
    assert torch.equal(*gradients)
    for (key, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key  # weights, and BatchNorm statistics updated once per forward


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_builtin_examples_have_their_pinned_size_and_are_the_tiny_presets(name):
    example = build(name)
    assert count_parameters(example) == PARAMETERS[name]
    modality, (_, options) = next((m, spec) for m, spec in PRESETS["tiny"].backbones.items() if spec[0] == name)
    tiny = BACKBONES.get(name).from_input_shape(BACKBONES.get(name).example_shape, **options)
    shapes = {key: value.shape for key, value in example.state_dict().items()}
    assert shapes == {key: value.shape for key, value in tiny.state_dict().items()}, \
        f"the example drifted from the tiny preset's {modality} branch"
