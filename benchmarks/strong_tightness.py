"""Is strong-v1's robust accuracy tight? Its worst case against a suite of long, restarted white-box attacks.

On one trained run with a strong-v1 record (``mmrobust eval --protocol
strong-v1``), evaluates in one process, every attack on every sample (no
cascade), the pointwise worst case of:

* PGD, 100 steps, α = ε/4, random start, 2 restarts, on the cross-entropy;
* the same on the Carlini–Wagner margin loss (CW∞);
* APGD-CE (100 iterations) and APGD-T (100 iterations, 9 target classes);

and prints, per target, that worst case beside strong-v1's (from the run's
record) and standard-v1's. strong-v1 is tight where its column is at or below
the suite's.

Usage::

    python benchmarks/strong_tightness.py --run-dir runs/synthetic/none-tiny-s0
"""

from __future__ import annotations

import mmrobust  # noqa: F401  first: its runtime settings must precede torch's start

import argparse
import time
from pathlib import Path

import numpy as np

from mmrobust.metrics import WORST
from mmrobust.protocol import STANDARD_V1, AttackSetting, Protocol, evaluate
from mmrobust.results import Record
from mmrobust.run import load_trained

LONG = ((("steps", 100), ("rel_step", 0.25), ("random_start", True), ("restarts", 2)))
SUITE = Protocol("long-white-box", STANDARD_V1.eps, (
    AttackSetting("pgd100x2", "pgd", LONG),
    AttackSetting("cw100x2", "cw-inf", LONG),
    AttackSetting("apgd-ce", "apgd-ce", (("steps", 100),)),
    AttackSetting("apgd-t", "apgd-t", (("steps", 100), ("restarts", 9))),
))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args()
    strong = Record.load(args.run_dir / "result-strong-v1.json")
    standard = Record.load(args.run_dir / "result.json")
    exp = load_trained(args.run_dir)
    started = time.perf_counter()
    suite = evaluate(exp.model, exp.data.test, SUITE, modalities=exp.config.modalities,
                     batch_size=exp.config.eval_batch_size, codes=exp.data.codes, padding=exp.data.padding)
    seconds = time.perf_counter() - started
    print(f"{exp.config.defense} on {exp.config.dataset}, {len(exp.data.test)} test clips; suite took {seconds:.0f} s")
    print(f"{'target':<8}{'standard-v1':>13}{'long suite':>12}{'strong-v1':>11}")
    for code in suite.targets:
        worst = 100 * np.logical_and.reduce([per_target[code] for per_target in suite.robust.values()]).mean()
        print(f"{code:<8}{standard.metrics['attacks'][WORST][code]:>13.2f}{worst:>12.2f}"
              f"{strong.metrics['attacks'][WORST][code]:>11.2f}")


if __name__ == "__main__":
    main()
