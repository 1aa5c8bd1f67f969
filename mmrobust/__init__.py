"""mmrobust: adversarial robustness benchmark for multimodal action recognition."""

__version__ = "0.1.0"
