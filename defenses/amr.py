"""``amr``: the Attention-based Modality Reweighter, on top of ``at-rs``.

The AMR paper (reference/amr-paper.md §3.3). An AMR sits between backbone
stages and owns one learned weight tensor per modality with the full per-sample
shape of that stage's feature map, broadcast over the batch; the reweighted
maps continue forward, and an auxiliary head classifies them::

    X̃_m = X_m ⊙ W_m                                  (Eq. 8, m ∈ {R, S})
    Z_m = global pool of X̃_m                          (Eq. 9–10)
    ŷ   = FC([Z_R, Z_S])

W_R has the shape (C, T, H, W) of the I3D map and W_S the shape (C, T, W) of
HCN's map (persons folded into the batch, joints already turned into
channels); the pooling is each backbone's own ``pool_map`` (HCN's takes the
maximum over persons). Weights start at 1, the identity (``init``): the paper
does not say, and the identity leaves the trained backbone's function intact
at the start.

S AMRs (``amrs``) go after the last S blocks of both branches, the i-th last
block of one paired with the i-th last of the other; a block is a stage with
learnable parameters, so pooling stages are skipped. Tiny I3D: Mixed_5c,
Mixed_4f, Mixed_3c; full I3D: Mixed_5c, Mixed_5b, Mixed_4f; HCN: conv6, conv5,
conv4. The paper uses S = 1 on iMiGUE and S = 3 on NTU RGB+D; the default is 1,
and the NTU recipe is ``--defense-param amrs=3``.

Training (Eq. 11–12), x' from PGD-10 on both modalities (ε = 8/255, α = 2/255,
random start; generated in eval mode as for ``at-rs``)::

    L = CE(f(x), y) + λ · [ CE(f(x'), y) + (1/S) Σ_i CE(ŷ_i(x'), y) ],  λ = 1

Clean samples pass through the same weights; only the adversarial auxiliary
outputs enter the loss.

Building needs the per-sample input shape of every branch (``input_shapes`` of
the model) to size the weight tensors by a dry run.

Modalities: ``rgb`` and ``skeleton``. Threat model: the L∞ attacker of the
protocol (white-box, ε = 8/255 per modality); the AMRs are part of the model
and are attacked with it.

Example::

    mmrobust run --defense amr --dataset synthetic
    mmrobust run --defense amr --dataset ntu60 --preset paper --defense-param amrs=3
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch import nn

from mmrobust.defense import Defense, TrainContext, TrainingAdversary
from mmrobust.model import Batch, Mixer, MultimodalNet, stage_shapes
from mmrobust.params import check_number
from mmrobust.registry import register_command, register_defense

MAX_AMRS = 3


@dataclass(frozen=True)
class Params:
    """Number of AMRs, their initial weight and the loss weight λ.

    Attributes:
        amrs: S, AMRs after the last S blocks of both branches (1 to 3).
        init: initial value of every attention weight (1 = identity).
        lam: λ of Eq. 12, the weight of the adversarial terms.
    """

    amrs: int = 1
    init: float = 1.0
    lam: float = 1.0

    def __post_init__(self) -> None:
        check_number("amrs", self.amrs, 1, MAX_AMRS, integer=True)
        check_number("init", self.init, 0.0, low_open=True)
        check_number("lam", self.lam, 0.0)


class AMRMixer(Mixer):
    """One Attention-based Modality Reweighter.

    Args:
        attach: stage after which it runs, per modality.
        shapes: per-sample feature-map shape at that stage, per modality.
        pools: global pooling (B·, C, …) → (B, C) per modality (the backbone's ``pool_map``).
        num_classes: K of the auxiliary head.
        init: initial weight value.
    """

    def __init__(self, attach: Mapping[str, str], shapes: Mapping[str, Sequence[int]],
                 pools: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], num_classes: int,
                 init: float = 1.0) -> None:
        super().__init__()
        self.attach = dict(attach)
        self.weights = nn.ParameterDict({m: nn.Parameter(torch.full(tuple(shapes[m]), float(init)))
                                         for m in self.attach})
        self._pools = dict(pools)  # bound methods of the backbones: not submodules, no state of their own
        self.classifier = nn.Linear(sum(shapes[m][0] for m in self.attach), num_classes)

    def modality_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.weights.items())

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        reweighted = {m: x * self.weights[m] for m, x in features.items()}  # broadcast over the batch
        pooled = torch.cat([self._pools[m](reweighted[m]) for m in self.attach], dim=1)
        return reweighted, self.classifier(pooled)


def amr_loss(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor,
             adversarial_aux: Sequence[torch.Tensor], labels: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 12: CE(f(x), y) + λ · [CE(f(x'), y) + (1/S) Σ_i CE(aux_i(x'), y)]."""
    amr = F.cross_entropy(adversarial_logits, labels)  # Eq. 11
    if adversarial_aux:
        amr = amr + torch.stack([F.cross_entropy(a, labels) for a in adversarial_aux]).mean()
    return F.cross_entropy(clean_logits, labels) + lam * amr


def last_blocks(backbone: nn.Module, count: int) -> list[str]:
    """Names of the last ``count`` stages with learnable parameters, deepest first."""
    blocks = [name for name, stage in backbone.stages.items() if any(True for _ in stage.parameters())]
    if count > len(blocks):
        raise ValueError(f"amrs={count} asks for more blocks than the backbone has ({len(blocks)})")
    return blocks[::-1][:count]


def feature_shapes(model: MultimodalNet) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per-sample output shape of every stage, per modality, from a dry run in eval mode."""
    inputs = getattr(model, "input_shapes", None) or {}
    missing = [m for m in model.modalities if m not in inputs]
    if missing:
        raise ValueError(f"amr sizes its weights from the per-sample input shapes of the model, which does not "
                         f"record one for {missing[0]!r}; build it with mmrobust.presets.build_model")
    device = next(model.parameters()).device
    zeros = {m: torch.zeros(1, *inputs[m], device=device) for m in model.modalities}
    was_training = model.training
    model.eval()  # no BatchNorm statistics updated by the dry run
    try:
        rows = stage_shapes(model, zeros)
    finally:
        model.train(was_training)
    return {m: dict(stages) for m, stages in rows.items()}


def amr_mixers(model: nn.Module) -> list[AMRMixer]:
    """The model's AMRs, in forward order."""
    return [mixer for mixer in getattr(model, "mixers", ()) if isinstance(mixer, AMRMixer)]


def weight_summary(model: nn.Module) -> list[dict[str, Any]]:
    """One flat row per AMR in forward order (paper Table 3).

    Keys: ``amr`` (1-based), then per modality ``<m> stage`` (attachment
    stage), ``<m> mean`` and ``<m> std`` (of all its attention weights).
    """
    rows = []
    for index, mixer in enumerate(amr_mixers(model), start=1):
        row: dict[str, Any] = {"amr": index}
        for modality, stage in mixer.attach.items():
            weight = mixer.weights[modality].detach().float().cpu()
            row[f"{modality} stage"] = stage
            row[f"{modality} mean"] = weight.mean().item()
            row[f"{modality} std"] = weight.std().item() if weight.numel() > 1 else 0.0
        rows.append(row)
    return rows


def plot_weights(model: nn.Module, path: str | Path) -> Path:
    """Per-channel mean weight of each modality in each AMR (paper Fig. 4), one panel each; saved to ``path``.

    The file format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixers = amr_mixers(model)
    if not mixers:
        raise ValueError("the model has no AMR to plot")
    modalities = list(mixers[0].attach)
    fig, axes = plt.subplots(len(mixers), len(modalities), squeeze=False,
                             figsize=(4.5 * len(modalities), 2.6 * len(mixers)))
    for row, mixer in enumerate(mixers):
        for col, modality in enumerate(modalities):
            weight = mixer.weights[modality].detach().float().cpu()
            per_channel = weight.flatten(1).mean(dim=1).numpy()
            ax = axes[row][col]
            ax.plot(range(len(per_channel)), per_channel, linewidth=1.0)
            ax.axhline(float(weight.mean()), color="grey", linestyle="--", linewidth=0.8)
            ax.set_title(f"AMR {row + 1}: {modality} after {mixer.attach[modality]}", fontsize=9)
            ax.set_xlabel("channel")
            ax.set_ylabel("mean weight")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@register_defense("amr")
class AttentionModalityReweighter(Defense):
    """``at-rs`` with S AMR mixers and the loss of Eq. 11–12."""

    Params = Params
    requires = ("rgb", "skeleton")

    def __init__(self, params: Params | None = None, name: str = "") -> None:
        super().__init__(params, name)
        self.adversary = TrainingAdversary()

    def build(self, model: nn.Module) -> nn.Module:
        shapes = feature_shapes(model)
        blocks = {m: last_blocks(branch, self.params.amrs) for m, branch in model.branches.items()}
        for depth in range(self.params.amrs):
            attach = {m: blocks[m][depth] for m in model.modalities}
            model.add_mixer(AMRMixer(attach, {m: shapes[m][s] for m, s in attach.items()},
                                     {m: model.branches[m].pool_map for m in attach}, model.num_classes,
                                     self.params.init))
        return model

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        attacked = self.adversary(model, batch, model.modalities, ctx.generator)
        clean = model(batch)
        adversarial = model(attacked)
        return amr_loss(clean.logits, adversarial.logits, adversarial.aux_logits, batch["label"], self.params.lam)

    def adaptive(self, model: nn.Module) -> dict[str, nn.Module]:
        """Each AMR's auxiliary head as a view (``aux1`` … ``auxS``): the attacker sees the reweighting and
        may follow an auxiliary classifier's loss instead of the fused logits; the example still has to
        fool the fused logits."""
        return {f"aux{i + 1}": AuxiliaryHead(model, i) for i in range(len(amr_mixers(model)))}


class AuxiliaryHead(nn.Module):
    """``model`` seen through the logits of its ``index``-th auxiliary head."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch).aux_logits[self.index]


@register_command("amr-weights", origin=f"{__name__}.weights_command")
@click.command(name="amr-weights")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A finished run of a defense with AMRs (amr).")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Plot of the per-channel mean weights (.png, .pdf or .svg).")
def weights_command(run_dir: str, out: str | None) -> None:
    """Mean AMR weight per modality for each AMR (paper Table 3), and a per-channel plot (Fig. 4).

    Added to ``mmrobust`` by this defense (``register_command``).

    \b
    Example:
      mmrobust amr-weights --run-dir runs/synthetic/amr-tiny-s0 --out amr.png
    """
    from tabulate import tabulate

    from mmrobust.run import load_trained

    exp = load_trained(Path(run_dir))
    rows = weight_summary(exp.model)
    if not rows:
        raise click.ClickException(f"{run_dir} has no AMR: it was trained with defense {exp.config.defense!r}")
    click.echo(tabulate(rows, headers="keys", floatfmt=".4f"))
    if out:
        plot_weights(exp.model, out)
        click.echo(f"wrote {out}")
