"""``minsim+exfmem``: ExFMem on a model trained with the MinSim loss (Tian & Xu, CVPR 2021).

The authors' pipeline: a MinSim model, then the memory banks, then fine-tuning
through them with CE + MinSim. The defense is the combination
(:func:`mmrobust.defense.combine`) of the registered ``minsim`` and
``exfmem``: training uses MinSim's loss throughout; the banks are filled at
the start of the fine-tuning epochs (the last quarter) and frozen; the BPDA
surrogate is ExFMem's. Its parameters are both defenses' (``weight``,
``adversarial``; ``bank_size``, ``lam``, ``iterations``, ``blend``,
``finetune``).

Modalities: ``rgb`` and ``skeleton`` (MinSim's). Threat model: as ``exfmem``.

Example::

    mmrobust run --defense minsim+exfmem --dataset synthetic --defense-param iterations=100
"""

from mmrobust.defense import combine
from mmrobust.registry import register_defense

register_defense("minsim+exfmem", combine("minsim", "exfmem"), origin=__name__)
