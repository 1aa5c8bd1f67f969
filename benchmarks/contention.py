"""Training speed on a machine whose cores are kept busy by another process.

Times one epoch of the real training loop (``mmrobust.training.train``) of a
defense on the embedded synthetic data, tiny preset, with the default thread
count (torch's: one per core), in one invocation:

(a) idle: nothing else of ours running;
(b) busy: while a competing load keeps every core busy. The competitor is
    ``torch``, an unrelated torch job: another Python process running conv2d
    in a loop on one thread per core, torch imported without mmrobust (so
    with OpenMP's default wait policy); or ``spin``, one plain Python busy
    loop per core.

Each setting is timed under OpenMP's waiting as ``import mmrobust`` sets it
(``mmrobust``: see :mod:`mmrobust.runtime`) and under baselines: ``unset``
(libgomp's default, which spins for 300,000 iterations before it sleeps: what
a run got before mmrobust set anything), ``ACTIVE`` (threads always spin),
``PASSIVE`` (threads sleep at once) and ``spin:N`` (``GOMP_SPINCOUNT=N``:
spin N iterations, then sleep). Every epoch runs in a fresh interpreter, so
the setting is in place when torch is imported; only the ``train`` call is
timed, after a warm-up process has generated (and cached) the data. The
target: a busy epoch takes at most 3 times the idle one under mmrobust's
default, and its idle epoch is not slower than ``unset``'s. Each ratio is to
the idle epoch under the same setting.

Spinning threads that share their cores with another process make an epoch
many times slower, so baseline epochs are stopped after ``--baseline-timeout``
seconds and reported as "> T" (their ratio is then a lower bound). On Linux
the table shows how many cores the competitor got while the epoch's process
ran, and the script warns when processes that are not its own kept the CPUs
busy during an epoch: that time, and every ratio using it, is then unreliable.

Usage::

    python benchmarks/contention.py                          # defense none, 320 clips, torch competitor
    python benchmarks/contention.py --defense amr --competitor torch spin --baselines unset PASSIVE spin:10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())
TARGET = 3.0
DEFAULT = "mmrobust"
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def describe_policy(policy: str) -> str:
    return {"mmrobust": "mmrobust default", "unset": "libgomp default, before the fix", "ACTIVE": "always spin",
            "PASSIVE": "sleep at once"}.get(policy, f"GOMP_SPINCOUNT={policy.partition(':')[2]}")


def policy_environment(policy: str) -> dict[str, str | None]:
    """The wait variables a child sets after ``import mmrobust`` (None: removed; absent: left as mmrobust set it)."""
    if policy == DEFAULT:
        return {}
    if policy == "unset":
        return dict.fromkeys(WAIT_VARIABLES)
    if policy in ("ACTIVE", "PASSIVE"):
        return {"OMP_WAIT_POLICY": policy, "GOMP_SPINCOUNT": None}
    kind, _, count = policy.partition(":")
    if kind != "spin" or not count.isdigit():
        raise argparse.ArgumentTypeError(f"unknown wait setting {policy!r}: use unset, ACTIVE, PASSIVE or spin:N")
    return {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": count}


def wait_setting(text: str) -> str:
    policy_environment(text)
    return text
BACKGROUND_WARNING = 0.25  # cores used by processes not of this benchmark during a timed epoch


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- roles run in child processes ------------------------------------------------------------------------------------

def epoch_role(defense: str, samples: int, policy: str) -> None:
    """Train one epoch and print, as JSON, the seconds ``train`` took and the settings in force."""
    import tempfile

    import mmrobust  # noqa: F401  (fills in the runtime settings; imports no torch)

    for key, value in policy_environment(policy).items():  # before torch loads libgomp, which reads them once
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    import numpy as np
    import torch

    from mmrobust.config import RunConfig
    from mmrobust.run import prepare
    from mmrobust.training import train

    exp = prepare(RunConfig(defense=defense, epochs=1, device="cpu"), progress=False)
    split = exp.data.train.take(np.arange(min(samples, len(exp.data.train))))
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(exp.model, exp.defense, split, exp.config, 1, Path(run_dir), device=exp.device, progress=False)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "samples": len(split), "threads": torch.get_num_threads(),
                      "wait": {key: os.environ.get(key) for key in WAIT_VARIABLES}}))


def torch_load_role(threads: int, lifetime: float) -> None:
    """Run conv2d on ``threads`` threads until killed or ``lifetime`` seconds have passed."""
    import torch  # deliberately without mmrobust: an unrelated torch job

    torch.set_num_threads(threads)
    x, weight = torch.randn(16, 32, 32, 32), torch.randn(32, 32, 3, 3)
    torch.conv2d(x, weight, padding=1)
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        torch.conv2d(x, weight, padding=1)


def spin_load_role(lifetime: float) -> None:
    """Busy-loop one core until killed or ``lifetime`` seconds have passed."""
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        for _ in range(100_000):
            pass


# --- the driver ------------------------------------------------------------------------------------------------------

@dataclass
class Timing:
    setting: str
    policy: str
    seconds: float
    timed_out: bool = False
    threads: int | None = None
    competitor: float | None = None  # cores the competitor used while the epoch's process ran (Linux)
    background: float | None = None  # cores all other processes used meanwhile (Linux)


def machine_cpu_seconds() -> float | None:
    """Non-idle CPU time of the whole machine so far (Linux ``/proc/stat``; else None)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def processes_cpu_seconds(pids: list[int]) -> float | None:
    """CPU time of the running processes ``pids`` so far (Linux ``/proc/<pid>/stat``; else None)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished (and reaped) children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Who used the CPUs while one timed epoch's process ran: the competitor, and everything else but us."""

    def __init__(self, competitors: Sequence[subprocess.Popen]) -> None:
        self.pids = [process.pid for process in competitors]
        self.start = self.read()

    def read(self) -> tuple[float | None, float | None, float, float]:
        return (machine_cpu_seconds(), processes_cpu_seconds(self.pids), children_cpu_seconds(),
                time.monotonic())

    def cores(self) -> tuple[float | None, float | None]:
        """Average cores used so far by the competitor and by other processes (after the epoch is reaped)."""
        (machine, competitor, ours, now), (machine0, competitor0, ours0, then) = self.read(), self.start
        if machine is None or competitor is None or machine0 is None or competitor0 is None:
            return None, None
        wall = now - then
        competitor_cores = (competitor - competitor0) / wall
        other = machine - machine0 - (ours - ours0) - (competitor - competitor0)
        return (competitor_cores if self.pids else None), max(other, 0.0) / wall


