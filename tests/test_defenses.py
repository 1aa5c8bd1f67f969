"""Defenses: the contract every registered defense meets, then each defense's own promises.

The contract tests are parametrised over the registry, so a new defense is
tested for free: it builds on the tiny preset, one SGD step lowers its loss on
a fixed batch, its model (or its BPDA surrogate) is differentiable in every
input, a checkpoint reproduces its logits exactly, and its parameters are
validated by name.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.datasets.base import Split
from mmrobust.defense import Defense, TrainContext, build_defense, combine, defend, reference_defense
from mmrobust.model import MultimodalNet
from mmrobust.presets import PRESETS, build_model
from mmrobust.registry import DEFENSES

SHAPES = {"rgb": (3, 8, 32, 32), "skeleton": (3, 32, 25, 1)}
CLASSES = 5
EPS = 8 / 255


def tiny_model(seed: int = 0, classes: int = CLASSES) -> MultimodalNet:
    torch.manual_seed(seed)
    return build_model(PRESETS["tiny"], SHAPES, classes)


def random_batch(size: int = 4, seed: int = 0, classes: int = CLASSES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = {m: torch.rand(size, *shape, generator=generator) for m, shape in SHAPES.items()}
    batch["label"] = torch.randint(0, classes, (size,), generator=generator)
    return batch


def tiny_split(size: int = 6, seed: int = 1) -> Split:
    batch = random_batch(size, seed)
    return Split({m: batch[m].numpy() for m in SHAPES} | {"label": batch["label"].numpy()})


def context(seed: int = 0, model: MultimodalNet | None = None) -> TrainContext:
    modalities = model.modalities if model is not None else tuple(SHAPES)
    return TrainContext(device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
                        modalities=modalities)


def defended(name: str, seed: int = 0, classes: int = CLASSES, **params) -> tuple[Defense, MultimodalNet]:
    defense = build_defense(name, params)
    return defense, defend(defense, tiny_model(seed, classes))


def trained(name: str) -> tuple[Defense, MultimodalNet]:
    """A defended tiny model with its post-training step done on a tiny split."""
    defense, model = defended(name)
    defense.after_training(model, tiny_split(), context(model=model))
    return defense, model.eval()


def loss_with_seed(defense: Defense, model: MultimodalNet, batch, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # dropout masks
    return defense.loss(model, batch, context(seed, model))


def input_gradients(module: nn.Module, batch, direction: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradient of the cross-entropy (or of ⟨logits, direction⟩) with respect to every modality input."""
    leaves = {m: batch[m].clone().requires_grad_(True) for m in SHAPES}
    output = module({**batch, **leaves})
    logits = output.logits if hasattr(output, "logits") else output
    objective = F.cross_entropy(logits, batch["label"]) if direction is None else (logits * direction).sum()
    objective.backward()
    return {m: leaf.grad for m, leaf in leaves.items()}


# -- the contract of every registered defense ------------------------------------------------------

@pytest.fixture(params=DEFENSES.names())
def name(request) -> str:
    return request.param


def test_builds_on_the_tiny_preset(name):
    _, model = defended(name)
    with torch.no_grad():
        logits = model.eval()(random_batch()).logits
    assert logits.shape == (4, CLASSES) and torch.isfinite(logits).all()


def test_one_sgd_step_lowers_the_loss_of_the_batch(name):
    defense, model = defended(name)
    model.train()
    batch = random_batch(size=6)
    before = loss_with_seed(defense, model, batch)
    assert before.dim() == 0 and torch.isfinite(before)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = loss_with_seed(defense, model, batch)
    assert after.item() < before.item()


def test_the_model_or_its_surrogate_is_differentiable_in_every_input(name):
    defense, model = trained(name)
    surrogate = defense.surrogate(model)
    for module in filter(None, (model, surrogate)):
        for modality, grad in input_gradients(module, random_batch()).items():
            assert torch.isfinite(grad).all(), (modality, module is surrogate)
    attacked = surrogate if surrogate is not None else model
    for modality, grad in input_gradients(attacked, random_batch()).items():
        assert grad.abs().sum() > 0, modality


