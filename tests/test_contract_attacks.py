"""The attack contract, checked for every registered attack (built-in or from an entry point).

Each attack is built from its ``example`` parameters (a quick instance) and
run on a tiny three-modality model, so a new attack is tested by this file
without editing it: every perturbation inside its ball and [0, 1]; untargeted
modalities and the label handed back as the very same tensors and the
caller's batch never written; samples misclassified clean counted fooled and
returned unchanged; ``fooled`` agreeing with a forward on the returned batch;
outcomes independent of batching and pool width; the same starts giving the
same examples without moving the caller's RNG; cost counters that count.
"""

from __future__ import annotations

import pytest
import torch

from mmrobust.attack import AttackResult, RandomStarts, build_attack, take
from mmrobust.registry import ATTACKS
from test_attacks import CLASSES, EPS, TARGET_SETS, assert_within_budget, predict
from test_attacks import batch, model, one_thread  # noqa: F401  (fixtures: the tiny three-modality model and data)

NAMES = ATTACKS.names()


def example(name: str):
    return build_attack(name, **ATTACKS.get(name).example)


def starts(size: int, seed: int = 0, first: int = 0) -> RandomStarts:
    return RandomStarts(seed, torch.arange(first, first + size))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("targets", TARGET_SETS, ids="+".join)
def test_untargeted_inputs_come_back_untouched_and_every_perturbation_within_budget(model, batch, name, targets):
    before = {k: v.clone() for k, v in batch.items()}
    result = example(name)(model, batch, targets, EPS, starts=starts(len(batch["label"])))
    assert list(result.batch) == list(batch)
    for key in batch:
        if key not in targets:
            assert result.batch[key] is batch[key], key
    for m in targets:
        assert not torch.equal(result.batch[m], batch[m]), f"{m} was not attacked"
    for key, value in before.items():
        assert torch.equal(batch[key], value), f"the attack wrote into the caller's {key}"
    assert_within_budget(result, batch, {m: EPS for m in targets})


@pytest.mark.parametrize("name", NAMES)
def test_samples_misclassified_clean_count_as_fooled_and_come_back_unchanged(model, batch, name):
    predicted = predict(model, batch)
    wrong = torch.arange(len(predicted)) % 3 == 0
    relabelled = {**batch, "label": torch.where(wrong, (predicted + 1) % CLASSES, predicted)}
    targets = ("rgb", "depth")
    result = example(name)(model, relabelled, targets, EPS, starts=starts(len(predicted)))
    assert result.fooled[wrong].all()
    for m in targets:
        assert torch.equal(result.batch[m][wrong], batch[m][wrong])
        assert not torch.equal(result.batch[m][~wrong], batch[m][~wrong])


@pytest.mark.parametrize("name", NAMES)
def test_fooled_is_what_a_forward_on_the_returned_batch_says(model, batch, name):
    result = example(name)(model, batch, ("rgb", "skeleton"), EPS, starts=starts(len(batch["label"])))
    assert result.fooled.dtype == torch.bool and result.fooled.shape == batch["label"].shape
    assert torch.equal(result.fooled, predict(model, result.batch) != batch["label"])


@pytest.mark.parametrize("name", NAMES)
def test_outcomes_do_not_depend_on_batching(model, batch, name):
    """A sample's starts come from (seed, sample id, restart) alone: the same outcomes and examples
    whether it is attacked in the whole batch, in a pool of 1 or 7, or in another chunk."""
    attack, targets, n = example(name), ("rgb", "skeleton"), len(batch["label"])
    whole = attack(model, batch, targets, EPS, starts=starts(n, 11, 1000))
    runs = [attack(model, batch, targets, EPS, starts=starts(n, 11, 1000), max_batch=width) for width in (1, 7)]
    chunks = [attack(model, take(batch, slice(a, b)), targets, EPS, starts=starts(b - a, 11, 1000 + a), max_batch=64)
              for a, b in ((0, 5), (5, 29), (29, n))]
    runs.append(AttackResult({m: torch.cat([c.batch[m] for c in chunks]) for m in targets},
                             torch.cat([c.fooled for c in chunks])))
    assert 0 < int(whole.fooled.sum()) < n
    for other in runs:
        assert torch.equal(other.fooled, whole.fooled)
        for m in targets:
            assert torch.allclose(other.batch[m], whole.batch[m], atol=1e-6), m


@pytest.mark.parametrize("name", NAMES)
def test_the_same_starts_give_the_same_examples_and_leave_the_callers_rng_alone(model, batch, name):
    attack, targets, n = example(name), ("rgb", "skeleton"), len(batch["label"])
    rng = torch.get_rng_state()
    first = attack(model, batch, targets, EPS, starts=starts(n, 5))
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global RNG moved"
    second = attack(model, batch, targets, EPS, starts=starts(n, 5))
    assert torch.equal(first.fooled, second.fooled)
    for m in targets:
        assert torch.equal(first.batch[m], second.batch[m])


@pytest.mark.parametrize("name", NAMES)
def test_cost_counters_count_the_samples_attacked(model, batch, name):
    n = len(batch["label"])
    with torch.no_grad():
        clean_logits = model(batch).logits
    correct = int((clean_logits.argmax(1) == batch["label"]).sum())
    result = example(name)(model, batch, ("rgb",), EPS, starts=starts(n), clean_logits=clean_logits)
    for count in (result.gradient_passes, result.forward_passes):
        assert isinstance(count, int) and count >= 0
    # every sample correct on clean data is attacked at least once (a gradient-free attack queries instead)
    spent = result.forward_passes if getattr(example(name), "gradient_free", False) else result.gradient_passes
    assert spent >= correct
    without = example(name)(model, batch, ("rgb",), EPS, starts=starts(n))
    assert without.forward_passes >= result.forward_passes + n  # the clean forward it now has to run itself
