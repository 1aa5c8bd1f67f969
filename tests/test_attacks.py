"""Attacks: what a robustness number relies on.

Tiny models on CPU: a two-layer net over three modalities (the code must not
assume two) trained for a second on random class prototypes, plus hand-made
models where a property needs an exact situation.
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.attack import AttackResult, RandomStarts, build_attack, take
from mmrobust.engine import sign_gradient_attack
from mmrobust.model import ModelOutput

SHAPES = {"rgb": (3, 4, 6, 6), "skeleton": (3, 4, 5, 2), "depth": (1, 4, 6, 6)}
CLASSES = 4
EPS = 4 / 255
TARGET_SETS = [c for r in (1, 2, 3) for c in itertools.combinations(SHAPES, r)]
# Short schedules keep the file fast; the engine is the same at any length.
NATIVE = {"fgsm": {}, "pgd": {"steps": 5}, "cw-inf": {"steps": 5}}
ADAPTED = {"ta:FGSM": {}, "ta:PGD": {"steps": 5, "alpha": 1 / 255}}
ALL_ATTACKS = {**NATIVE, **ADAPTED}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny ops: OpenMP threads only add overhead, and spin badly on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """Per-modality linear encoder → tanh → sum → linear classifier."""

    def __init__(self, shapes: dict, hidden: int = 16, output: bool = False):
        super().__init__()
        self.encoders = nn.ModuleDict({m: nn.Linear(torch.Size(s).numel(), hidden) for m, s in shapes.items()})
        self.head = nn.Linear(hidden, CLASSES)
        self.output = output  # return a ModelOutput instead of a tensor

    def forward(self, batch):
        hidden = sum(torch.tanh(encoder((batch[m] - 0.5).flatten(1))) for m, encoder in self.encoders.items())
        logits = self.head(hidden)
        return ModelOutput(logits) if self.output else logits


def make_batch(n: int, seed: int, shapes: dict = SHAPES, spread: float = 0.04) -> dict:
    """Noisy class prototypes in [0, 1] (clamping puts some values exactly on 0 and 1)."""
    prototypes = torch.Generator().manual_seed(1234)
    means = {m: 0.5 + spread * torch.randn((CLASSES, *s), generator=prototypes) for m, s in shapes.items()}
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    batch = {m: (means[m][labels] + 0.25 * torch.randn((n, *s), generator=g)).clamp(0, 1) for m, s in shapes.items()}
    batch["label"] = labels
    return batch


def train(model: nn.Module, shapes: dict, steps: int = 200) -> nn.Module:
    data = make_batch(512, seed=1, shapes=shapes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        output = model(data)
        F.cross_entropy(output.logits if isinstance(output, ModelOutput) else output, data["label"]).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TinyNet:
    torch.manual_seed(0)
    return train(TinyNet(SHAPES, output=True), SHAPES)


@pytest.fixture(scope="module")
def batch() -> dict:
    return make_batch(48, seed=2)


def predict(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        output = model(batch)
    return (output.logits if isinstance(output, ModelOutput) else output).argmax(dim=1)


def run(name: str, model, batch, targets, eps=EPS, seed: int = 0, **params) -> AttackResult:
    attack = build_attack(name, **{**ALL_ATTACKS.get(name, {}), **params})
    return attack(model, batch, targets, eps, starts=RandomStarts.numbered(len(batch["label"]), seed))


def assert_within_budget(result: AttackResult, batch: dict, eps: dict) -> None:
    for m, radius in eps.items():
        adversarial = result.batch[m]
        assert adversarial.shape == batch[m].shape and adversarial.dtype == batch[m].dtype
        assert (adversarial - batch[m]).abs().max().item() <= radius + 1e-6, m
        assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0, m


# -- 1, 2: untargeted modalities untouched, every perturbation within budget ----

@pytest.mark.parametrize("name", list(NATIVE))
def test_each_modality_gets_its_own_radius(model, batch, name):
    eps = {"rgb": 8 / 255, "skeleton": 2 / 255, "depth": 16 / 255}
    result = run(name, model, batch, tuple(eps), eps=eps)
    assert_within_budget(result, batch, eps)
    attacked = predict(model, batch) == batch["label"]
    for m, radius in eps.items():
        used = (result.batch[m] - batch[m])[attacked].abs().max().item()
        assert used > 0.9 * radius, f"{m} moved at most {used}, its radius is {radius}"


# -- 3, 4: early stop keeps the fooling example; clean errors are not attacked --

class Recorder(nn.Module):
    """Counts the samples of every forward run with autograd on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, batch):
        if torch.is_grad_enabled():
            self.sizes.append(batch["label"].shape[0])
        return self.model(batch)


