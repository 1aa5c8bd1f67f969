"""``none``: the undefended model.

Cross-entropy on clean data (paper Eq. 1); every modality, no threat model.
The reference point of the relative improvement RI (Tian & Xu, CVPR 2021,
Eq. 14 of the AMR paper).

Example::

    mmrobust run --defense none --dataset synthetic
"""

from __future__ import annotations

from mmrobust.defense import Defense, NoParams
from mmrobust.registry import register_defense


@register_defense("none")
class NoDefense(Defense):
    """Standard training; inference unchanged."""

    Params = NoParams
    reference = True  # RI is measured against this defense
