"""Cost of training and evaluating the ``paper`` preset, in device-hours, from passes timed on this device.

For each paper dataset it builds the ``paper`` model (full-width I3D on
32×224×224 RGB clips, HCN on 32-frame skeletons, with the dataset's skeleton
shape and number of classes) and times, per clip at ``--batch-size``:

* ``forward``: a forward pass in eval mode without gradients;
* ``attack R``, ``attack S``, ``attack RS``: forward and backward to the inputs
  of the targeted modalities, in eval mode with the parameters frozen, as
  ``mmrobust.protocol.evaluate`` attacks (one step of an evaluation attack or
  of the training adversary, which takes the same passes with the
  parameters left trainable). With only the skeleton targeted the backward
  never enters I3D, so ``attack S`` costs little more than ``forward``;
* ``train``: forward, backward to the parameters and an SGD step in train
  mode (a training step without adversary; the step is per batch).

Each is run once to warm up, then ``--repeats`` times; the median counts (on
CUDA, synchronised around each repeat). On CUDA the numerics are pinned as
every run pins them (``mmrobust.runtime.pin_cuda``).

Each paper run is then priced as clips × Σ (passes per clip × seconds per
pass). The pass counts are read from the code:

* training, per clip and epoch: ``AdversaryParams().steps`` attack passes on
  the adversary's targets (every clip, every step, no check; at-r, at-s,
  at-rs, amr), then the loss: one training pass, two for amr (its Eq. 12
  loss runs a clean and an adversarial forward under one backward); plus the
  per-epoch monitor forward of ``MONITOR_SIZE`` training clips;
* evaluation, per test clip: the shared clean forward, and on each target
  (R, S, RS) for every cell of the protocol the attack's passes and a forward
  that re-classifies its example. An attacked clip costs at most, per cell:
  sign-gradient attacks (FGSM, PGD, CW∞) restarts × (steps + 1) — the last
  pass checks the final iterate, alone or inside a forward+backward of clips
  still stepping, so it is priced as one; APGD runs × (steps + 1), the first
  pass being the gradient at the start (APGD-T: one run per target class,
  min(restarts, K − 1)); Square queries + 1 forwards. A cell attacking a
  defense's view or a transfer source (strong-v1) adds that module's clean
  forward. The evaluation rows are upper bounds: they assume every test clip
  is classified correctly and survives every attack; the real cost is lower,
  since a clean error is never attacked and a clip leaves an attack at the
  step or query that fools it.

Left out: data loading; the sanity checks ``evaluate`` runs on its first
batch (a few hundred passes per evaluation); the AMR mixers' own work
(elementwise products on feature maps and a linear head each; amr is priced
with the undefended network's passes); the BPDA twin of exfmem and
minsim+exfmem, which standard-v1 attacks as well (twice the attack passes);
strong-v1's EOT cell, run only for a model whose forward is random.

Clip counts: NTU RGB+D 60 cross-subject as released (Shahroudy et al., CVPR
2016) less the clips with missing skeletons that ``ntu60`` leaves out (its
list, split by performer here); iMiGUE cross-subject from the authors' label
CSV (labels_20200831.csv; its protocol PDF says 13,936 training clips).

Usage::

    python benchmarks/paper_cost.py                                   # CUDA if available, batch 16
    python benchmarks/paper_cost.py --device cpu --batch-size 1 --repeats 2 --json cost.json
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate

from mmrobust import runtime
from mmrobust.attacks.apgd import APGD
from mmrobust.attacks.square import Square
from mmrobust.config import RunConfig
from mmrobust.datasets import _imigue_format, _ntu_format, imigue, ntu60
from mmrobust.defense import AdversaryParams, reference_defense
from mmrobust.engine import SignGradientAttack
from mmrobust.model import logits_of
from mmrobust.presets import build_model, get_preset
from mmrobust.protocol import STANDARD_V1, STRONG_V1, AttackSetting, Protocol, target_sets
from mmrobust.registry import DEFENSES
from mmrobust.training import MONITOR_SIZE

PRESET = "paper"
MODALITIES = ("rgb", "skeleton")
NTU60_XSUB_RELEASED = (40_320, 16_560)  # training, test clips of the release (Shahroudy et al., CVPR 2016)
IMIGUE_XSUB = (13_935, 4_563)  # training, test rows of the authors' label CSV (labels_20200831.csv)
AMRS = {"ntu60": 3, "imigue": 1}  # AMRs per dataset in the AMR paper (Sec. 4.2)


@dataclasses.dataclass(frozen=True)
class PaperDataset:
    """What the cost of one paper dataset depends on."""

    name: str
    num_classes: int
    skeleton_shape: tuple[int, int | None, int, int]  # (C, T, V, M); T None: the preset's
    train_clips: int
    test_clips: int
    epochs: int
    amrs: int


def paper_datasets() -> dict[str, PaperDataset]:
    """NTU RGB+D 60 and iMiGUE, cross-subject, with the shapes and class counts their loaders produce."""
    missing = _ntu_format.missing_skeleton_names()
    missing_train = sum(_ntu_format.SampleName.parse(name).performer in ntu60.XSUB_TRAIN_SUBJECTS
                        for name in missing)
    ntu_train = NTU60_XSUB_RELEASED[0] - missing_train
    ntu_test = NTU60_XSUB_RELEASED[1] - (len(missing) - missing_train)
    return {
        "ntu60": PaperDataset("ntu60", len(ntu60.CLASS_NAMES),
                              (3, None, _ntu_format.NUM_JOINTS, _ntu_format.MAX_BODIES),
                              ntu_train, ntu_test, ntu60.DEFAULT_EPOCHS, AMRS["ntu60"]),
        # x, y of BODY_25 for one person, as the openpose-json layout (the one the label CSV comes with) gives.
        "imigue": PaperDataset("imigue", _imigue_format.NUM_CLASSES, (2, None, _imigue_format.BODY25_JOINTS, 1),
                               *IMIGUE_XSUB, imigue.DEFAULT_EPOCHS, AMRS["imigue"]),
    }


# -- timing ----------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of ``step`` over ``repeats`` runs, after one warm-up run."""
    step()  # allocator, oneDNN / cuDNN kernel choice
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_passes(dataset: PaperDataset, device: torch.device, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds per clip of each pass kind (module docstring) for the paper model of ``dataset``."""
    preset = get_preset(PRESET)
    shapes = preset.input_shapes(dataset.skeleton_shape)
    model = build_model(preset, shapes, dataset.num_classes).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = {m: torch.rand(batch_size, *shape, generator=generator).to(device) for m, shape in shapes.items()}
    batch["label"] = torch.randint(dataset.num_classes, (batch_size,), generator=generator).to(device)

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    def attack(targets: Sequence[str]) -> Callable[[], None]:
        def step() -> None:
            leaves = {m: batch[m].clone().requires_grad_(True) for m in targets}
            loss = F.cross_entropy(logits_of(model({**batch, **leaves})), batch["label"], reduction="sum")
            torch.autograd.grad(loss, list(leaves.values()))
        return step

    config = RunConfig()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)

    def train() -> None:
        loss = F.cross_entropy(logits_of(model(batch)), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = {}
    model.eval().requires_grad_(False)  # as evaluate freezes the model
    seconds["forward"] = median_seconds(forward, repeats, device)
    for code, targets in target_sets(MODALITIES).items():
        seconds[f"attack {code}"] = median_seconds(attack(targets), repeats, device)
    model.train().requires_grad_(True)
    seconds["train"] = median_seconds(train, repeats, device)
    return {kind: s / batch_size for kind, s in seconds.items()}


# -- pass counts -----------------------------------------------------------------------------------

Passes = dict[str, float]  # pass kind -> passes per clip


def add(total: Passes, kind: str, count: float) -> None:
    if count:
        total[kind] = total.get(kind, 0) + count


def attack_passes(setting: AttackSetting, num_classes: int) -> tuple[int, int, str]:
    """Forward+backward and forward-only passes one attacked clip costs at most in one cell of ``setting``,
    and how that count arises."""
    attack = setting.build()
    if isinstance(attack, SignGradientAttack):
        s = attack.schedule()
        check = int(s.final_check)
        return s.restarts * (s.steps + check), 0, f"{s.restarts}×({s.steps}+{check})"
    if isinstance(attack, APGD):
        runs = min(attack.params.restarts, num_classes - 1) if attack.targeted else attack.params.restarts
        return runs * (attack.params.steps + 1), 0, f"{runs}×({attack.params.steps}+1)"
    if isinstance(attack, Square):
        return 0, attack.params.queries + 1, f"{attack.params.queries}+1 fwd"
    raise ValueError(f"no pass count for attack {setting.attack!r} ({type(attack).__name__})")


def training_passes(targets: Sequence[str], loss_passes: int, dataset: PaperDataset) -> Passes:
    """Passes per training clip and epoch: the adversary's steps on ``targets``, the loss, the monitor."""
    passes: Passes = {}
    if targets:
        code = next(c for c, members in target_sets(MODALITIES).items() if set(members) == set(targets))
        add(passes, f"attack {code}", AdversaryParams().steps)
    add(passes, "train", loss_passes)
    add(passes, "forward", MONITOR_SIZE / dataset.train_clips)
    return passes


def evaluation_passes(protocol: Protocol, num_classes: int, extra_cells: int = 0) -> Passes:
    """Worst-case passes per test clip of ``protocol``; ``extra_cells``: cells of its first gradient attack
    against a defense's views or a transfer source (adaptive protocols only)."""
    cells = [(setting, True) for setting in protocol.attacks]
    if protocol.adaptive and extra_cells:
        first = next(s for s in protocol.attacks if not getattr(s.build(), "gradient_free", False))
        cells += [(first, False)] * extra_cells
    passes: Passes = {"forward": 1}  # the shared clean forward
    for code in target_sets(MODALITIES):
        for setting, on_model in cells:
            gradient, forward, _ = attack_passes(setting, num_classes)
            add(passes, f"attack {code}", gradient)
            add(passes, "forward", forward + 1 + (0 if on_model else 1))  # re-classification; a view's clean forward
    return passes


def formulas(dataset: PaperDataset) -> list[str]:
    """The pass counts behind the table, spelled out from the code."""
    adversary = AdversaryParams().steps
    lines = [
        "device-hours = clips × Σ_kind (passes per clip of that kind × seconds per clip of that kind) / 3600",
        f"training: clips = training clips × epochs; per clip A × attack T + k × train, + {MONITOR_SIZE} monitor "
        f"forwards per epoch; A = AdversaryParams().steps = {adversary} (none: 0), T = the adversary's targets, "
        "k = 1 (amr: 2)",
    ]
    for protocol in (STANDARD_V1, STRONG_V1):
        counts = {setting.key: attack_passes(setting, dataset.num_classes) for setting in protocol.attacks}
        terms = " + ".join(f"{key} {spelled}" for key, (_, _, spelled) in counts.items())
        gradient = sum(g for g, _, _ in counts.values())
        forward = sum(f + 1 for _, f, _ in counts.values())
        line = (f"{protocol.name} (upper bound): per test clip 1 forward + for each target T of "
                f"{', '.join(target_sets(MODALITIES))}: [{terms}] = {gradient} × attack T + {forward} forward "
                f"(with {len(counts)} re-classifications)")
        if protocol.adaptive:
            first = next(s for s in protocol.attacks if not getattr(s.build(), "gradient_free", False))
            line += (f"; + per view or transfer source, per target: {attack_passes(first, dataset.num_classes)[0]} "
                     f"× attack T ({first.key}) + 2 forward")
        lines.append(line)
    return lines


# -- the table -------------------------------------------------------------------------------------

def spell(passes: Passes) -> str:
    order = ["attack R", "attack S", "attack RS", "train", "forward"]
    return " + ".join(f"{passes[k]:,.0f} {k}" if float(passes[k]).is_integer() else f"{passes[k]:.3g} {k}"
                      for k in sorted(passes, key=order.index))


def figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}" if value >= 1 else f"{value:.3f}"


