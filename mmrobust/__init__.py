"""mmrobust: adversarial robustness benchmark for multimodal action recognition.

``mmrobust.evaluate(model, data)`` runs the standard-v1 protocol on any model
that takes the batch dict; see :func:`mmrobust.api.evaluate`.
"""

__version__ = "0.2.0"

from mmrobust import runtime as _runtime

_runtime.pin()  # before torch runs its first kernel; see mmrobust/runtime.py


def __getattr__(name: str):
    if name == "evaluate":  # imported on use: ``import mmrobust`` stays light
        from mmrobust.api import evaluate

        return evaluate
    raise AttributeError(f"module 'mmrobust' has no attribute {name!r}")
