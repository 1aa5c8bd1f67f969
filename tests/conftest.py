"""Shared fixtures: a per-session data cache and a small slice of the synthetic data."""

from __future__ import annotations

import contextlib
import dataclasses

import mmrobust  # noqa: F401  first, so its runtime settings precede torch's initialisation
import numpy as np
import pytest
import torch

from mmrobust.datasets.base import DataRequest, Dataset, DatasetBundle
from mmrobust.registry import DATASETS

SMALL_DATASET = "synthetic-small"


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``MMROBUST_CACHE`` at a session temp dir.

    The synthetic data is generated once per session (about 11 s) and the
    user's ``~/.cache/mmrobust`` is never touched.
    """
    cache = tmp_path_factory.mktemp("mmrobust-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMROBUST_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny, and on a busy two-core machine
    a second OpenMP thread spin-waits and makes training ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _registered_small_synthetic():
    with DATASETS.scoped():

        @DATASETS.register(SMALL_DATASET)
        class SmallSynthetic(Dataset):
            modalities = DATASETS.get("synthetic").modalities

            def load(self, request: DataRequest) -> DatasetBundle:
                full = DATASETS.get("synthetic")().load(request)
                kept = np.arange(0, len(full.train), 5)
                train = full.train.take(kept)
                test = full.test.take(np.arange(0, len(full.test), 3))
                return dataclasses.replace(full, name=SMALL_DATASET, train=train, test=test,
                                           fingerprint=f"{full.fingerprint}-small", joints_in_frames=None,
                                           train_subjects=full.train_subjects[kept])

        yield SMALL_DATASET


@pytest.fixture
def small_synthetic() -> str:
    """Register ``synthetic-small``: every 5th training clip and every 3rd test clip of ``synthetic``.

    Same generator, all classes and subjects, a fifth of the training cost;
    for tests of the run machinery rather than of the data. Unregistered after
    the test.
    """
    with _registered_small_synthetic() as name:
        yield name


@pytest.fixture(scope="module")
def small_synthetic_module() -> str:
    """``synthetic-small`` registered for a whole test module."""
    with _registered_small_synthetic() as name:
        yield name


ONE_EPOCH = "synthetic-small-1ep"


@contextlib.contextmanager
def _registered_one_epoch(small: str):
    """Register ``synthetic-small-1ep``: ``small`` (``synthetic-small``) with a one-epoch recipe."""
    with DATASETS.scoped():

        @DATASETS.register(ONE_EPOCH)
        class OneEpoch(Dataset):
            def load(self, request: DataRequest) -> DatasetBundle:
                bundle = DATASETS.get(small)().load(request)
                return dataclasses.replace(bundle, name=ONE_EPOCH, default_epochs=1)

        yield ONE_EPOCH


@pytest.fixture
def one_epoch_dataset(small_synthetic) -> str:
    """``synthetic-small`` with a one-epoch recipe, for tests of sweeps and studies."""
    with _registered_one_epoch(small_synthetic) as name:
        yield name


@pytest.fixture(scope="module")
def one_epoch_module(small_synthetic_module) -> str:
    """``synthetic-small-1ep`` registered for a whole test module."""
    with _registered_one_epoch(small_synthetic_module) as name:
        yield name