def child_env() -> dict[str, str]:
    """The environment of a child, without any wait setting of ours (each child sets its own)."""
    return {key: value for key, value in os.environ.items() if key not in WAIT_VARIABLES}


def time_epoch(args: argparse.Namespace, setting: str, policy: str, timeout: float,
               samples: int | None = None, competitors: Sequence[subprocess.Popen] = ()) -> Timing:
    """One epoch in a fresh interpreter under ``policy``, stopped after ``timeout`` seconds."""
    command = [sys.executable, SCRIPT, "--role", "epoch", "--defense", args.defense,
               "--train-samples", str(samples or args.train_samples), "--policy", policy]
    meter = CpuMeter(competitors)
    try:
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        competitor, background = meter.cores()
        return Timing(setting, policy, timeout, timed_out=True, competitor=competitor, background=background)
    competitor, background = meter.cores()
    if done.returncode != 0:
        sys.exit(f"the timed epoch failed ({setting}, {policy}):\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = policy_environment(policy)
    if any(report["wait"][key] != value for key, value in expected.items()):
        sys.exit(f"the epoch ran with {report['wait']}, expected {expected}")
    return Timing(setting, policy, report["seconds"], threads=report["threads"], competitor=competitor,
                  background=background)


def start_competitor(kind: str, lifetime: float) -> list[subprocess.Popen]:
    """Start the competing load and return once every process of it is running."""
    env = child_env()  # an unrelated job: OpenMP's default waiting
    if kind == "torch":
        commands = [[sys.executable, SCRIPT, "--role", "torch-load", "--threads", str(cores()),
                     "--lifetime", str(lifetime)]]
    else:
        commands = [[sys.executable, SCRIPT, "--role", "spin-load", "--lifetime", str(lifetime)]] * cores()
    processes = []
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {kind} competitor did not start (exit status {process.wait()})")
    except BaseException:
        stop(processes)
        raise
    return processes


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def time_busy(args: argparse.Namespace, kind: str, policy: str, timeout: float) -> Timing:
    """One epoch while ``kind`` keeps the cores busy; the competitor is killed however the epoch ends.

    The competitor also stops by itself shortly after the epoch's timeout, should this process die first.
    """
    processes = start_competitor(kind, lifetime=args.settle + timeout + 60)
    try:
        time.sleep(args.settle)
        return time_epoch(args, f"busy ({kind} competitor)", policy, timeout, competitors=processes)
    finally:
        stop(processes)


def ratio(timing: Timing, idle: Timing) -> str:
    return f"{'> ' if timing.timed_out else ''}{timing.seconds / idle.seconds:.2f}"


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defense", default="none", help="registered defense to train (default: none)")
    parser.add_argument("--train-samples", type=int, default=320, metavar="N",
                        help="train on the first N clips of the training split (default: 320)")
    parser.add_argument("--competitor", nargs="+", choices=("torch", "spin"), default=["torch"],
                        help="competing loads to measure under (default: torch)")
    parser.add_argument("--baselines", nargs="*", type=wait_setting, default=["unset", "PASSIVE"],
                        metavar="SETTING", help="waiting to compare mmrobust's default with: unset, ACTIVE, "
                                                "PASSIVE or spin:N (default: unset PASSIVE)")
    parser.add_argument("--settle", type=float, default=3.0, metavar="S",
                        help="seconds the competitor runs before the timed epoch starts (default: 3)")
    parser.add_argument("--baseline-timeout", type=float, default=120.0, metavar="T",
                        help="stop a baseline epoch after T seconds (default: 120)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="T",
                        help="stop an epoch under mmrobust's default after T seconds (default: 600)")
    parser.add_argument("--role", choices=("epoch", "torch-load", "spin-load"), help=argparse.SUPPRESS)
    parser.add_argument("--policy", default=DEFAULT, type=wait_setting, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "epoch":
        return epoch_role(args.defense, args.train_samples, args.policy)
    if args.role == "torch-load":
        return torch_load_role(args.threads, args.lifetime)
    if args.role == "spin-load":
        return spin_load_role(args.lifetime)

    baselines = list(dict.fromkeys(args.baselines))
    policies = [DEFAULT, *baselines]
    timeouts = {policy: args.timeout if policy == DEFAULT else args.baseline_timeout for policy in policies}
    warm_up = time_epoch(args, "warm-up", DEFAULT, args.timeout, samples=16)  # generates and caches the data
    print(f"one epoch of {args.defense!r}, tiny preset, {args.train_samples} synthetic clips, {warm_up.threads} "
          f"threads, {cores()} cores; competitor started {args.settle:g} s before the epoch; baseline epochs "
          f"stopped after {args.baseline_timeout:g} s", flush=True)
    idle = {policy: time_epoch(args, "idle", policy, timeouts[policy]) for policy in policies}
    busy = {(kind, policy): time_busy(args, kind, policy, timeouts[policy])
            for kind in args.competitor for policy in policies}

    print()
    timings = [*idle.values(), *busy.values()]
    print_table([("setting", "waiting", "seconds", "ratio to idle", "competitor cores"),
                 *((timing.setting, f"{timing.policy} ({describe_policy(timing.policy)})",
                    f"{'> ' if timing.timed_out else ''}{timing.seconds:.1f}", ratio(timing, idle[timing.policy]),
                    "" if timing.competitor is None else f"{timing.competitor:.2f}")
                   for timing in timings)])
    if any(timing.timed_out for timing in timings):
        print("(> : stopped at the timeout; the true time and ratio are larger)")
    for timing in timings:
        if timing.background is not None and timing.background > BACKGROUND_WARNING:
            print(f"warning: other processes used {timing.background:.1f} cores during the epoch "
                  f"'{timing.setting}' under {timing.policy}; its time and the ratios that use it are unreliable")

    print()
    for policy in baselines:
        print(f"idle epoch, mmrobust default / {policy}: {ratio(idle[DEFAULT], idle[policy])}")
    for kind in args.competitor:
        for policy in baselines:
            print(f"baseline busy/idle ratio ({policy}, {kind} competitor): "
                  f"{ratio(busy[kind, policy], idle[policy])}")
    for kind in args.competitor:
        timing = busy[kind, DEFAULT]
        met = not timing.timed_out and timing.seconds <= TARGET * idle[DEFAULT].seconds
        print(f"busy/idle ratio (mmrobust default, {kind} competitor): {ratio(timing, idle[DEFAULT])} "
              f"(target <= {TARGET:g}: {'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
