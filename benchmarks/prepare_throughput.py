"""Throughput and peak memory of ``prepare`` on generated NTU RGB+D 60 data.

Writes miniature releases (``.skeleton`` files and ``_rgb.avi`` videos in the
real formats, from the writers of ``mmrobust.datasets._ntu_format``) of 100 and
1,000 clips into a temporary folder, prepares each with 1 and 2 worker
processes, and prints clips per second and the peak resident set of the
preparing process and of its busiest worker (Linux ``/proc``; elsewhere only
the main process). Each prepare runs in a fresh process, so every peak is its
own. Memory should not grow with the number of clips.

Usage::

    python benchmarks/prepare_throughput.py                    # 100 and 1,000 clips, 1 and 2 workers
    python benchmarks/prepare_throughput.py --clips 50 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def sample_names(count: int) -> list[str]:
    """``count`` distinct NTU RGB+D 60 names, none on the missing-skeleton list."""
    from mmrobust.datasets._ntu_format import missing_skeleton_names

    missing = missing_skeleton_names()
    names = []
    index = 0
    while len(names) < count:
        action, rest = index % 60 + 1, index // 60
        camera, rest = rest % 3 + 1, rest // 3
        performer, rest = rest % 40 + 1, rest // 40
        name = f"S{rest % 17 + 1:03d}C{camera:03d}P{performer:03d}R{rest // 17 % 2 + 1:03d}A{action:03d}"
        if name not in missing:
            names.append(name)
        index += 1
    return names


def generate(root: Path, count: int, frames: int) -> float:
    from mmrobust.datasets._ntu_format import write_example_sample

    start = time.perf_counter()
    for i, name in enumerate(sample_names(count)):
        people = 2 if int(name[-3:]) >= 50 else 1
        write_example_sample(root, name, frames=frames, people=people, seed=i, codec="mpeg4")
    return time.perf_counter() - start


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident set of a process since it started its program (Linux ``VmHWM``).

    ``getrusage``'s ``ru_maxrss`` would also count the memory of the parent the
    process was forked from before ``exec``, which is not what we measure here.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid == "self":
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return None


class WorkerWatch(threading.Thread):
    """Samples the peak resident set of this process's children (the prepare workers)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self.done = threading.Event()

    def children(self) -> list[str]:
        me = str(os.getpid())
        try:  # the kernel's own list (CONFIG_PROC_CHILDREN), cheap
            return Path(f"/proc/{me}/task/{me}/children").read_text().split()
        except OSError:
            pass
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if stat.rsplit(")", 1)[1].split()[1] == me:
                    found.append(entry)
        return found

    def run(self) -> None:
        while not self.done.wait(0.1):
            for pid in self.children():
                self.peak = max(self.peak, peak_rss_mib(pid) or 0.0)


def child(root: str, cache: str, workers: int) -> None:
    """Run one prepare and print its measurements as JSON (runs in its own process)."""
    from mmrobust.datasets.base import DataRequest
    from mmrobust.datasets.prepare import prepare
    from mmrobust.registry import DATASETS

    DATASETS.names()  # import the dataset modules before timing
    request = DataRequest(cache_dir=cache, rgb_frames=8, rgb_size=32, skeleton_frames=32, progress=False)
    baseline = peak_rss_mib()
    watch = WorkerWatch()
    if workers > 1 and os.path.isdir("/proc"):
        watch.start()
    start = time.perf_counter()
    manifest = prepare("ntu60", root, request, workers=workers)
    seconds = time.perf_counter() - start
    watch.done.set()
    print(json.dumps({
        "clips": manifest["num_samples"], "seconds": seconds, "rss_after_imports_mib": baseline,
        "peak_rss_mib": peak_rss_mib(), "peak_worker_rss_mib": watch.peak or None,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=30, help="frames per generated clip")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "CACHE", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    print(f"generated clips: {args.frames} frames, 96x54 mpeg4 video, 1-2 bodies; "
          "prepared to rgb 8x32x32, skeleton 32 frames")
    print(f"{'clips':>6} {'workers':>7} {'seconds':>8} {'clips/s':>8} {'RSS after imports':>18} "
          f"{'peak RSS':>9} {'peak worker RSS':>16}")
    with tempfile.TemporaryDirectory(prefix="mmrobust-bench-") as folder:
        for count in args.clips:
            root = Path(folder) / f"ntu-{count}"
            seconds = generate(root, count, args.frames)
            print(f"  (wrote {count} clips in {seconds:.1f} s)")
            for workers in args.workers:
                cache = Path(folder) / f"cache-{count}-{workers}"
                output = subprocess.run([sys.executable, __file__, "--child", str(root), str(cache), str(workers)],
                                        check=True, capture_output=True, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                worker_rss = (f"{result['peak_worker_rss_mib']:.0f} MiB"
                              if workers > 1 and result["peak_worker_rss_mib"] else "-")
                print(f"{result['clips']:>6} {workers:>7} {result['seconds']:>8.2f} "
                      f"{result['clips'] / result['seconds']:>8.1f} {result['rss_after_imports_mib']:>14.0f} MiB "
                      f"{result['peak_rss_mib']:>5.0f} MiB {worker_rss:>16}")


if __name__ == "__main__":
    main()
