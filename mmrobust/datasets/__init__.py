"""Datasets: one module per dataset, registered with ``@register_dataset``.

A dataset entry is a function ``load(request: DataRequest) -> DatasetBundle``
(see :mod:`mmrobust.datasets.base`).
"""
