"""Speed of the standard-v1 evaluation against a naive torchattacks loop.

On one trained run and its test split, in one process:

(a) the engine: ``mmrobust.protocol.evaluate`` — one shared clean forward,
    clean-misclassified samples skipped, early stop per sample, all targeted
    modalities updated by one forward/backward per step;
(b) the naive loop: torchattacks FGSM, PGD and a CW∞ equivalent (torchattacks'
    PGD with the margin loss), one attack per target set, every sample attacked
    for every step, a clean forward per cell.

It prints both wall times and their ratio, both sets of robust accuracies, and
the engine's overhead: wall time divided by the cost of the passes it actually
performed, each priced at the model's measured raw forward+backward (or
forward) time per sample.

Usage::

    python benchmarks/attack_speed.py --run-dir runs/synthetic/none-tiny-s0 [--limit 270]
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks

from mmrobust.model import logits_of
from mmrobust.protocol import STANDARD_V1, evaluate, target_sets
from mmrobust.run import load_trained


class View(torch.nn.Module):
    """The model as a function of the targeted modalities only, flattened into one tensor."""

    def __init__(self, model, batch, targets):
        super().__init__()
        self.model, self.batch, self.targets = model, batch, targets
        self.shapes = [batch[m].shape[1:] for m in targets]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def flat(self, batch):
        return torch.cat([batch[m].flatten(1) for m in self.targets], dim=1)

    def forward(self, x):
        parts = torch.split(x, self.sizes, dim=1)
        inputs = {m: p.reshape(-1, *s) for m, p, s in zip(self.targets, parts, self.shapes)}
        return logits_of(self.model({**self.batch, **inputs}))


class MarginPGD(torchattacks.PGD):
    """torchattacks.PGD maximising the CW margin max_{j≠y} z_j − z_y instead of CE."""

    def forward(self, images, labels):
        images, labels = images.clone().detach(), labels.clone().detach()
        adv = images + torch.empty_like(images).uniform_(-self.eps, self.eps) if self.random_start else images
        adv = torch.clamp(adv, 0, 1).detach()
        for _ in range(self.steps):
            adv.requires_grad = True
            logits = self.get_logits(adv)
            true = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
            grad, = torch.autograd.grad((others - true).sum(), adv)
            adv = adv.detach() + self.alpha * grad.sign()
            adv = torch.clamp(images + torch.clamp(adv - images, -self.eps, self.eps), 0, 1).detach()
        return adv


def naive(model, data, modalities, batch_size, eps):
    """Per-sample robust outcomes from torchattacks, one attack per target, no shortcuts."""
    attacks = {
        "fgsm": lambda view: torchattacks.FGSM(view, eps=eps),
        "pgd20": lambda view: torchattacks.PGD(view, eps=eps, alpha=eps / 4, steps=20, random_start=True),
        "cw30": lambda view: MarginPGD(view, eps=eps, alpha=eps / 4, steps=30, random_start=True),
    }
    outcomes = {}
    for key, make in attacks.items():
        for code, targets in target_sets(modalities).items():
            robust = np.zeros(len(data), dtype=bool)
            for start in range(0, len(data), batch_size):
                index = np.arange(start, min(start + batch_size, len(data)))
                batch = data.batch(index, modalities)
                view = View(model, batch, targets)
                with torch.no_grad():
                    clean_ok = logits_of(model(batch)).argmax(1) == batch["label"]
                adv = make(view)(view.flat(batch), batch["label"])
                with torch.no_grad():
                    adv_ok = view(adv).argmax(1) == batch["label"]
                robust[index] = (clean_ok & adv_ok).numpy()
            outcomes.setdefault(key, {})[code] = robust
    return outcomes


def raw_pass_times(model, data, modalities, batch_size, repeats=5):
    """Seconds per sample of one forward+input-backward and of one forward, at ``batch_size``."""
    batch = data.batch(np.arange(min(batch_size, len(data))), modalities)
    n = len(batch["label"])

    def forward_backward():
        leaves = {m: batch[m].clone().requires_grad_(True) for m in modalities}
        loss = F.cross_entropy(logits_of(model({**batch, **leaves})), batch["label"], reduction="sum")
        torch.autograd.grad(loss, list(leaves.values()))

    def forward():
        with torch.no_grad():
            model(batch)

    times = {}
    for name, step in (("forward_backward", forward_backward), ("forward", forward)):
        step()
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        times[name] = (time.perf_counter() - started) / repeats / n
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="only the first N test clips")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    exp = load_trained(args.run_dir, device="cpu")
    config = exp.config
    model = exp.model.eval().requires_grad_(False)
    data = exp.data.test if args.limit is None else exp.data.test.take(np.arange(args.limit))
    modalities = config.modalities
    print(f"model: {args.run_dir} ({config.defense}, {config.preset}); {len(data)} test clips; "
          f"batch {args.batch_size}; {torch.get_num_threads()} threads")

    started = time.perf_counter()
    engine = evaluate(model, data, STANDARD_V1, modalities=modalities, batch_size=args.batch_size)
    engine_seconds = time.perf_counter() - started

    torch.manual_seed(0)
    started = time.perf_counter()
    reference = naive(model, data, modalities, args.batch_size, STANDARD_V1.eps)
    naive_seconds = time.perf_counter() - started

    times = raw_pass_times(model, data, modalities, args.batch_size)
    floor = engine.cost["gradient_passes"] * times["forward_backward"] + engine.cost["forward_passes"] * times["forward"]
    print(f"\nraw cost per sample: forward+backward {times['forward_backward'] * 1e3:.3f} ms, "
          f"forward {times['forward'] * 1e3:.3f} ms")
    print(f"engine: {engine_seconds:.1f} s for {engine.cost['gradient_passes']} forward+backward and "
          f"{engine.cost['forward_passes']} forward sample-passes (includes the sanity checks)")
    print(f"naive loop: {naive_seconds:.1f} s")
    print(f"speed-up (naive / engine): {naive_seconds / engine_seconds:.2f}x")
    print(f"overhead (engine wall / priced passes): {engine_seconds / floor:.2f}")
    print("\nrobust accuracy (%)   engine   naive")
    for key in reference:
        for code in reference[key]:
            ours, theirs = 100 * engine.robust[key][code].mean(), 100 * reference[key][code].mean()
            print(f"  {key:>6} {code:<3}        {ours:6.2f}  {theirs:6.2f}")
    print(f"  clean              {100 * engine.clean.mean():6.2f}")


if __name__ == "__main__":
    main()
