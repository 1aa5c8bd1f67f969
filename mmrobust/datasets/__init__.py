"""Datasets: one module per dataset, each a :class:`~mmrobust.datasets.base.Dataset` subclass
registered with ``@register_dataset("name")``.

A dataset declares its modalities (:class:`~mmrobust.datasets.base.Modality`:
batch key, short code, human name) and implements ``load(request) ->
DatasetBundle``; callers write ``DATASETS.get(name)().load(request)``. A
dataset whose raw release must be converted first also implements
``prepare(request, workers=, strict=)`` (run by ``mmrobust prepare``) and
``example(directory)``, which writes and prepares a few samples in the real
file format for the contract tests (``tests/test_contract_datasets.py``). The
contract, with a minimal example, is the docstring of
:class:`~mmrobust.datasets.base.Dataset`.

Public modules: :mod:`~mmrobust.datasets.base` (the contract and the batch
conventions), :mod:`~mmrobust.datasets.prepare` (``prepare`` by name), and one
per dataset (``synthetic``, ``ntu60``, ``imigue``). The private modules are the
machinery the real datasets share:

- ``_plan``: the work of a prepare, one picklable task per sample, run in
  worker processes;
- ``_cache_write``: streams a plan into the memory-mapped cache (layout,
  resuming, skeleton normalisation); every plan's worker returns ``skeleton``,
  ``label`` and a per-sample ``name`` string;
- ``_cache_read``: finds a prepared cache and cuts it into train and test;
- ``_unpickle``: loads data pickles without letting them run code;
- ``_video``: frame sampling, person crops, video decoding;
- ``_ntu_format``, ``_imigue_format``: each release's file formats, read and
  written.

The modules that worker processes import (``_plan``, ``_unpickle``, ``_video``
and the format modules) import neither torch nor the registry.
"""