@pytest.mark.parametrize("name, params", [("pgd", {"steps": 10}), ("cw-inf", {"steps": 10}),
                                          ("pgd", {"steps": 4, "restarts": 3})])
def test_reported_fooled_matches_a_forward_on_the_returned_batch(model, batch, name, params):
    recorder = Recorder(model)
    result = run(name, recorder, batch, ("rgb", "skeleton", "depth"), **params)
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])
    assert 0 < result.fooled.sum() < len(result.fooled)
    # Samples left at intermediate steps, not only at the first or after the last.
    steps = params["steps"]
    first_restart = recorder.sizes[:steps]
    assert any(a > b for a, b in zip(first_restart[1:-1], first_restart[2:])), recorder.sizes


class Trap(nn.Module):
    """Fooled only in a thin band: at two PGD steps from the clean input, not at three.

    With d the mean offset of ``rgb`` from 0.5 and α the step,
    class-0 score = ((d − 2.3α)/α)² − 0.2, class-1 score = 0; the loss gradient
    pushes d up until 2.3α, so PGD without random start reaches d = 2α (fooled)
    and then d = 3α (not fooled).
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, batch):
        d = (batch["rgb"] - 0.5).flatten(1).mean(dim=1)
        class_zero = ((d - 2.3 * self.alpha) / self.alpha) ** 2 - 0.2
        return torch.stack([class_zero, torch.zeros_like(class_zero)], dim=1)


def test_a_sample_fooled_midway_keeps_that_example():
    eps, alpha = 8 / 255, 2 / 255
    trap = Trap(alpha)
    batch = {"rgb": torch.full((3, 3, 2, 4, 4), 0.5), "skeleton": torch.rand(3, 3, 2, 5, 2),
             "label": torch.zeros(3, dtype=torch.long)}
    result = build_attack("pgd", steps=6, random_start=False)(trap, batch, ("rgb",), eps)
    assert result.fooled.all()
    assert torch.equal(result.fooled, predict(trap, result.batch) != batch["label"])
    offset = (result.batch["rgb"] - 0.5).flatten(1).mean(dim=1)
    assert torch.allclose(offset, torch.full((3,), 2 * alpha))  # the iterate of step 2, not a later one
    assert result.gradient_passes == 3 * 3  # steps 0, 1, 2


def test_early_stop_fools_at_least_the_samples_the_last_iterate_fools(model, batch):
    targets = ("rgb", "skeleton")
    last_iterate = run("pgd", model, batch, targets, steps=10, early_stop=False)
    early = run("pgd", model, batch, targets, steps=10, early_stop=True)
    assert (early.fooled | ~last_iterate.fooled).all()
    assert early.gradient_passes < last_iterate.gradient_passes


def test_skipping_the_final_check_keeps_the_examples_and_saves_its_forwards(model, batch):
    targets = ("rgb", "skeleton")
    checked = run("pgd", model, batch, targets, steps=5, early_stop=False)
    unchecked = run("pgd", model, batch, targets, steps=5, early_stop=False, final_check=False)
    for m in targets:
        assert torch.equal(unchecked.batch[m], checked.batch[m])
    assert unchecked.gradient_passes == checked.gradient_passes
    assert unchecked.forward_passes == checked.forward_passes - int((~clean_wrong(model, batch)).sum())
    assert torch.equal(unchecked.fooled, clean_wrong(model, batch))  # only the clean errors are known


def clean_wrong(model, batch) -> torch.Tensor:
    return predict(model, batch) != batch["label"]


@pytest.mark.parametrize("params", [{"final_check": False}, {"final_check": False, "early_stop": False, "restarts": 2}])
def test_final_check_can_be_skipped_only_without_early_stop_and_restarts(params):
    with pytest.raises(ValueError, match="final_check=False needs early_stop=False"):
        build_attack("pgd", **params)


# -- 5: PGD is at least as strong as FGSM ---------------------------------------

@pytest.mark.parametrize("targets", [("rgb",), ("rgb", "skeleton", "depth")], ids="+".join)
def test_pgd_robust_accuracy_is_at_most_fgsm(model, batch, targets):
    fgsm = run("fgsm", model, batch, targets)
    pgd = run("pgd", model, batch, targets, steps=20)
    fgsm_robust = 1 - fgsm.fooled.float().mean().item()
    pgd_robust = 1 - pgd.fooled.float().mean().item()
    assert 0 < fgsm_robust < 1
    assert pgd_robust <= fgsm_robust


# -- 6: parity with torchattacks ---------------------------------------------------

class OnView(nn.Module):
    """A batch-dict model as a function of one tensor, for torchattacks."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x):
        return self.model({self.modality: x})