def test_a_checkpoint_reproduces_the_logits(name):
    _, model = trained(name)
    with torch.no_grad():
        for parameter in model.parameters():  # move away from the initialisation the fresh build repeats
            parameter.add_(0.01 * torch.randn_like(parameter))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_defense(name, {}).build(tiny_model(seed=1))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(batch).logits, model(batch).logits)


def test_a_model_is_built_once(name):
    defense, model = defended(name)
    with pytest.raises(ValueError, match=re.escape(f"already built with defense '{name}'; build it once")):
        defend(build_defense(name, {}), model)


def test_exactly_one_defense_is_the_reference_and_it_is_undefended():
    name = reference_defense()
    defense, model = defended(name)
    assert type(defense).build is Defense.build and type(defense).loss is Defense.loss
    with DEFENSES.scoped():
        DEFENSES.register("second-reference")(type("SecondReference", (Defense,), {"reference": True}))
        with pytest.raises(ValueError, match="exactly one"):
            reference_defense()
    with DEFENSES.scoped():  # a subclass of the reference is not a second reference
        DEFENSES.register("my-none")(type("MyNone", (DEFENSES.get(name),), {}))
        assert reference_defense() == name


def test_a_combination_has_both_parameters_one_loss_and_refuses_clashes():
    combined = DEFENSES.get("minsim+exfmem")
    fields = {f.name for f in dataclasses.fields(combined.params_type())}
    assert fields == {f.name for n in ("minsim", "exfmem") for f in dataclasses.fields(DEFENSES.get(n).Params)}
    with DEFENSES.scoped():
        DEFENSES.register("clash")(combine("exfmem", "amr"))  # both have ``lam``
        with pytest.raises(ValueError, match="both 'exfmem' and 'amr' have a parameter 'lam'"):
            build_defense("clash", {})
        DEFENSES.register("two-losses")(combine("minsim", "at-rs"))
        with pytest.raises(ValueError, match="more than one defines loss"):
            build_defense("two-losses", {})


def test_an_unknown_parameter_is_named(name):
    with pytest.raises(ValueError, match="'no_such_param'"):
        build_defense(name, {"no_such_param": 1})


def test_a_missing_required_modality_is_named(name):
    defense = build_defense(name, {})
    for needed in defense.requires:
        others = tuple(m for m in SHAPES if m != needed)
        with pytest.raises(ValueError, match=f"'{needed}'"):
            defense.check_modalities(others)
    defense.check_modalities(tuple(SHAPES))


@pytest.mark.parametrize("name, key, value", [
    ("amr", "amrs", 0), ("amr", "amrs", 5), ("amr", "lam", -0.5), ("amr", "init", 0.0), ("amr", "amrs", 1.5),
    ("at-r", "eps", 0.0), ("at-s", "eps", 2.0), ("at-rs", "steps", 0), ("at-rs", "rel_step", -1.0),
    ("at-rs", "random_start", "yes"), ("exfmem", "finetune", 1.5), ("minsim", "weight", -1.0),
    ("minsim", "adversarial", 1), ("exfmem", "blend", 1.5), ("exfmem", "lam", -0.1),
    ("exfmem", "bank_size", 0), ("exfmem", "lam", math.nan), ("minsim+exfmem", "iterations", 0),
    ("minsim+exfmem", "finetune", -0.1),
])
def test_an_out_of_range_value_is_named_with_its_range(name, key, value):
    with pytest.raises(ValueError, match=re.escape(f"defense '{name}': {key} must be ")):
        build_defense(name, {key: value})


def test_parameters_accept_an_integer_for_a_float():
    assert build_defense("amr", {"lam": 2}).params.lam == 2


# -- adversarial training -----------------------------------------------------------------------------

def test_the_three_at_entries_are_one_class_with_their_targets():
    classes = {n: DEFENSES.get(n) for n in ("at-r", "at-s", "at-rs")}
    assert len({c.Params for c in classes.values()}) == 1
    assert len({c.loss for c in classes.values()}) == 1
    assert {n: build_defense(n, {}).requires for n in classes} == {
        "at-r": ("rgb",), "at-s": ("skeleton",), "at-rs": ("rgb", "skeleton")}


