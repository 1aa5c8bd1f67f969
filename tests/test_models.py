"""Backbones and MultimodalNet: published sizes, shapes, stage names, mixers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mmrobust.backbones.base import count_parameters
from mmrobust.backbones.hcn import HCN
from mmrobust.backbones.i3d import I3D
from mmrobust.cli import cli
from mmrobust.model import Mixer, ModelOutput, MultimodalNet, stage_shapes
from mmrobust.presets import PRESETS, build_model
from mmrobust.registry import BACKBONES

TINY_SHAPES = {"rgb": (3, 8, 32, 32), "skeleton": (3, 32, 25, 2)}
CLASSES = 18


def _batch(shapes, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, *s, generator=generator) for m, s in shapes.items()}


@pytest.fixture(scope="module")
def tiny_model() -> MultimodalNet:
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"], TINY_SHAPES, CLASSES).eval()


# -- published parameter counts -------------------------------------------------------

def test_i3d_at_width_1_has_the_published_parameter_count():
    assert count_parameters(I3D(width=1.0)) == 12_287_264


def test_hcn_at_width_1_has_the_published_parameter_count():
    hcn = HCN(width=1.0, num_joints=25, num_frames=32)
    assert count_parameters(hcn) == 769_472
    assert hcn.embedding_dim == 256
    classifier = nn.Linear(256, 60)  # skelact's fc8 for NTU-60
    assert count_parameters(hcn) + count_parameters(classifier) == 784_892


def test_hcn_fc7_grows_with_the_clip_length():
    hcn = HCN(width=1.0, num_joints=25, num_frames=64)
    assert count_parameters(hcn) + count_parameters(nn.Linear(256, 60)) == 1_047_036


def test_backbones_are_registered_under_their_names():
    assert BACKBONES.get("i3d") is I3D
    assert BACKBONES.get("hcn") is HCN


def test_model_info_json_reports_the_paper_sizes():
    result = CliRunner().invoke(cli, ["model-info", "--preset", "paper", "--num-classes", "60", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert info["branches"]["rgb"]["parameters"] == 12_287_264
    assert info["branches"]["skeleton"]["parameters"] == 769_472
    assert info["num_classes"] == 60
    assert info["head"]["parameters"] == (1024 + 256) * 60 + 60
    assert info["total_parameters"] == 12_287_264 + 769_472 + info["head"]["parameters"]
    rgb_stages = [s["name"] for s in info["branches"]["rgb"]["stages"]]
    assert rgb_stages[-1] == "Mixed_5c"
    assert info["branches"]["rgb"]["stages"][-1]["shape"] == [1024, 4, 7, 7]
    assert info["branches"]["rgb"]["embedding_dim"] == 1024


# -- forward shapes -----------------------------------------------------------------

def test_tiny_forward_gives_logits_and_per_modality_embeddings(tiny_model):
    out = tiny_model(_batch(TINY_SHAPES, b=3))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, CLASSES)
    assert set(out.embeddings) == {"rgb", "skeleton"}
    for modality, branch in tiny_model.branches.items():
        assert out.embeddings[modality].shape == (3, branch.embedding_dim)
    assert tiny_model.head.in_features == sum(b.embedding_dim for b in tiny_model.branches.values())
    assert out.aux_logits == ()
    assert torch.isfinite(out.logits).all()


def test_samples_do_not_interact_in_eval_mode(tiny_model):
    batch = _batch(TINY_SHAPES, b=3)
    with torch.no_grad():
        together = tiny_model(batch).logits
        alone = tiny_model({m: x[1:2] for m, x in batch.items()}).logits
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("modality", ["rgb", "skeleton"])
def test_one_branch_is_a_unimodal_model(modality):
    shapes = {modality: TINY_SHAPES[modality]}
    model = build_model(PRESETS["tiny"], shapes, CLASSES).eval()
    assert type(model) is MultimodalNet
    assert model.modalities == (modality,)
    out = model(_batch(shapes))  # no other modality in the batch
    assert out.logits.shape == (2, CLASSES)
    assert set(out.embeddings) == {modality}
    assert model.head.in_features == model.branches[modality].embedding_dim


def test_multimodal_net_needs_a_branch():
    with pytest.raises(ValueError):
        MultimodalNet({}, CLASSES)


def test_stage_names_follow_the_published_networks(tiny_model):
    full = I3D(width=0.125).stage_names
    assert {"Mixed_4f", "Mixed_5c"} <= set(full)
    assert full.index("Mixed_4f") < full.index("Mixed_5c") and full[-1] == "Mixed_5c"
    assert HCN(width=0.5).stage_names == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6"]
    # The tiny preset drops blocks but keeps the names of those it keeps.
    assert {"Mixed_4f", "Mixed_5c"} <= set(tiny_model.branches["rgb"].stage_names)
    assert {"conv4", "conv5", "conv6"} <= set(tiny_model.branches["skeleton"].stage_names)


# -- mixers ---------------------------------------------------------------------------

class DoublingMixer(Mixer):
    """Doubles the feature maps it sees; classifies from the pooled rgb map.

    (HCN folds persons into the batch, so only the rgb map has B rows.)
    """

    def __init__(self, attach: dict[str, str]):
        super().__init__()
        self.attach = attach
        self.seen: dict[str, torch.Tensor] = {}
        self.aux: torch.Tensor | None = None

    def forward(self, features):
        self.seen = {m: x.detach().clone() for m, x in features.items()}
        pooled = features["rgb"].flatten(2).mean(2)
        self.aux = pooled[:, :1].expand(-1, CLASSES) * torch.arange(CLASSES, dtype=pooled.dtype)
        return {m: 2 * x for m, x in features.items()}, self.aux


def _stage_outputs(model: MultimodalNet, batch, upto: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for modality, stage_name in upto.items():
        branch = model.branches[modality]
        x = branch.normalize(batch[modality])
        for name, stage in branch.stages.items():
            x = stage(x)
            if name == stage_name:
                break
        out[modality] = x
    return out


def test_mixer_runs_after_its_attachment_stages_and_its_aux_logits_are_returned():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], TINY_SHAPES, CLASSES).eval()
    batch = _batch(TINY_SHAPES)
    with torch.no_grad():
        plain = model(batch)
    attach = {"rgb": "Mixed_5c", "skeleton": "conv6"}
    mixer = DoublingMixer(attach)
    model.add_mixer(mixer)
    with torch.no_grad():
        out = model(batch)
        expected = _stage_outputs(model, batch, attach)

    assert set(mixer.seen) == {"rgb", "skeleton"}
    for modality in attach:
        torch.testing.assert_close(mixer.seen[modality], expected[modality])
    assert len(out.aux_logits) == 1 and out.aux_logits[0] is mixer.aux
    assert out.aux_logits[0].shape == (2, CLASSES)
    # Mixed_5c is the last rgb stage, and the embedding is its global mean: doubled exactly.
    torch.testing.assert_close(out.embeddings["rgb"], 2 * plain.embeddings["rgb"], rtol=0, atol=0)
    assert not torch.equal(out.logits, plain.logits)


def test_mixer_at_an_inner_stage_sees_that_stage_output():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], TINY_SHAPES, CLASSES).eval()
    batch = _batch(TINY_SHAPES)
    attach = {"rgb": "Mixed_4f", "skeleton": "conv4"}
    mixer = DoublingMixer(attach)
    model.add_mixer(mixer)
    with torch.no_grad():
        model(batch)
        expected = _stage_outputs(model, batch, attach)
    shapes = stage_shapes(model, batch)
    for modality, stage in attach.items():
        torch.testing.assert_close(mixer.seen[modality], expected[modality])
        assert tuple(mixer.seen[modality].shape[1:]) == dict(shapes[modality])[stage]


def test_mixers_run_in_order_of_depth():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], TINY_SHAPES, CLASSES).eval()
    deep = DoublingMixer({"rgb": "Mixed_5c", "skeleton": "conv6"})
    shallow = DoublingMixer({"rgb": "Mixed_4f", "skeleton": "conv4"})
    model.add_mixer(deep)
    model.add_mixer(shallow)
    with torch.no_grad():
        out = model(_batch(TINY_SHAPES))
    assert [id(a) for a in out.aux_logits] == [id(shallow.aux), id(deep.aux)]


def test_attaching_to_an_unknown_stage_names_it(tiny_model):
    with pytest.raises(ValueError) as error:
        tiny_model.add_mixer(DoublingMixer({"rgb": "Mixed_9z", "skeleton": "conv6"}))
    assert "Mixed_9z" in str(error.value)
    assert len(tiny_model.mixers) == 0


def test_attaching_to_an_unknown_modality_names_it(tiny_model):
    with pytest.raises(ValueError, match="'depth'"):
        tiny_model.add_mixer(DoublingMixer({"depth": "conv1"}))
    assert len(tiny_model.mixers) == 0