@pytest.fixture(scope="module")
def rgb_model() -> TinyNet:
    torch.manual_seed(1)
    return train(TinyNet({"rgb": SHAPES["rgb"]}), {"rgb": SHAPES["rgb"]})


def test_native_pgd_matches_torchattacks_pgd(rgb_model):
    torchattacks = pytest.importorskip("torchattacks")
    full = make_batch(64, seed=3, shapes={"rgb": SHAPES["rgb"]})
    seed, eps, alpha, steps = 7, 4 / 255, 1 / 255, 10

    starts = RandomStarts.numbered(len(full["label"]), seed)
    reference = torchattacks.PGD(OnView(rgb_model, "rgb"), eps=eps, alpha=alpha, steps=steps, random_start=True)
    examples = []
    for i in range(len(full["label"])):  # torchattacks draws from the global RNG: each sample from its own seed
        torch.manual_seed(starts.seed_of(i, 0))
        examples.append(reference(full["rgb"][i:i + 1], full["label"][i:i + 1]))
    reference_batch = {"rgb": torch.cat(examples), "label": full["label"]}
    reference_fooled = predict(rgb_model, reference_batch) != full["label"]

    pgd = build_attack("pgd", steps=steps, rel_step=alpha / eps, early_stop=False)
    native = pgd(rgb_model, full, ("rgb",), eps, starts=starts)
    clean_wrong = predict(rgb_model, full) != full["label"]
    assert 0 < clean_wrong.sum() and 0 < (reference_fooled & ~clean_wrong).sum() < (~clean_wrong).sum()
    # Same outcome for every sample; a sample wrong on clean data counts as fooled.
    assert torch.equal(native.fooled, reference_fooled | clean_wrong)
    # On clean-correct samples the adversarial examples are the same, bit for bit.
    correct = ~clean_wrong
    assert torch.equal(native.batch["rgb"][correct], reference_batch["rgb"][correct])

    early = build_attack("pgd", steps=steps, rel_step=alpha / eps, early_stop=True)
    early_result = early(rgb_model, full, ("rgb",), eps, starts=starts)
    assert (early_result.fooled | ~native.fooled).all()


def test_native_fgsm_matches_adapted_fgsm_on_several_targets(model, batch):
    targets = ("rgb", "skeleton")
    native = run("fgsm", model, batch, targets)
    adapted = run("ta:FGSM", model, batch, targets)
    for m in targets:
        assert torch.equal(native.batch[m], adapted.batch[m])
    assert torch.equal(native.fooled, adapted.fooled)


def test_margin_loss_and_cw_inf_maximise_it(model, batch):
    from mmrobust.engine import margin_loss

    logits = torch.tensor([[2.0, 1.0, 3.0], [0.0, 5.0, 1.0]])
    assert torch.equal(margin_loss(logits, torch.tensor([0, 1])), torch.tensor([1.0, -4.0]))
    targets = ("rgb", "skeleton")
    cw = run("cw-inf", model, batch, targets, steps=5)
    direct = sign_gradient_attack(model, batch, targets, EPS, steps=5, rel_step=0.25, loss=margin_loss,
                                  random_start=True, starts=RandomStarts.numbered(len(batch["label"]), 0))
    for m in targets:
        assert torch.equal(cw.batch[m], direct.batch[m])


# -- 8: bad input ----------------------------------------------------------------

def test_unknown_attack_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"'pdg'.*did you mean 'pgd'"):
        build_attack("pdg")
    with pytest.raises(ValueError, match=r"torchattacks has no attack 'PDG'.*'PGD'"):
        build_attack("ta:PDG")