def record_forwards(model: nn.Module) -> list[tuple[dict[str, torch.Tensor], bool]]:
    seen: list[tuple[dict[str, torch.Tensor], bool]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append((dict(args[0]), module.training)))
    return seen


def test_at_perturbs_only_its_target_within_eps_from_an_eval_mode_adversary():
    defense, model = defended("at-r")
    model.train()
    seen = record_forwards(model)
    batch = random_batch()
    defense.loss(model, batch, context(model=model))
    assert all(p.grad is None for p in model.parameters())  # the adversary leaves .grad alone
    *attack, (trained_on, training) = seen
    assert training and model.training
    assert attack and not any(mode for _, mode in attack)  # PGD ran in eval mode
    assert trained_on["skeleton"] is batch["skeleton"] and trained_on["label"] is batch["label"]
    delta = (trained_on["rgb"] - batch["rgb"]).abs()
    assert delta.max() <= EPS + 1e-6 and 0 <= trained_on["rgb"].min() and trained_on["rgb"].max() <= 1
    assert (delta.flatten(1).amax(dim=1) > 0).all()  # every sample, even one misclassified clean


def test_at_adversary_is_reproducible_from_the_context_generator():
    defense, model = defended("at-rs")
    batch = random_batch()
    # Copies: a training forward moves the BatchNorm statistics the next (eval-mode) attack uses.
    first = loss_with_seed(defense, copy.deepcopy(model), batch, seed=3)
    assert torch.equal(first, loss_with_seed(defense, copy.deepcopy(model), batch, seed=3))
    assert not torch.equal(first, loss_with_seed(defense, copy.deepcopy(model), batch, seed=4))


# -- MinSim ---------------------------------------------------------------------------------------------

def test_minsim_loss_is_cross_entropy_plus_the_cosine_of_the_embeddings_themselves():
    defense, model = defended("minsim", weight=0.7)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train()
    batch = random_batch()
    loss = defense.loss(model, batch, context(model=model))
    output = model(batch)
    cosine = F.cosine_similarity(output.embeddings["rgb"], output.embeddings["skeleton"], dim=1)
    expected = F.cross_entropy(output.logits, batch["label"]) + 0.7 * cosine.mean()
    torch.testing.assert_close(loss, expected)
    # nothing learned stands between the term and the backbones
    assert model.state_dict().keys() == tiny_model().state_dict().keys()


def test_minsim_maps_a_wider_embedding_by_a_fixed_non_negative_mean():
    from mmrobust.defenses.minsim import common_width, mean_cosine

    wide = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    narrow = torch.rand(3, 2, generator=torch.Generator().manual_seed(1))
    mapped = common_width({"rgb": wide, "skeleton": narrow})
    torch.testing.assert_close(mapped["rgb"], wide.view(3, 2, 4).mean(-1))   # groups of 4 consecutive units
    assert mapped["skeleton"] is narrow
    # non-negative embeddings keep a cosine in [0, 1], 0 only on disjoint units
    assert 0 <= float(mean_cosine({"rgb": wide, "skeleton": narrow})) <= 1
    disjoint = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0]])
    assert float(mean_cosine({"rgb": disjoint, "skeleton": torch.tensor([[0.0, 2.0]])})) == 0.0
    # the term reaches the wider embedding through every unit: no null space to hide in
    wide = wide.clone().requires_grad_(True)
    mean_cosine({"rgb": wide, "skeleton": narrow}).backward()
    assert bool((wide.grad != 0).all())


# -- ExFMem ---------------------------------------------------------------------------------------------

def memory(dim: int = 8, bank_size: int = 6, iterations: int = 50, lam: float = 0.1, blend: float = 0.5):
    from mmrobust.defenses.exfmem import MemoryFilter

    return MemoryFilter(dim, bank_size, lam, iterations, blend)