def paper_runs(dataset: PaperDataset) -> list[dict[str, Any]]:
    """One entry per paper run of ``dataset``: name, passes per clip, clips, epochs, upper bound or not."""
    reference = reference_defense()  # undefended: no adversary, and strong-v1's transfer source for the others
    recipes = [(reference, (), 1)]
    recipes += [(name, DEFENSES.get(name).targets, 1) for name in ("at-r", "at-s", "at-rs")]
    recipes += [(f"amr (S={dataset.amrs})", DEFENSES.get("amr").requires, 2)]
    runs = [{"run": f"{dataset.name} {name} training {dataset.epochs} ep", "upper_bound": False,
             "passes": training_passes(targets, loss_passes, dataset), "clips": dataset.train_clips,
             "epochs": dataset.epochs} for name, targets, loss_passes in recipes]
    runs.append({"run": f"{dataset.name} {STANDARD_V1.name} eval", "upper_bound": True,
                 "passes": evaluation_passes(STANDARD_V1, dataset.num_classes), "clips": dataset.test_clips,
                 "epochs": 1})
    views = f"{dataset.amrs} aux view{'s' * (dataset.amrs > 1)}"
    for label, extra in ((reference, 0), (f"at-r/at-s/at-rs, + transfer from {reference}", 1),
                         (f"amr (S={dataset.amrs}), + {views} + transfer from {reference}", dataset.amrs + 1)):
        runs.append({"run": f"{dataset.name} {STRONG_V1.name} eval, {label}", "upper_bound": True,
                     "passes": evaluation_passes(STRONG_V1, dataset.num_classes, extra), "clips": dataset.test_clips,
                     "epochs": 1})
    return runs