@pytest.mark.parametrize("name, params, message", [
    ("pgd", {"stpes": 3}, r"attack 'pgd': unknown parameter 'stpes'; did you mean 'steps'\? \(parameters: steps, rel_step"),
    ("pgd", {"steps": 0}, r"attack 'pgd': steps must be an integer in \[1, inf\), got 0"),
    ("pgd", {"steps": "10"}, r"attack 'pgd': steps must be int, got '10'"),
    ("pgd", {"rel_step": True}, r"attack 'pgd': rel_step must be float, got True"),
    ("fgsm", {"steps": 3}, r"attack 'fgsm': unknown parameter 'steps' \(it takes no parameters\)"),
    ("ta:PGD", {"stps": 3}, r"torchattacks.PGD has no parameter 'stps'.*valid: alpha, steps, random_start"),
    ("ta:PGD", {"eps": 0.1}, r"eps.*given per call"),
    ("ta:CW", {}, r"torchattacks.CW takes no eps"),
])
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_attack(name, **params)


@pytest.mark.parametrize("name", ["pgd", "ta:PGD"])
def test_bad_targets_and_radii_are_named(model, batch, name):
    attack = build_attack(name)
    with pytest.raises(ValueError, match=r"target 'audio' is not a modality.*available: rgb, skeleton, depth"):
        attack(model, batch, ("rgb", "audio"), EPS)
    with pytest.raises(ValueError, match=r"at least one modality"):
        attack(model, batch, (), EPS)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=rf"eps must be in \(0, 1\].*got {bad}"):
            attack(model, batch, ("rgb",), bad)
    with pytest.raises(ValueError, match=r"eps\['skeleton'\] must be in \(0, 1\].*got 2.0"):
        attack(model, batch, ("rgb", "skeleton"), {"rgb": EPS, "skeleton": 2.0})
    with pytest.raises(ValueError, match=r"no radius for target 'skeleton'"):
        attack(model, batch, ("rgb", "skeleton"), {"rgb": EPS})


# -- 9: the torchattacks adapter ---------------------------------------------------

@pytest.mark.parametrize("name", list(ADAPTED))
@pytest.mark.parametrize("targets", [("skeleton",), ("rgb", "depth")], ids="+".join)
def test_adapter_reports_what_a_forward_sees(model, batch, name, targets):
    result = run(name, model, batch, targets)
    assert_within_budget(result, batch, {m: EPS for m in targets})
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])
    assert 0 < result.fooled.sum() < len(result.fooled)


def test_adapter_refuses_unequal_radii(model, batch):
    with pytest.raises(ValueError, match=r"one eps per call.*rgb=0.0313725, skeleton=0.00784314.*native engine"):
        run("ta:PGD", model, batch, ("rgb", "skeleton"), eps={"rgb": 8 / 255, "skeleton": 2 / 255})
    result = run("ta:PGD", model, batch, ("rgb", "skeleton"), eps={"rgb": EPS, "skeleton": EPS, "depth": 0.5})
    assert result.batch["depth"] is batch["depth"]


def test_adapter_names_the_attack_and_shape_it_cannot_handle(model, batch):
    shape = r"\(\d+, 3, 4, 5, 2\)"
    with pytest.raises(ValueError, match=rf"torchattacks.Square cannot attack the native view of shape {shape}"):
        run("ta:Square", model, batch, ("skeleton",), n_queries=5)


def test_adapter_keeps_modalities_aligned_when_the_attack_works_on_subsets(model, batch):
    # APGD attacks only the samples it has not fooled yet: the closed-over
    # modalities must follow the rows it picks.
    targets = ("rgb", "skeleton")
    result = run("ta:APGD", model, batch, targets, layout="image", steps=5, n_restarts=2)
    assert_within_budget(result, batch, {m: EPS for m in targets})
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])
    assert result.batch["depth"] is batch["depth"]


def test_closed_model_gives_every_row_the_one_samples_other_inputs(model, batch):
    from mmrobust.attacks.torchattacks_adapter import ClosedModel, to_view

    one = take(batch, slice(2, 3))
    view = to_view(one, ("rgb",), "native")
    closed = ClosedModel(model, one, ("rgb",), view, EPS)
    g = torch.Generator().manual_seed(0)
    candidates = (view + torch.empty((3, *view.shape[1:])).uniform_(-EPS, EPS, generator=g)).clamp(0, 1)
    expected = {**take(batch, torch.tensor([2, 2, 2])), "rgb": candidates}
    with torch.no_grad():
        assert torch.equal(closed(candidates), model(expected).logits)


def test_adapter_restores_the_callers_mode(model, batch):
    model.train()
    model.head.eval()
    try:
        run("ta:PGD", model, batch, ("rgb",))
        assert model.training and model.encoders.training and not model.head.training
    finally:
        model.eval()


