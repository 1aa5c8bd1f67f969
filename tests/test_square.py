"""Square Attack: the published schedule, windows on video and skeleton grids, and a search that only improves.

The schedule is compared with the reference's own ``p_selection``
(pyautoattack 0.2.0, the AutoAttack authors' code; ``make setup`` installs it).
Hand-made models record every row they see, with the sample id riding along
as an integer tensor (not a modality), so a test can follow one sample's
queries through the pool.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import pyautoattack.square as reference  # `make setup` installs it (pyautoattack==0.2.0, --no-deps)

from mmrobust.attack import RandomStarts, build_attack, take
from mmrobust.model import logits_of
from mmrobust.registry import ATTACKS
from test_attacks import CLASSES, SHAPES, TinyNet, assert_within_budget, make_batch, predict, train
from test_attacks import batch, model, one_thread  # noqa: F401  (fixtures: its tiny model and batch, one thread)

square = importlib.import_module(ATTACKS.get("square").__module__)
ALL = tuple(SHAPES)
VIDEO, SKELETON = (8, 64, 64), (32, 25, 1)  # T × H × W; T × V × M with one person


def margin_of(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return square.margin(logits_of(model(batch)), batch["label"])


class Recorder(nn.Module):
    """Records the sample ids and targeted inputs of every forward (the ids come in ``batch["id"]``)."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]):
        super().__init__()
        self.model, self.keys, self.calls = model, keys, []

    def forward(self, batch):
        self.calls.append({"id": batch["id"].clone(), **{k: batch[k].clone() for k in self.keys}})
        return self.model(batch)

    def queries_of(self, sample: int) -> list[dict]:
        """The inputs sample ``sample`` was queried with, in order (the clean forward included)."""
        return [{k: call[k][call["id"] == sample][0] for k in self.keys}
                for call in self.calls if bool((call["id"] == sample).any())]


