"""``exfmem``: external feature memory banks (Tian & Xu, CVPR 2021), as released.

Tian & Xu, "Can audio-visual integration strengthen robustness under multimodal
attacks?", CVPR 2021 (YapengTian/AV-Robustness-CVPR21, ``main_defense.py``).
Per modality, a frozen bank D ∈ R^{d×n} holds the embeddings of n = 1024
training samples of the trained model. At inference each embedding x (the
fusion head's input) is denoised by a soft projection onto the bank's span::

    h* = argmin_h ½‖D h − x‖² + λ‖h‖₁                       (LASSO, λ = 0.1)
    x̃  = a · D h* + (1 − a) · x                              (a = 0.5)

h* is found by ISTA from h₀ = 0 with step α = 1 / λmax(DᵀD),
``h ← S_αλ(h − α Dᵀ(D h − x))``, S the soft threshold. Unlike the release,
which stops on a change of H measured over the whole batch (so a sample's
output depends on its batch-mates) after up to 2,000 iterations with per-dataset
steps, this runs a fixed number of iterations with the step fixed by the bank:
every sample is filtered on its own, deterministically. ISTA is unrolled in
autograd, so the defended model is differentiable end to end; the defense also
ships a BPDA surrogate (Athalye, Carlini & Wagner, ICML 2018) that computes
the same forward but passes gradients through the ISTA block as the identity,
and the protocol attacks both.

Iterations: 50 by default, a cost compromise. The banks are highly coherent
(non-negative embeddings sharing a large mean), so λmax(DᵀD) dwarfs the rest of
the spectrum and ISTA with step 1/λmax converges slowly: on the tiny model
(d = 128, 900 bank columns, after 3 epochs of ``none`` on ``synthetic``) the
filtered embeddings after 10 / 50 / 100 / 500 iterations differ from those after
2,000 by at most 28 / 18 / 15 / 6 % (RGB) and 24 / 16 / 11 / 3 % (skeleton) of
their norm, over 64 test clips. The iteration count is part of the defense's
definition (the function evaluated is ISTA-K, not the exact LASSO). One
iteration costs about 1.4 ms per modality for 64 samples on one CPU core,
forward and backward, so 50 iterations add under half of the tiny network's
own forward-backward (0.30 s) to every attack step; raise ``iterations`` at
paper scale, where the network dominates.

Training: as released, the network is fine-tuned through the filled memory.
The release fills the banks from a trained model, freezes them ("--dic fix")
and fine-tunes the whole network through the ISTA block with the defense's
loss at a low learning rate (1e-4 for the frame net, 1e-3 for the sound net
and classifier). Here every defense gets the same epochs, so the fine-tuning
is the last quarter of the schedule (``finetune``; 2 of the 8 synthetic
epochs), where the cosine learning rate has fallen below 15 % of its peak:
the banks are filled at the start of epoch ⌊(1 − finetune)·E⌋ + 1 from the
model as it is then, stay frozen, and the remaining epochs train through the
filter. ``exfmem`` trains with cross-entropy, ``minsim+exfmem`` with the
MinSim loss (the authors' pipeline: a MinSim model, then the memory, then
fine-tuning with CE + MinSim). With ``finetune = 0``, or a schedule too short
to give it a whole epoch, the banks are filled after training and nothing is
fine-tuned.

Bank contents: the embeddings, before any filter, of the model in eval mode on
the first ``bank_size`` training samples of a fixed permutation (seed 0) of the
training split, or of all of them if there are fewer (unused columns stay zero,
which is the same as a smaller bank). Not per class, no labels.

Modalities: ``exfmem`` filters every modality the model has; ``minsim+exfmem``
needs ``rgb`` and ``skeleton``. Threat model: an attacker who knows the model
and the banks (white-box) and is checked against gradient masking with BPDA.

Example::

    mmrobust run --defense exfmem --dataset synthetic
    mmrobust run --defense minsim+exfmem --dataset synthetic --defense-param iterations=100
    mmrobust run --defense exfmem --dataset synthetic --defense-param finetune=0   # banks after training only
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmrobust.defense import Defense, TrainContext
from mmrobust.model import bpda_twin
from mmrobust.params import check_number
from mmrobust.registry import register_defense

BANK_SEED = 0  # the fixed order in which training samples enter the banks


@dataclass(frozen=True)
class Params:
    """Memory bank size and the sparse-coding solver.

    Attributes:
        bank_size: n, training embeddings stored per modality (1024 as released).
        lam: λ, the L1 weight of the LASSO (0.1 as released).
        iterations: ISTA iterations, fixed so no sample depends on another.
        blend: a, the weight of the sparse reconstruction (0.5 as released).
        finetune: the share of the training epochs, at the end, trained
            through the filled, frozen banks.
    """

    bank_size: int = 1024
    lam: float = 0.1
    iterations: int = 50
    blend: float = 0.5
    finetune: float = 0.25

    def __post_init__(self) -> None:
        check_number("bank_size", self.bank_size, 1, integer=True)
        check_number("lam", self.lam, 0.0)
        check_number("iterations", self.iterations, 1, integer=True)
        check_number("blend", self.blend, 0.0, 1.0)
        check_number("finetune", self.finetune, 0.0, 1.0)


def soft_threshold(z: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    return z.sign() * (z.abs() - threshold).clamp(min=0)


class MemoryFilter(nn.Module):
    """Replace each embedding by a blend of itself and its sparse code's reconstruction from a bank.

    The bank, the ISTA step and the ``filled`` flag are buffers of fixed shape,
    so a saved state loads into a freshly built filter. An unfilled filter is
    the identity.

    Args:
        dim: d, the embedding width.
        bank_size: n, the number of bank columns.
        lam, iterations, blend: see :class:`Params`.
    """

    def __init__(self, dim: int, bank_size: int, lam: float, iterations: int, blend: float) -> None:
        super().__init__()
        self.lam, self.iterations, self.blend = lam, iterations, blend
        self.register_buffer("bank", torch.zeros(dim, bank_size))
        self.register_buffer("step", torch.zeros(()))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fill(self, columns: torch.Tensor) -> None:
        """Store ``columns`` (d, k ≤ n) as the bank, zero the rest, fix the step 1/λmax(DᵀD)."""
        dim, size = self.bank.shape
        if columns.dim() != 2 or columns.shape[0] != dim or not 0 < columns.shape[1] <= size:
            raise ValueError(f"a bank of this filter takes (d={dim}, k ≤ {size}) columns, "
                             f"got {tuple(columns.shape)}")
        self.bank.zero_()
        self.bank[:, :columns.shape[1]] = columns
        # λmax(DᵀD) = λmax(DDᵀ) = σmax(D)²; the d×d Gram is the cheaper one when d < n.
        bank = self.bank.double()
        gram = bank @ bank.T if dim <= size else bank.T @ bank
        largest = torch.linalg.eigvalsh(gram)[-1].item()
        if not largest > 0:
            raise ValueError("cannot fill a memory bank with all-zero embeddings")
        self.step.fill_(1.0 / largest)
        self.filled.fill_(True)

    def empty(self) -> None:
        """Back to the identity."""
        self.bank.zero_()
        self.step.zero_()
        self.filled.fill_(False)

    def sparse_code(self, x: torch.Tensor) -> torch.Tensor:
        """ISTA for min_h ½‖D h − x‖² + λ‖h‖₁, one row of ``x`` (B, d) per sample; returns (B, n)."""
        bank, step = self.bank, self.step
        threshold = step * self.lam
        code = x.new_zeros(x.shape[0], bank.shape[1])
        for _ in range(self.iterations):
            residual = code @ bank.T - x
            code = soft_threshold(code - step * (residual @ bank), threshold)
        return code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.filled):
            return x
        reconstruction = self.sparse_code(x) @ self.bank.T
        return self.blend * reconstruction + (1.0 - self.blend) * x


@register_defense("exfmem")
class ExFMem(Defense):
    """Memory-bank denoising of the embeddings; cross-entropy training (``minsim+exfmem`` adds MinSim's loss)."""

    Params = Params

    def build(self, model: nn.Module) -> nn.Module:
        p = self.params
        for modality, branch in model.branches.items():
            model.filters[modality] = MemoryFilter(branch.embedding_dim, p.bank_size, p.lam, p.iterations,
                                                   p.blend)
        return model

    def finetune_from(self, epochs: int) -> int | None:
        """The epoch (0-based) at whose start the banks are filled, or None when nothing is fine-tuned."""
        fine = math.floor(self.params.finetune * epochs)
        return epochs - fine if 0 < fine < epochs else None

    def before_epoch(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        """At the first fine-tuning epoch, fill the banks from the model as it is."""
        if ctx.epoch == self.finetune_from(ctx.epochs):
            self.fill(model, train, ctx)

    def after_training(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        """Fill the banks unless fine-tuning did (they then stay as they were filled, frozen)."""
        if not all(bool(f.filled) for f in model.filters.values() if isinstance(f, MemoryFilter)):
            self.fill(model, train, ctx)

    def fill(self, model: nn.Module, train: Any, ctx: TrainContext) -> None:
        """Fill every bank with the embeddings of the first ``bank_size`` training samples."""
        filters = {m: f for m, f in model.filters.items() if isinstance(f, MemoryFilter)}
        for memory in filters.values():
            memory.empty()  # so the forward below gives the embeddings before any filter
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(BANK_SEED))
        chosen = order[:self.params.bank_size].numpy()
        columns: dict[str, list[torch.Tensor]] = {m: [] for m in filters}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(chosen), 64):
                    batch = train.batch(chosen[start:start + 64], modalities=model.modalities)
                    embeddings = model({k: v.to(ctx.device) for k, v in batch.items()}).embeddings
                    for m in filters:
                        columns[m].append(embeddings[m])
        finally:
            model.train(was_training)
        for m, memory in filters.items():
            memory.fill(torch.cat(columns[m]).T)

    def surrogate(self, model: nn.Module) -> nn.Module:
        """A twin whose memory filters pass gradients straight through (BPDA); ``model`` is left as it is."""
        return bpda_twin(model, lambda module: isinstance(module, MemoryFilter))
