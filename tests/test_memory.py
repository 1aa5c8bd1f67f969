"""Checkpointed blocks change memory, not numbers; the memory estimate agrees with a real forward."""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from mmrobust.backbones.hcn import HCN
from mmrobust.backbones.i3d import I3D
from mmrobust.cli import cli
from mmrobust.memory import checkpoint_blocks, estimate_memory, run_checkpointed, saved_activations
from mmrobust.model import MultimodalNet
from mmrobust.presets import PRESETS, build_model

SHAPES = {"rgb": (3, 8, 32, 32), "skeleton": (3, 32, 25, 2)}


def _batch(shapes, b: int = 4, seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, *s, generator=generator).requires_grad_(requires_grad) for m, s in shapes.items()}


def _pair(dropout: float = 0.5) -> tuple[MultimodalNet, MultimodalNet]:
    """The tiny preset's model (with dropout before the head, to draw random numbers) and a copy with
    checkpointed blocks."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], SHAPES, num_classes=5)
    model.dropout.p = dropout
    checkpointed = copy.deepcopy(model)
    assert checkpoint_blocks(checkpointed) == 3
    return model, checkpointed


def _sgd_step(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step in train mode; the input gradient and the next number of the global RNG."""
    model.train()
    batch = _batch(SHAPES, requires_grad=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(1)
    loss = F.cross_entropy(model(batch).logits, torch.tensor([0, 1, 2, 3]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return batch["rgb"].grad, torch.rand(1)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- checkpointing -------------------------------------------------------------------

def test_checkpoint_blocks_switches_every_inception_block_and_nothing_else():
    i3d = I3D.example()
    assert checkpoint_blocks(i3d) == 3
    assert all(i3d.stages[name].checkpointed for name in ("Mixed_3c", "Mixed_4f", "Mixed_5c"))
    assert checkpoint_blocks(i3d, enabled=False) == 3
    assert not any(getattr(m, "checkpointed", False) for m in i3d.modules())
    assert checkpoint_blocks(I3D(width=0.125)) == 9
    assert checkpoint_blocks(HCN.example()) == 0


def test_a_checkpointed_training_step_gives_the_same_weights_statistics_and_gradients():
    model, checkpointed = _pair()
    gradient, next_random = _sgd_step(model)
    gradient_checkpointed, next_random_checkpointed = _sgd_step(checkpointed)
    # Parameters, momentum-updated weights and BatchNorm running statistics (updated once per
    # forward, not again by the recomputation), bit for bit.
    assert _states_equal(model, checkpointed)
    assert torch.equal(gradient, gradient_checkpointed)
    assert torch.equal(next_random, next_random_checkpointed)  # the global RNG stream moves on alike


def test_input_gradients_in_eval_mode_are_unchanged():
    model, checkpointed = _pair()
    gradients = []
    for net in (model, checkpointed):
        batch = _batch(SHAPES, requires_grad=True)
        loss = F.cross_entropy(net.eval()(batch).logits, torch.tensor([0, 1, 2, 3]))
        gradients.append(torch.autograd.grad(loss, [batch["rgb"], batch["skeleton"]]))
    for plain, recomputed in zip(*gradients):
        assert plain.abs().sum() > 0
        assert torch.equal(plain, recomputed)


class _NoisyBlock(nn.Module):
    """A block with BatchNorm and dropout inside that opts in to checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Dropout(0.5)
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            return run_checkpointed(self, self._body, x)
        return self._body(x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv(x))).relu()


def test_any_block_with_the_attribute_is_checkpointed_with_its_dropout_mask_replayed():
    torch.manual_seed(0)
    plain = nn.Sequential(_NoisyBlock(), _NoisyBlock())
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_blocks(checkpointed) == 2
    results = []
    for model in (plain, checkpointed):
        x = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
        torch.manual_seed(3)
        model(x).square().sum().backward()
        results.append((x.grad, [p.grad for p in model.parameters()], torch.rand(1)))
    (x_grad, grads, after), (x_grad_ckpt, grads_ckpt, after_ckpt) = results
    assert torch.equal(x_grad, x_grad_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ckpt, strict=True))
    assert torch.equal(after, after_ckpt)
    assert _states_equal(plain, checkpointed)


def test_checkpointing_keeps_fewer_activations_for_the_backward():
    model = I3D.example().train()
    x = I3D.example_input(2)
    plain = saved_activations(model, x)
    checkpoint_blocks(model)
    kept = saved_activations(model, x)
    assert plain.largest_block > 0 and kept.largest_block == 0
    assert kept.total < 0.8 * plain.total
    assert kept.total + plain.largest_block < plain.total


# -- the estimate ----------------------------------------------------------------------

def test_the_meta_device_estimate_counts_what_a_real_forward_saves():
    estimate = estimate_memory("tiny", 5, batch_sizes=(2,))
    rows = {row["checkpointed"]: row for row in estimate["rows"]}
    shapes = {m: tuple(s) for m, s in estimate["input_shapes"].items()}
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], shapes, num_classes=5)
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    real = {}
    for checkpointed in (False, True):
        checkpoint_blocks(model, checkpointed)
        for train in (True, False):
            batch = _batch(shapes, 2, requires_grad=not train)  # an attack differentiates the inputs
            real[checkpointed, train] = saved_activations(model.train(train), batch)
    assert rows[False]["training_activations"] == real[False, True].total
    assert rows[True]["training_activations"] == real[True, True].total + real[False, True].largest_block
    # In eval mode the CPU's BatchNorm saves empty statistics where the meta device gives two per
    # channel: a few bytes per layer, independent of the batch.
    for checkpointed in (False, True):
        extra = rows[checkpointed]["attack_activations"] - real[checkpointed, False].total
        if checkpointed:
            extra -= real[False, False].largest_block
        assert 0 <= extra <= 2 * 4 * bn_channels


def test_the_estimate_grows_linearly_with_the_batch_and_checkpointing_lowers_it():
    rows = estimate_memory("tiny", 5, batch_sizes=(1, 2, 4))["rows"]
    for checkpointed in (False, True):
        one, two, four = (r for r in rows if r["checkpointed"] is checkpointed)
        for key in ("training_activations", "attack_activations", "training_step", "attack_step",
                    "adversarial_training_step"):
            assert four[key] - two[key] == 2 * (two[key] - one[key]) > 0, key
    plain, checkpointed = (r for r in rows if r["batch_size"] == 4)
    assert checkpointed["training_activations"] < plain["training_activations"]
    assert checkpointed["adversarial_training_step"] < plain["adversarial_training_step"]
    assert plain["adversarial_training_step"] >= max(plain["training_step"] - plain["inputs"], plain["attack_step"])


def test_model_info_memory_prints_a_table_and_json():
    runner = CliRunner()
    result = runner.invoke(cli, ["model-info", "--preset", "tiny", "--memory", "--batch-sizes", "1,8"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "pgd-at +ckpt" in lines[1]
    assert [line.split()[0] for line in lines[3:5]] == ["1", "8"]
    result = runner.invoke(cli, ["model-info", "--preset", "tiny", "--memory", "--batch-sizes", "2", "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.stdout)
    assert [(r["batch_size"], r["checkpointed"]) for r in estimate["rows"]] == [(2, False), (2, True)]
    result = runner.invoke(cli, ["model-info", "--memory", "--batch-sizes", "0,4"])
    assert result.exit_code == 2 and "--batch-sizes" in result.output