def test_missing_torchattacks_says_how_to_install(monkeypatch):
    from mmrobust.attacks.torchattacks_adapter import import_torchattacks

    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match=r"install it with `pip install --no-deps torchattacks==3.5.1`"):
        import_torchattacks()


# -- 10: cost accounting -----------------------------------------------------------

class Brittle(nn.Module):
    """Right on the exact clean input (every value 0.5) and wrong anywhere else."""

    def forward(self, batch):
        distance = (batch["rgb"] - 0.5).abs().flatten(1).amax(dim=1)
        class_zero = 1.0 - 1e4 * distance
        return torch.stack([class_zero, torch.zeros_like(class_zero)], dim=1)


@pytest.fixture
def brittle_batch() -> dict:
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0])  # the model says 0 for every clean sample
    return {"rgb": torch.full((8, 3, 2, 4, 4), 0.5), "skeleton": torch.rand(8, 3, 2, 5, 2), "label": labels}


def test_gradient_passes_count_only_samples_still_in_play(brittle_batch):
    correct = int((brittle_batch["label"] == 0).sum())
    size = len(brittle_batch["label"])
    result = run("pgd", Brittle(), brittle_batch, ("rgb",), steps=20)
    assert result.fooled.all()
    assert result.gradient_passes == correct  # all fooled at the random start, at step 0
    assert result.forward_passes == size  # the clean forward; no final check was needed

    full = run("pgd", Brittle(), brittle_batch, ("rgb",), steps=20, early_stop=False)
    assert full.gradient_passes == 20 * correct
    assert full.forward_passes == size + correct

    fgsm = build_attack("fgsm")(Brittle(), brittle_batch, ("rgb",), EPS, clean_logits=torch.tensor([[1.0, 0.0]] * size))
    assert (fgsm.gradient_passes, fgsm.forward_passes) == (correct, correct)


# -- the real network -------------------------------------------------------------

def test_attack_on_multimodal_net_leaves_parameters_and_mode_alone():
    from mmrobust.backbones.hcn import HCN
    from mmrobust.backbones.i3d import I3D
    from mmrobust.model import MultimodalNet

    torch.manual_seed(0)
    net = MultimodalNet({"rgb": I3D(width=0.0625), "skeleton": HCN(num_joints=5, num_frames=16, width=0.5)},
                        num_classes=CLASSES).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.rand(4, 3, 8, 16, 16, generator=g), "skeleton": torch.rand(4, 3, 16, 5, 2, generator=g)}
    batch["label"] = predict(net, batch)  # every sample correct clean, so every sample is attacked
    with torch.no_grad():  # the caller's no_grad must not stop the attack
        result = sign_gradient_attack(net, batch, ("rgb", "skeleton"), {"rgb": 8 / 255, "skeleton": 4 / 255},
                                      steps=2, rel_step=0.5, random_start=True, early_stop=False)
    assert result.gradient_passes == 2 * 4
    assert_within_budget(result, batch, {"rgb": 8 / 255, "skeleton": 4 / 255})
    assert all(p.grad is None for p in net.parameters())
    assert not any(module.training for module in net.modules())


@pytest.mark.parametrize("name, params", [("pgd", {"steps": 10}), ("pgd", {"steps": 5, "restarts": 2}),
                                          ("cw-inf", {"steps": 6}), ("fgsm", {}),
                                          ("pgd", {"steps": 8, "early_stop": False})])
def test_pool_width_does_not_change_the_result(model, batch, name, params):
    """Samples stream through a pool of max_batch; trajectories are per sample, so the
    adversarial batch and outcomes are those of attacking the whole batch at once."""
    attack = build_attack(name, **params)
    whole = attack(model, batch, ("rgb", "skeleton"), EPS, starts=RandomStarts.numbered(len(batch["label"]), 3))
    for width in (1, 3, 7):
        pooled = attack(model, batch, ("rgb", "skeleton"), EPS, starts=RandomStarts.numbered(len(batch["label"]), 3),
                        max_batch=width)
        assert torch.equal(pooled.fooled, whole.fooled)
        for m in ("rgb", "skeleton"):
            assert torch.allclose(pooled.batch[m], whole.batch[m], atol=1e-6), (m, width)
        assert pooled.gradient_passes + pooled.forward_passes >= whole.gradient_passes
