"""Backbones: one file per family, registered with ``@register_backbone``.

A backbone is an :class:`mmrobust.backbones.base.Backbone`: input
normalisation, an ordered list of named stages, and a pooling step that turns
the last stage's map into an embedding. Each family also builds a small
``example()`` instance, with which ``tests/test_contract_backbones.py`` checks
every registered backbone.
"""
