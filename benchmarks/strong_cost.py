"""Cost of strong-v1 against the reference attacks run one target at a time, and against standard-v1.

On one trained run and its test split, in one process:

(a) strong-v1 as ``mmrobust.protocol.evaluate`` runs it: APGD-CE, APGD-T and
    Square in cascade on the samples still robust, one shared clean forward,
    every sample leaving an attack at the step or query that fools it, all
    targeted modalities moved by one pass;
(b) the reference: pyautoattack 0.2.0's ``APGDAttack`` (CE, 100 iterations),
    ``APGDAttack_targeted`` (100 iterations, min(9, K − 1) target classes) and
    ``SquareAttack`` (5,000 queries, p_init 0.8, ``resc_schedule=False``), the
    three attacks and settings of AutoAttack "standard" without FAB-T, run
    target by target (R, S, RS) on a single-tensor view of the targeted
    modalities, each later attack on the samples the earlier ones left robust
    (as AutoAttack does), each attack with its own clean forward and no early
    exit inside a run; chunks of ``--batch-size`` samples;
(c) standard-v1 on the same model.

Every example is re-classified by the model; both sides' robust accuracy per
target is the share of test clips correct on clean data that no attack broke.
It prints the wall times, the ratio reference / strong-v1, the robust
accuracies, and strong-v1's cost relative to standard-v1 (time and passes).

The reference view: per channel, the targeted modalities' entries one after
the other, laid out as rows of the first modality's last axis (an RGB frame
row, a skeleton's joints × persons), so Square's windows and per-channel
signs keep their meaning. A few entries after them carry the sample's index
in base 4 at levels 1/8, 3/8, 5/8, 7/8 (ε < 1/8 cannot change a digit), so the
view's forward finds the sample's untargeted modalities even when an attack
calls it on a subset.

Usage::

    python benchmarks/strong_cost.py --run-dir runs/synthetic/none-tiny-s0 [--limit 270] [--threads 2]
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import pyautoattack.autopgd_base as apgd_reference  # `make setup` installs pyautoattack==0.2.0 --no-deps
import pyautoattack.square as square_reference

from mmrobust.model import logits_of
from mmrobust.protocol import STANDARD_V1, STRONG_V1, evaluate, target_sets
from mmrobust.run import load_trained

DIGITS = 5  # base-4 digits of the sample index: up to 1,024 samples


class View(torch.nn.Module):
    """The model as a function of one (N, C, H, W) tensor holding the targeted modalities and the sample index."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], targets: tuple[str, ...]):
        super().__init__()
        self.model, self.batch, self.targets = model, batch, targets
        self.channels = batch[targets[0]].shape[1]
        if any(batch[m].shape[1] != self.channels for m in targets):
            raise ValueError("the targeted modalities must have the same number of channels")
        self.sizes = [math.prod(batch[m].shape[2:]) for m in targets]
        self.width = batch[targets[0]].shape[-1] * (batch[targets[0]].shape[-2] if batch[targets[0]].shape[-1] == 1
                                                     else 1)
        self.height = math.ceil((sum(self.sizes) + DIGITS) / self.width)

    def encode(self, index: torch.Tensor) -> torch.Tensor:
        n = len(index)
        flat = torch.cat([self.batch[m][index].flatten(2) for m in self.targets], dim=2)
        digits = torch.stack([(index // 4 ** d) % 4 for d in range(DIGITS)], dim=1).float()
        code = ((digits + 0.5) / 4)[:, None, :].expand(n, self.channels, DIGITS)
        filler = torch.full((n, self.channels, self.height * self.width - flat.shape[2] - DIGITS), 0.5)
        return torch.cat([flat, code, filler], dim=2).reshape(n, self.channels, self.height, self.width)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        flat = view.flatten(2)
        total = sum(self.sizes)
        digits = (flat[:, 0, total:total + DIGITS] * 4).floor().clamp(0, 3).long()
        index = (digits * torch.tensor([4 ** d for d in range(DIGITS)])).sum(dim=1)
        inputs = {k: v[index] for k, v in self.batch.items() if k != "label"}
        for m, part in zip(self.targets, flat[:, :, :total].split(self.sizes, dim=2)):
            inputs[m] = part.reshape(len(view), *self.batch[m].shape[1:])
        return logits_of(self.model(inputs))


def reference_target(model, batch, targets, eps, classes, batch_size, queries, seed=0):
    """Robust (bool per sample) after the reference APGD-CE, APGD-T and Square on one target."""
    view = View(model, batch, targets)
    labels = batch["label"]
    index = torch.arange(len(labels))
    with torch.no_grad():
        robust = torch.cat([view(view.encode(index[i:i + batch_size])).argmax(1)
                            for i in range(0, len(index), batch_size)]) == labels
    attacks = [
        apgd_reference.APGDAttack(view, n_iter=100, eps=eps, seed=seed, loss="ce", device="cpu"),
        apgd_reference.APGDAttack_targeted(view, n_iter=100, eps=eps, seed=seed, device="cpu",
                                           n_target_classes=min(9, classes - 1)),
        square_reference.SquareAttack(view, n_queries=queries, eps=eps, p_init=0.8, seed=seed, device="cpu",
                                      resc_schedule=False),
    ]
    for attack in attacks:
        alive = index[robust]
        for i in range(0, len(alive), batch_size):
            part = alive[i:i + batch_size]
            adversarial = attack.perturb(view.encode(part), labels[part].clone())
            with torch.no_grad():
                robust[part] &= view(adversarial).argmax(1) == labels[part]
    return robust.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="Test clips used (evenly spread) [default: all].")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--queries", type=int, default=5000, help="Square's queries, both sides.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    exp = load_trained(args.run_dir)
    model = exp.model.eval().requires_grad_(False)
    data = exp.data.test
    if args.limit:
        data = data.take(np.linspace(0, len(data) - 1, min(args.limit, len(data))).round().astype(np.int64))
    strong = STRONG_V1
    if args.queries != 5000:
        import dataclasses

        strong = dataclasses.replace(STRONG_V1, attacks=STRONG_V1.attacks[:2] + (dataclasses.replace(
            STRONG_V1.attacks[2], params=(("queries", args.queries), ("p_init", 0.8), ("rescale", False))),))
    modalities = exp.config.modalities
    codes = exp.data.codes
    print(f"{exp.config.defense} on {exp.config.dataset}, {len(data)} test clips, cpu "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    started = time.perf_counter()
    standard = evaluate(model, data, STANDARD_V1, modalities=modalities, batch_size=args.batch_size, codes=codes,
                        padding=exp.data.padding)
    standard_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ours = evaluate(model, data, strong, modalities=modalities, batch_size=args.batch_size, codes=codes,
                    padding=exp.data.padding)
    ours_seconds = time.perf_counter() - started

    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in data.batch(np.arange(len(data)), modalities).items()}
    started = time.perf_counter()
    reference = {code: reference_target(model, batch, members, strong.eps, exp.data.num_classes, args.batch_size,
                                        args.queries)
                 for code, members in target_sets(modalities, codes).items()}
    reference_seconds = time.perf_counter() - started

    last = strong.attacks[-1].key
    print(f"{'target':<8}{'clean':>8}{'strong-v1':>11}{'reference':>11}{'standard-v1 worst':>19}")
    for code in reference:
        print(f"{code:<8}{100 * ours.clean.mean():>8.2f}{100 * ours.robust[last][code].mean():>11.2f}"
              f"{100 * reference[code].mean():>11.2f}"
              f"{100 * np.logical_and.reduce([v[code] for v in standard.robust.values()]).mean():>19.2f}")
    print(f"wall time: strong-v1 {ours_seconds:.1f} s, reference {reference_seconds:.1f} s, "
          f"reference / strong-v1 = {reference_seconds / ours_seconds:.2f}x")
    print(f"strong-v1 / standard-v1: {ours_seconds / standard_seconds:.1f}x the time ({standard_seconds:.1f} s), "
          f"{ours.cost['gradient_passes'] / max(standard.cost['gradient_passes'], 1):.1f}x the gradient passes "
          f"({ours.cost['gradient_passes']:,} vs {standard.cost['gradient_passes']:,}), "
          f"{ours.cost['forward_passes'] / max(standard.cost['forward_passes'], 1):.1f}x the forward passes "
          f"({ours.cost['forward_passes']:,} vs {standard.cost['forward_passes']:,})")


if __name__ == "__main__":
    main()