def soft(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(z) * torch.clamp(z.abs() - t, min=0)


def test_ista_solves_the_lasso_of_an_orthonormal_bank_in_closed_form():
    filt = memory(dim=8, bank_size=4)
    bank = torch.linalg.qr(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))[0]  # DᵀD = I
    filt.fill(bank)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(filt.step, torch.tensor(1.0))
    torch.testing.assert_close(filt.sparse_code(x), soft(x @ bank, 0.1))
    torch.testing.assert_close(filt(x), 0.5 * soft(x @ bank, 0.1) @ bank.T + 0.5 * x)


def test_ista_meets_the_lasso_optimality_conditions_on_a_coherent_bank():
    filt = memory(dim=6, bank_size=10, iterations=5000, lam=0.3)
    generator = torch.Generator().manual_seed(0)
    filt.fill(torch.rand(6, 10, generator=generator, dtype=torch.float64).float())
    x = torch.rand(3, 6, generator=generator)
    code = filt.sparse_code(x)
    correlation = (x - code @ filt.bank.T) @ filt.bank  # Dᵀ(x − Dh): λ·sign(h) on the support, |·| ≤ λ off it
    on = code != 0
    assert on.any()
    torch.testing.assert_close(correlation[on], 0.3 * code[on].sign(), atol=2e-3, rtol=0)
    assert (correlation[~on].abs() <= 0.3 + 2e-3).all()


def test_a_sample_is_filtered_the_same_alone_and_in_a_batch():
    filt = memory(dim=128, bank_size=64, iterations=30)
    generator = torch.Generator().manual_seed(0)
    filt.fill(torch.rand(128, 64, generator=generator))
    x = torch.rand(9, 128, generator=generator)
    together = filt(x)
    # Equal up to the rounding of differently blocked matrix products (~1e-7); a
    # batch-level stopping rule would change the iteration count and show here.
    for i in (0, 4, 8):
        torch.testing.assert_close(filt(x[i:i + 1])[0], together[i], rtol=1e-6, atol=1e-7)
    changed = filt(torch.cat([x[:1], 100 * x[1:]]))[0]  # same sample, very different batch-mates
    torch.testing.assert_close(changed, together[0], rtol=1e-6, atol=1e-7)


def test_an_unfilled_memory_is_the_identity_and_checkpoints_load_into_it():
    filt = memory()
    x = torch.randn(3, 8)
    assert filt(x) is x
    filt.fill(torch.rand(8, 4))
    fresh = memory()
    fresh.load_state_dict(filt.state_dict())
    assert bool(fresh.filled) and torch.equal(fresh(x), filt(x)) and not torch.equal(fresh(x), x)


def test_exfmem_banks_hold_the_unfiltered_training_embeddings_and_the_step():
    defense, model = defended("exfmem", bank_size=4)
    split = tiny_split(size=6)
    defense.after_training(model, split, context(model=model))
    defense.after_training(model, split, context(model=model))  # again: still the unfiltered embeddings
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))[:4].numpy()
    bare = tiny_model()
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("filters.")})
    with torch.no_grad():
        expected = bare.eval()(split.batch(order)).embeddings
    assert model.training  # mode restored
    for modality, filt in model.filters.items():
        torch.testing.assert_close(filt.bank, expected[modality].T)
        largest = torch.linalg.eigvalsh(filt.bank.T.double() @ filt.bank.double())[-1]
        torch.testing.assert_close(filt.step.double(), 1 / largest, rtol=1e-5, atol=0)


def test_exfmem_filters_a_sample_independently_of_its_batch():
    _, model = trained("exfmem")
    batch = random_batch(size=5)
    with torch.no_grad():
        together = model(batch).embeddings
        alone = model({k: v[2:3] for k, v in batch.items()}).embeddings
    for modality in SHAPES:
        torch.testing.assert_close(alone[modality][0], together[modality][2], rtol=1e-5, atol=1e-6)