def price(run: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    per_clip = sum(count * seconds[kind] for kind, count in run["passes"].items())
    hours = run["clips"] * run["epochs"] * per_clip / 3600
    return {**run, "seconds_per_clip": per_clip, "device_hours": hours}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else runtime.cpu_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per pass (default: 1 on CPU, 16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pass, after one warm-up")
    parser.add_argument("--datasets", nargs="+", choices=("ntu60", "imigue"), default=("ntu60", "imigue"))
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.repeats < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--repeats and --batch-size must be at least 1")
    device = torch.device(args.device)
    batch_size = args.batch_size or (16 if device.type == "cuda" else 1)
    numerics = runtime.pin_cuda() if device.type == "cuda" else None

    header = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch_size": batch_size, "repeats": args.repeats, "preset": PRESET}
    print("; ".join(f"{k}: {v}" for k, v in header.items()))
    datasets = {name: d for name, d in paper_datasets().items() if name in args.datasets}

    seconds, rows = {}, []
    for name, dataset in datasets.items():
        started = time.perf_counter()
        seconds[name] = time_passes(dataset, device, batch_size, args.repeats)
        gc.collect()  # the model and its optimizer state, before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        shape = get_preset(PRESET).input_shapes(dataset.skeleton_shape)
        print(f"timed {name} ({dataset.num_classes} classes, rgb {shape['rgb']}, skeleton {shape['skeleton']}) "
              f"in {time.perf_counter() - started:.0f} s")
        rows += [price(run, seconds[name]) for run in paper_runs(dataset)]

    kinds = list(next(iter(seconds.values())))
    print("\nmeasured seconds per clip")
    print(tabulate([[kind, *(seconds[name][kind] for name in seconds)] for kind in kinds],
                   headers=["pass", *seconds], floatfmt=".4g"))
    print("\n" + tabulate([[r["run"] + (" (≤)" if r["upper_bound"] else ""), spell(r["passes"]),
                            f"{r['clips']:,}" + (f" × {r['epochs']}" if r["epochs"] > 1 else ""),
                            figure(r["seconds_per_clip"]), figure(r["device_hours"])] for r in rows],
                          headers=["run", "passes per clip", "clips", "s per clip", "device-hours"],
                          disable_numparse=True))
    by_dataset = {name: formulas(d) for name, d in datasets.items()}
    if len({tuple(lines) for lines in by_dataset.values()}) == 1:
        lines = next(iter(by_dataset.values()))
    else:  # APGD-T's target classes differ with K
        lines = [f"{name}: {line}" for name, dataset_lines in by_dataset.items() for line in dataset_lines]
    print("\n" + "\n".join(lines))
    print("(≤): upper bound — every test clip classified correctly and never fooled; early stopping, the "
          "cascade and clean errors make the real cost lower")
    print("clips: " + "; ".join(f"{d.name} {d.train_clips:,} training, {d.test_clips:,} test"
                                for d in datasets.values()))

    if args.json:
        record = {**header, "cuda_numerics": numerics, "seconds_per_clip": seconds, "formulas": lines,
                  "datasets": {name: dataclasses.asdict(d) for name, d in datasets.items()},
                  "runs": rows}
        args.json.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