class OneByOne(nn.Module):
    """Runs the model on one sample at a time: a sample's logits cannot depend on the batch it is in."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        size = batch["label"].shape[0]
        return torch.cat([logits_of(self.model(take(batch, slice(i, i + 1)))) for i in range(size)])


class Constant(nn.Module):
    """The same logits whatever the input: never fooled, no candidate ever better than the start."""

    def forward(self, batch):
        return torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(batch["label"].shape[0], -1)


def with_ids(batch: dict) -> dict:
    return {**batch, "id": torch.arange(len(batch["label"]))}


def test_schedule_is_the_reference_p_selection():
    for queries in (50, 1000, 5000, 10000):
        for rescale in (True, False):
            ours = [square.window_fraction(i, queries, 0.8, rescale) for i in range(queries)]
            theirs = [reference.SquareAttack(None, n_queries=queries, p_init=0.8, resc_schedule=rescale).p_selection(i)
                      for i in range(queries)]
            assert ours == theirs, (queries, rescale)
    # The breakpoints at 10000 queries, where it = i: p_init halved after 10, 50, 200, 500, 1000, 2000, … .
    fractions = {i: square.window_fraction(i, 10000, 0.8) for i in
                 (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000, 6001, 8000, 8001)}
    halved = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9]
    assert list(fractions.values()) == [0.8 / 2 ** h for h in halved]
    assert square.window_fraction(4999, 5000, 0.8) == 0.8 / 512
    # AutoAttack "standard" does not rescale: 5000 queries end at p_init / 2**7, after it = 4000
    assert square.window_fraction(4999, 5000, 0.8, rescale=False) == 0.8 / 128
    assert build_attack("square").params.rescale is False


def test_window_sides_on_video_and_skeleton_grids():
    assert square.window_sides(VIDEO, 0.8) == (7, 59, 59)  # 8, 64, 64 times 0.8^(1/3) = 0.928, rounded
    assert square.window_sides(VIDEO, 0.8 / 16) == (3, 24, 24)
    assert square.window_sides(VIDEO, 0.8 / 512) == (1, 7, 7)
    # One person: M = 1 stays whole and the window spreads over T × V, 0.8^(1/2) = 0.894.
    assert square.window_sides(SKELETON, 0.8) == (29, 22, 1)
    assert square.window_sides(SKELETON, 0.8 / 512) == (1, 1, 1)
    assert square.window_sides((32, 25, 2), 0.8) == (30, 23, 2)  # two persons: k = 3, 0.8^(1/3) = 0.928
    assert square.window_sides((100,), 0.05) == (5,)  # a (B, D) modality: one channel over D


def test_each_query_changes_one_window_of_every_targeted_modality():
    """With nothing ever accepted, query i differs from the start only inside the window of iteration i."""
    queries = 40
    batch = {"rgb": torch.rand(2, 3, *VIDEO, generator=torch.Generator().manual_seed(0)),
             "skeleton": torch.rand(2, 3, *SKELETON, generator=torch.Generator().manual_seed(1)),
             "label": torch.zeros(2, dtype=torch.long)}
    recorder = Recorder(Constant(), ("rgb", "skeleton"))
    result = build_attack("square", queries=queries)(recorder, with_ids(batch), ("rgb", "skeleton"), 8 / 255)
    assert not result.fooled.any() and result.forward_passes == 2 * (queries + 2)
    for sample in range(2):
        _, start, *candidates = recorder.queries_of(sample)
        assert len(candidates) == queries
        for m in ("rgb", "skeleton"):
            assert torch.equal(result.batch[m][sample], start[m])  # no candidate was better than the start
            for i, candidate in enumerate(candidates):
                sides = square.window_sides(candidate[m].shape[1:], square.window_fraction(i, queries, 0.8, rescale=False))
                changed = (candidate[m] != start[m]).any(dim=0)  # over channels
                extent = [int(w.max() - w.min() + 1) for w in changed.nonzero().unbind(1)]
                assert extent, (m, i)  # never an unchanged window
                # Inside the window; the last axis may end early where the stripes already had the window's sign.
                assert extent[:-1] == list(sides[:-1]) and extent[-1] <= sides[-1], (m, i, extent, sides)
            # The skeleton's stripes are one sign per channel (M = 1): a changed channel changes in the whole window.
            if m == "skeleton":
                assert [int(w.max() - w.min() + 1) for w in changed.nonzero().unbind(1)] == list(sides)


def test_every_example_lies_on_a_corner_of_its_own_ball():
    shapes = {**SHAPES, "feature": (20,)}  # a (B, D) modality too
    torch.manual_seed(1)
    net = train(TinyNet(shapes), shapes)
    batch = make_batch(32, seed=3, shapes=shapes)
    eps = {"rgb": 8 / 255, "skeleton": 2 / 255, "depth": 16 / 255, "feature": 4 / 255}
    result = build_attack("square", queries=100)(net, batch, tuple(eps), eps)
    assert_within_budget(result, batch, eps)
    attacked = predict(net, batch) == batch["label"]
    for m, radius in eps.items():
        clean, example = batch[m][attacked], result.batch[m][attacked]
        corners = torch.stack([(clean + radius).clamp(max=1), (clean - radius).clamp(min=0)])
        assert (example == corners).any(dim=0).all(), m  # every entry at x ± ε_m (clamped to [0, 1])


def test_untargeted_modalities_and_the_label_come_back_as_the_same_objects(model, batch):
    before = {k: v.clone() for k, v in batch.items()}
    result = build_attack("square", queries=20)(model, batch, ("skeleton",), 8 / 255)
    for key in ("rgb", "depth", "label"):
        assert result.batch[key] is batch[key], key
    assert not torch.equal(result.batch["skeleton"], batch["skeleton"])
    for key, value in before.items():
        assert torch.equal(batch[key], value), key


def test_breaks_an_undefended_model(model, batch):
    correct = predict(model, batch) == batch["label"]
    square_200 = build_attack("square", queries=200, rescale=True)  # the whole schedule squeezed into 200 queries
    result = square_200(model, batch, ALL, 16 / 255)
    broken = result.fooled & correct
    assert int(broken.sum()) >= int(correct.sum()) // 3
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])


def test_a_fooled_sample_keeps_the_query_that_fooled_it(model, batch):
    recorder = Recorder(model, ALL)
    queries = 200
    result = build_attack("square", queries=queries)(recorder, with_ids(batch), ALL, 16 / 255, max_batch=16)
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])
    correct = predict(model, batch) == batch["label"]
    spent = []
    for sample in correct.nonzero().squeeze(1).tolist():
        asked = recorder.queries_of(sample)[1:]  # after the clean forward
        spent.append(len(asked))
        if result.fooled[sample]:
            for m in ALL:  # the last query is the one that fooled it, and it is what comes back
                assert torch.equal(result.batch[m][sample], asked[-1][m]), (sample, m)
        else:
            assert len(asked) == queries + 1
    left_early = [n for n in spent if n <= queries]
    assert len(set(left_early)) > 3  # samples left at many different queries, not only at the start


def test_forward_passes_count_every_row_the_model_sees(model, batch):
    recorder = Recorder(model, ())
    result = build_attack("square", queries=60)(recorder, with_ids(batch), ALL, 16 / 255, max_batch=10)
    rows = [len(call["id"]) for call in recorder.calls]
    assert result.forward_passes == sum(rows) and result.gradient_passes == 0
    assert max(rows[1:]) == 10  # the pool, after the clean forward of the whole batch
    recorder.calls.clear()
    with torch.no_grad():
        clean_logits = model(batch).logits
    given = build_attack("square", queries=60)(recorder, with_ids(batch), ALL, 16 / 255, clean_logits=clean_logits,
                                               max_batch=10)
    assert given.forward_passes == sum(len(call["id"]) for call in recorder.calls) == result.forward_passes - 48


def test_never_fooled_samples_end_no_worse_than_the_stripes(model, batch):
    recorder = Recorder(model, ALL)
    result = build_attack("square", queries=100)(recorder, with_ids(batch), ALL, 4 / 255)
    robust = (~result.fooled).nonzero().squeeze(1).tolist()
    assert len(robust) > 10
    end = margin_of(model, result.batch)
    improved = 0
    for sample in robust:
        _, start, *candidates = recorder.queries_of(sample)
        one = {**take(batch, slice(sample, sample + 1))}
        margins = torch.cat([margin_of(model, {**one, **{m: q[m][None] for m in ALL}}) for q in [start, *candidates]])
        assert end[sample] <= margins[0]  # never worse than the start
        assert end[sample] <= margins.min() + 1e-4 * (1 + margins.min().abs())  # the best query, up to the tie margin
        improved += bool(end[sample] < margins[0])
    assert improved > len(robust) // 2


def test_a_samples_outcome_does_not_depend_on_its_batch():
    """Six samples together, in two batches of three, or through a pool of two: the same examples, bit for bit.

    The model runs one sample at a time, so a sample's logits are the same in any batch and any difference
    would come from the attack."""
    torch.manual_seed(0)
    net = OneByOne(train(TinyNet(SHAPES, output=True), SHAPES))
    batch = make_batch(6, seed=6)
    attack, targets, eps = build_attack("square", queries=80), ALL, 16 / 255
    together = attack(net, batch, targets, eps, starts=RandomStarts(7, torch.arange(6)))
    pooled = attack(net, batch, targets, eps, starts=RandomStarts(7, torch.arange(6)), max_batch=2)
    halves = [attack(net, take(batch, slice(a, a + 3)), targets, eps, starts=RandomStarts(7, torch.arange(a, a + 3)))
              for a in (0, 3)]
    assert 0 < int(together.fooled.sum()) < 6  # both outcomes present
    for other in (pooled, halves):
        parts = other if isinstance(other, list) else [other]
        assert torch.equal(torch.cat([p.fooled for p in parts]), together.fooled)
        assert sum(p.forward_passes for p in parts) == together.forward_passes
        for m in targets:
            assert torch.equal(torch.cat([p.batch[m] for p in parts]), together.batch[m]), m
    reseeded = attack(net, batch, targets, eps, starts=RandomStarts(8, torch.arange(6)))
    for m in targets:  # the comparison above is not vacuous: other seeds give other examples
        assert not torch.equal(reseeded.batch[m], together.batch[m])
        assert not torch.equal(together.batch[m], batch[m])


@pytest.mark.parametrize("values, message", [({"queries": 0}, "queries"), ({"p_init": 0.0}, "p_init"),
                                             ({"p_init": 1.5}, "p_init"), ({"queries": 10.0}, "queries")])
def test_parameters_are_checked(values, message):
    with pytest.raises(ValueError, match=message):
        build_attack("square", **values)


def test_samples_misclassified_clean_are_neither_attacked_nor_queried(model, batch):
    wrong = {**batch, "label": (predict(model, batch) + 1) % CLASSES}
    recorder = Recorder(model, ())
    result = build_attack("square", queries=30)(recorder, with_ids(wrong), ALL, 8 / 255)
    assert result.fooled.all() and result.forward_passes == 48 and len(recorder.calls) == 1
    for m in ALL:
        assert torch.equal(result.batch[m], batch[m])