def test_bpda_surrogate_has_the_models_forward_and_an_identity_backward_through_the_memory():
    from mmrobust.defenses.exfmem import MemoryFilter

    defense, model = trained("exfmem")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    surrogate = defense.surrogate(model)
    assert all(type(f) is MemoryFilter for f in model.filters.values())  # the model is not modified
    assert set(model.state_dict()) == set(state)
    assert {id(p) for p in surrogate.parameters()} == {id(p) for p in model.parameters()}
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(surrogate.eval()(batch).logits, model(batch).logits)
    # The head is linear: along a fixed direction of the logits, a straight-through
    # memory gives exactly the gradient of the unfiltered network.
    unfiltered = copy.deepcopy(model)
    for filt in unfiltered.filters.values():
        filt.empty()
    direction = torch.randn(4, CLASSES, generator=torch.Generator().manual_seed(0))
    through_surrogate = input_gradients(surrogate, batch, direction)
    through_model = input_gradients(model, batch, direction)
    for modality, grad in input_gradients(unfiltered, batch, direction).items():
        torch.testing.assert_close(through_surrogate[modality], grad)
        assert not torch.allclose(through_model[modality], grad)  # the model itself unrolls ISTA


def test_minsim_exfmem_trains_with_the_minsim_loss_and_has_both_parts():
    defense, model = defended("minsim+exfmem", weight=0.5)
    minsim = build_defense("minsim", {"weight": 0.5}).build(tiny_model())
    model.train(), minsim.train()
    batch = random_batch()
    torch.testing.assert_close(loss_with_seed(defense, model, batch), loss_with_seed(build_defense(
        "minsim", {"weight": 0.5}), minsim, batch))
    assert set(model.filters) == set(SHAPES)


# -- AMR ------------------------------------------------------------------------------------------------

def amr_module():
    import mmrobust.defenses.amr

    return mmrobust.defenses.amr


def test_amr_attaches_to_the_last_blocks_with_full_feature_map_weights():
    from mmrobust.model import stage_shapes

    _, model = defended("amr", amrs=3)
    mixers = list(model.mixers)
    assert [m.attach for m in mixers] == [{"rgb": "Mixed_3c", "skeleton": "conv4"},
                                          {"rgb": "Mixed_4f", "skeleton": "conv5"},
                                          {"rgb": "Mixed_5c", "skeleton": "conv6"}]
    shapes = {m: dict(rows) for m, rows in stage_shapes(tiny_model().eval(), random_batch()).items()}
    for mixer in mixers:
        for modality, stage in mixer.attach.items():
            assert tuple(mixer.weights[modality].shape) == shapes[modality][stage]
            assert (mixer.weights[modality] == 1).all()
    with torch.no_grad():
        output = model.eval()(random_batch())
    assert len(output.aux_logits) == 3 and all(a.shape == (4, CLASSES) for a in output.aux_logits)


def test_amr_at_its_initial_weights_leaves_the_network_function_unchanged():
    _, model = defended("amr", amrs=2)
    bare = tiny_model()
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mixers.")})
    batch = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch).logits, bare.eval()(batch).logits)


