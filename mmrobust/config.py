"""Run configuration: one frozen, typed dataclass, from CLI flags or a flat TOML file.

Example ``run.toml``::

    dataset = "synthetic"
    defense = "none"
    epochs = 10
    lr = 0.01
    defense_params = { }

Unknown keys and values of the wrong type are rejected with the key named.
The resolved configuration (every default filled in) is saved with each run.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrobust.params import build_params, check_number

#: Training recipes: from a random initialisation, or from the reference defense's trained weights.
RECIPES = ("scratch", "warm-start")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers.

    Attributes:
        dataset: registered dataset name.
        split: dataset protocol (``xsub``/``xview`` for NTU); None = its default.
        root: folder of the raw release (real datasets).
        data_dir: cache folder for generated or prepared data; None = user cache.
        data_seed: seed of the synthetic generator.
        modalities: subset of the dataset's modalities to use; empty = all.
        defense: registered defense name.
        defense_params: keyword arguments of the defense's ``Params``.
        preset: model/input-size preset (``tiny`` or ``paper``).
        epochs: training epochs; None = the dataset's recipe.
        batch_size, lr, momentum, weight_decay: SGD with cosine annealing.
        seed: seed of initialisation, shuffling and dropout.
        device: ``auto``, ``cpu`` or ``cuda`` (or ``cuda:N``).
        protocol: evaluation protocol; ``eps`` and ``attacks`` change its
            settings (and so its name: such results are never ranked with it).
        eval_batch_size: samples attacked together.
        test_subset: evaluate this many test clips per class instead of the
            whole test split (0): a fixed, class-stratified choice that depends
            on the data alone (:func:`mmrobust.run.stratified_subset`), for
            protocols too costly for every clip. The record names the clips,
            and its intervals widen with the smaller sample.
        holdout: share of the training subjects (of the training samples,
            where the dataset names no subjects) kept out of training and
            scored after every epoch: clean accuracy and robust accuracy
            under PGD (:attr:`holdout_steps` steps, the protocol's ε) on each
            attack target. 0 trains on every training sample and logs no
            held-out curves.
        holdout_steps: PGD steps of the held-out robust accuracy.
        recipe: ``scratch`` (random initialisation) or ``warm-start``: start
            from the trained weights of the reference defense's (``none``)
            run of the same data, preset, modalities, seed and holdout beside
            the run directory, then train as usual (modules the defense adds
            keep their initialisation).
        amp: train under bf16 autocast (faster on GPUs with bf16 units; a
            different model, so part of the run's identity). Evaluation is
            always fp32.
        grad_checkpoint: recompute the activations of I3D's Inception blocks
            in the backward pass instead of keeping them (activation
            checkpointing): less memory, about one more forward pass of time,
            the same numbers.
        sync_bn: under several processes, BatchNorm statistics over the global
            batch (``torch.nn.SyncBatchNorm``, CUDA only) instead of each
            rank's share, as the paper's single-GPU recipe has them.
    """

    dataset: str = "synthetic"
    split: str | None = None
    root: str | None = None
    data_dir: str | None = None
    data_seed: int = 0
    modalities: tuple[str, ...] = ()
    defense: str = "none"
    defense_params: dict[str, Any] = field(default_factory=dict)
    preset: str = "tiny"
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    protocol: str = "standard-v1"
    eps: float | None = None
    attacks: tuple[str, ...] = ()
    eval_batch_size: int = 64
    test_subset: int = 0
    holdout: float = 0.0
    holdout_steps: int = 10
    recipe: str = "scratch"
    amp: bool = False
    grad_checkpoint: bool = False
    sync_bn: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            check_number(name, getattr(self, name), 1, integer=True)
        if self.epochs is not None:
            check_number("epochs", self.epochs, 1, integer=True)
        check_number("lr", self.lr, 0.0, low_open=True)
        check_number("test_subset", self.test_subset, 0, integer=True)
        check_number("holdout", self.holdout, 0.0, 0.5)
        check_number("holdout_steps", self.holdout_steps, 1, integer=True)
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.eps is not None:  # checked here, not after a training epoch
            check_number("eps", self.eps, 0.0, 1.0, low_open=True)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["modalities"] = list(self.modalities)
        out["attacks"] = list(self.attacks)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from plain values, rejecting unknown keys and wrong types (:func:`mmrobust.params.build_params`)."""
        return build_params(cls, values, owner=source, noun="key")

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
        nested = [k for k, v in values.items() if isinstance(v, dict) and k != "defense_params"]
        if nested:
            raise ValueError(f"{path}: tables are not allowed (flat keys only), found [{nested[0]}]")
        for key in ("root", "data_dir"):  # stored absolute, so the saved config works from any folder
            if isinstance(values.get(key), str):
                values[key] = str(Path(values[key]).expanduser().absolute())
        return cls.from_dict(values, source=str(path))

