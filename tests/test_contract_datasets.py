"""Every registered dataset meets the contract of :class:`mmrobust.datasets.base.Dataset`.

Parametrised over the registry when the tests are collected, so a dataset
added as a module of ``mmrobust/datasets/`` or through a third-party entry
point is tested here without editing this file. Each test loads the tiny
instance the dataset's ``example`` writes (a few samples of a real release in
its exact file format, prepared), in seconds.
"""

from __future__ import annotations

import hashlib
import re
import textwrap

import numpy as np
import pytest

from mmrobust.datasets.base import Dataset
from mmrobust.registry import DATASETS

NAMES = DATASETS.names()


@pytest.fixture(scope="module", params=NAMES)
def example(request, tmp_path_factory):
    """``(dataset class, data request, bundle)`` of one registered dataset's example."""
    dataset = DATASETS.get(request.param)
    data_request = dataset().example(tmp_path_factory.mktemp(request.param))
    return dataset, data_request, dataset().load(data_request)


# -- the checks, one per property (also run on the docstring's example below) --------------------------------

def check_splits_are_not_empty(bundle) -> None:
    assert len(bundle.train) > 0 and len(bundle.test) > 0


def check_modalities_are_declared(dataset, bundle) -> None:
    assert bundle.modalities, "a bundle holds at least one modality"
    declared = {modality.name: modality for modality in dataset.modalities}
    for name in bundle.modalities:
        assert bundle.modality_info.get(name) == declared.get(name), f"{name!r} is not described as declared"
    codes = bundle.codes
    assert list(codes) == list(bundle.modalities)
    assert all(codes.values()) and len(set(codes.values())) == len(codes), f"codes not unique and non-empty: {codes}"
    assert all(bundle.modality_info[name].display for name in bundle.modalities)


def check_samples_have_one_shape_and_batches_their_range(bundle) -> None:
    for part in (bundle.train, bundle.test):
        assert part.modalities == bundle.modalities
        for name in bundle.modalities:
            assert tuple(part.arrays[name].shape[1:]) == bundle.input_shape(name)
        batch = part.batch(np.arange(len(part)))
        for name in bundle.modalities:
            values = batch[name]
            assert values.dtype.is_floating_point and values.shape[1:] == bundle.input_shape(name)
            assert 0.0 <= values.min().item() and values.max().item() <= 1.0, f"{name} leaves [0, 1]"
        labels = batch["label"]
        assert str(labels.dtype) == "torch.int64" and labels.shape == (len(part),)
        assert 0 <= labels.min().item() and labels.max().item() < bundle.num_classes


def check_layouts(bundle) -> None:
    if "rgb" in bundle.modalities:
        channels, *rest = bundle.input_shape("rgb")
        assert channels == 3 and len(rest) == 3, f"rgb is (3, T, H, W), got {bundle.input_shape('rgb')}"
    if "skeleton" in bundle.modalities:
        assert len(bundle.input_shape("skeleton")) == 4, "skeleton is (C, T, V, M)"


def check_class_names(bundle) -> None:
    assert len(bundle.class_names) == bundle.num_classes and all(bundle.class_names)


def check_fingerprint_is_sha256_hex(bundle) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", bundle.fingerprint), bundle.fingerprint


def check_no_sample_in_both_splits(bundle) -> None:
    def rows(part) -> set[bytes]:
        arrays = [np.asarray(part.arrays[name]) for name in part.modalities]
        return {hashlib.sha256(b"".join(np.ascontiguousarray(a[i]).tobytes() for a in arrays)).digest()
                for i in range(len(part))}

    shared = rows(bundle.train) & rows(bundle.test)
    assert not shared, f"{len(shared)} test samples are byte-identical to training samples"


def check_loading_again_gives_the_same_data(dataset, data_request, bundle) -> None:
    again = dataset().load(data_request)
    assert again.fingerprint == bundle.fingerprint
    for part, other in ((bundle.train, again.train), (bundle.test, again.test)):
        assert part.arrays.keys() == other.arrays.keys()
        for name in part.arrays:
            np.testing.assert_array_equal(np.asarray(part.arrays[name]), np.asarray(other.arrays[name]))


# -- every registered dataset ------------------------------------------------------------------------------

def test_registered_entries_are_datasets():
    for name in NAMES:
        entry = DATASETS.get(name)
        assert isinstance(entry, type) and issubclass(entry, Dataset), f"{name!r} is not a Dataset subclass"


def test_train_and_test_are_not_empty(example):
    check_splits_are_not_empty(example[2])


def test_every_modality_is_declared_with_a_unique_code(example):
    dataset, _, bundle = example
    check_modalities_are_declared(dataset, bundle)


def test_samples_share_a_shape_and_batches_lie_in_the_unit_range(example):
    check_samples_have_one_shape_and_batches_their_range(example[2])


def test_rgb_and_skeleton_have_their_layouts(example):
    check_layouts(example[2])


def test_one_class_name_per_class(example):
    check_class_names(example[2])


def test_fingerprint_is_a_sha256_hex_digest(example):
    check_fingerprint_is_sha256_hex(example[2])


def test_no_test_sample_is_a_training_sample(example):
    check_no_sample_in_both_splits(example[2])


def test_loading_again_gives_the_same_fingerprint_and_arrays(example):
    check_loading_again_gives_the_same_data(*example)


def test_the_example_written_afresh_elsewhere_has_the_same_fingerprint(example, tmp_path):
    dataset, _, bundle = example
    assert dataset().load(dataset().example(tmp_path)).fingerprint == bundle.fingerprint


def test_a_prepared_dataset_counts_what_it_loads(example):
    dataset, data_request, bundle = example
    if not dataset.has_prepare():
        with pytest.raises(ValueError, match="no prepare step"):
            dataset().prepare(data_request)
        return
    manifest = dataset().prepare(data_request)  # prepared by the example already: the same manifest again
    counts = manifest["splits"][bundle.split]
    assert (counts["train"]["count"], counts["test"]["count"]) == (len(bundle.train), len(bundle.test))
    assert manifest["num_samples"] == len(bundle.train) + len(bundle.test)


# -- the contract's own example ----------------------------------------------------------------------------

def test_the_dataset_docstring_example_meets_the_contract():
    code = textwrap.dedent(Dataset.__doc__.split("Example::", 1)[1])
    with DATASETS.scoped():
        namespace: dict = {}
        exec(compile(code, "Dataset.__doc__", "exec"), namespace)  # noqa: S102 - our own docstring
        dataset, bundle = DATASETS.get("noise"), namespace["bundle"]
        request = namespace["DataRequest"](rgb_frames=4, rgb_size=16)
        for check in (check_splits_are_not_empty, check_samples_have_one_shape_and_batches_their_range,
                      check_layouts, check_class_names, check_fingerprint_is_sha256_hex,
                      check_no_sample_in_both_splits):
            check(bundle)
        check_modalities_are_declared(dataset, bundle)
        check_loading_again_gives_the_same_data(dataset, request, bundle)