def test_amr_loss_by_hand_on_two_classes():
    from mmrobust.defenses.amr import amr_loss

    def ce(z0, z1, label):  # two-class cross-entropy written out
        other, own = (z1, z0) if label == 0 else (z0, z1)
        return math.log(1 + math.exp(other - own))

    clean, adversarial = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 1.0]])
    aux = (torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 3.0]]))
    label = torch.tensor([0])
    expected = ce(2, 0, 0) + 0.5 * (ce(0.5, 1, 0) + (ce(1, -1, 0) + ce(0, 3, 0)) / 2)
    assert amr_loss(clean, adversarial, aux, label, lam=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_amr_loss_is_eq_12_on_the_models_clean_and_adversarial_outputs():
    defense, model = defended("amr", classes=2, amrs=2, lam=0.5)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train()
    batch = random_batch(classes=2)
    loss = defense.loss(copy.deepcopy(model), batch, context(seed=5, model=model))
    attacked = defense.adversary(model, batch, ("rgb", "skeleton"), torch.Generator().manual_seed(5))
    clean, adversarial = model(batch), model(attacked)
    y = batch["label"]

    def ce(logits):  # mean two-class cross-entropy written out
        own = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.gather(1, (1 - y)[:, None]).squeeze(1)
        return torch.log1p(torch.exp(other - own)).mean()

    aux = adversarial.aux_logits
    expected = ce(clean.logits) + 0.5 * (ce(adversarial.logits) + (ce(aux[0]) + ce(aux[1])) / 2)
    torch.testing.assert_close(loss, expected)


def test_amr_weight_summary_and_plot(tmp_path):
    _, model = defended("amr", amrs=2)
    with torch.no_grad():
        for mixer, (rgb, skeleton) in zip(model.mixers, [(0.5, 2.0), (0.25, 1.5)]):
            mixer.weights["rgb"].fill_(rgb)
            mixer.weights["skeleton"].fill_(skeleton)
    summary = amr_module().weight_summary(model)
    assert [{k: v for k, v in row.items() if "std" not in k} for row in summary] == [
        {"amr": 1, "rgb stage": "Mixed_4f", "rgb mean": 0.5, "skeleton stage": "conv5", "skeleton mean": 2.0},
        {"amr": 2, "rgb stage": "Mixed_5c", "rgb mean": 0.25, "skeleton stage": "conv6", "skeleton mean": 1.5}]
    assert all(row["rgb std"] == 0 and row["skeleton std"] == 0 for row in summary)
    path = amr_module().plot_weights(model, tmp_path / "weights.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no AMR"):
        amr_module().plot_weights(tiny_model(), tmp_path / "none.png")


def test_amr_needs_the_input_shapes_of_the_model():
    model = tiny_model()
    bare = MultimodalNet(dict(model.branches), CLASSES)
    with pytest.raises(ValueError, match="input shapes"):
        build_defense("amr", {}).build(bare)


def test_amr_blocks_skip_pooling_stages_of_the_full_i3d_and_stop_at_the_first_block():
    from mmrobust.backbones.i3d import I3D
    from mmrobust.defenses.amr import last_blocks

    assert last_blocks(I3D(width=0.125), 3) == ["Mixed_5c", "Mixed_5b", "Mixed_4f"]
    hcn = tiny_model().branches["skeleton"]
    assert last_blocks(hcn, 3) == ["conv6", "conv5", "conv4"]
    with pytest.raises(ValueError, match="amrs=7"):
        last_blocks(hcn, 7)


def test_exfmem_fine_tunes_the_last_quarter_through_frozen_banks():
    from mmrobust.defenses.exfmem import MemoryFilter

    defense, model = defended("exfmem", bank_size=4)
    assert [defense.finetune_from(e) for e in (1, 3, 4, 8)] == [None, None, 3, 6]
    assert build_defense("exfmem", {"finetune": 0}).finetune_from(8) is None
    split = tiny_split(size=6)
    for epoch in range(3):  # the main schedule leaves the banks empty: the filter is the identity
        defense.before_epoch(model, split, TrainContext(device=torch.device("cpu"), epoch=epoch, epochs=4))
        assert not any(bool(f.filled) for f in model.filters.values())
    defense.before_epoch(model, split, TrainContext(device=torch.device("cpu"), epoch=3, epochs=4))
    filters = [f for f in model.filters.values() if isinstance(f, MemoryFilter)]
    assert filters and all(bool(f.filled) for f in filters)
    banks = [f.bank.clone() for f in filters]
    # fine-tuning moves the network, and its gradients pass through the filled filter
    model.train()
    loss = defense.loss(model, random_batch(), context(model=model))
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    defense.after_training(model, split, TrainContext(device=torch.device("cpu")))
    assert all(torch.equal(f.bank, bank) for f, bank in zip(filters, banks, strict=True))  # frozen, not refilled
    fresh_defense, fresh = defended("exfmem", bank_size=4, finetune=0)
    fresh_defense.after_training(fresh, split, TrainContext(device=torch.device("cpu")))
    assert all(bool(f.filled) for f in fresh.filters.values() if isinstance(f, MemoryFilter))
