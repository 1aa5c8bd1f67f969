"""The CPU runtime settings that make numbers repeatable and training tolerant of a busy machine.

Set by ``import mmrobust``, before torch is first used, unless the user set
them already (their values win and are recorded):

* ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_CBWR=AVX2``:
  PyTorch's vector kernels, oneDNN's convolutions and MKL's BLAS run their
  AVX2 code paths on every x86-64 CPU that has AVX2, AVX-512 or AMX. Left
  free, each picks the widest instruction set of the CPU, and a run trained on
  an AVX-512 machine differs in the last bits from one on an AVX2 machine;
  over eight epochs of SGD those bits grow into different models. Pinned, the
  same thread count gives bit-identical runs on the same CPU model, but not
  across models: an Intel Xeon and an AMD EPYC, both pinned to AVX2 and one
  thread, trained every defense's one-epoch canary to different weights
  (kernel blocking follows the caches, and with it the order of the sums).
* ``GOMP_SPINCOUNT=2000`` (unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is
  set): an idle OpenMP worker thread spins 2,000 times, then sleeps. libgomp's
  default is 300,000 spins: on a machine whose two cores are busy with another
  torch job, the spinning threads stole each other's time slices and one
  training epoch took 18 times its idle time. Sleeping at once
  (``OMP_WAIT_POLICY=PASSIVE``) keeps a busy epoch within 1.4 times idle but
  makes the idle epoch 39 % slower (the tiny models run many short parallel
  regions); 2,000 spins measured 1.8 times busy and 11 % idle
  (``benchmarks/contention.py``). libgomp reads this once, when torch is
  imported, so it only takes effect when mmrobust is imported first (the
  ``mmrobust`` command always is).
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: the cuBLAS workspace that lets
  deterministic algorithms run (read when CUDA starts; no effect on the CPU).

On a CUDA device :func:`pin_cuda` turns off what makes GPU numbers depend on
the GPU generation or on chance: TF32 matrix products and convolutions (on by
default for cuDNN, which rounds inputs to 10 mantissa bits on Ampere and
later), cuDNN's benchmark mode (which picks kernels by timing), and
non-deterministic algorithms (``torch.use_deterministic_algorithms``, warning
only where an operation has no deterministic implementation, as max-pooling's
backward on CUDA). Records store these settings, the GPU, its driver, and the
CUDA and cuDNN versions (:func:`describe_cuda`).

:func:`describe` says what is in force; every result record stores it, and
``mmrobust reproduce`` names any difference.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

X86_DEFAULTS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
WAIT_DEFAULTS = {"GOMP_SPINCOUNT": "2000"}
CUDA_DEFAULTS = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SETTINGS = (*X86_DEFAULTS, *WAIT_SETTINGS)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def pin() -> None:
    """Fill in the defaults above for every setting the user left unset."""
    defaults = {} if any(key in os.environ for key in WAIT_SETTINGS) else dict(WAIT_DEFAULTS)
    defaults.update(CUDA_DEFAULTS)
    if platform.machine().lower() in ("x86_64", "amd64") and "avx2" in cpu_flags():
        defaults.update(X86_DEFAULTS)  # never on a CPU without AVX2 (or whose flags cannot be read)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what platform says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set extensions of :data:`ISA_FLAGS` that the CPU has (Linux only; else empty)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def describe() -> dict[str, Any]:
    """What decides the numbers of a CPU run: CPU, kernels in force, threads, library versions."""
    import numpy
    import torch

    return {
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "settings": {key: os.environ.get(key) for key in SETTINGS},
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": sys.platform,
    }


# What must be equal for two runs to be bit-identical; the rest is informative
# (the wait settings change speed, never a number).
DECISIVE = ("machine", "cpu_model", "kernels", "threads", "torch", "settings")


def _decisive(environment: dict[str, Any], key: str) -> Any:
    value = environment.get(key)
    if key == "settings" and isinstance(value, dict):
        return {k: value.get(k) for k in X86_DEFAULTS}
    return value


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The decisive entries in which two :func:`describe` results differ, as ``key: a -> b``."""
    return [f"{key}: {_decisive(recorded, key)!r} -> {_decisive(current, key)!r}" for key in DECISIVE
            if _decisive(recorded, key) != _decisive(current, key)]


def pin_cuda() -> dict[str, Any]:
    """Pin the CUDA numerics (module docstring) for this process and return what is in force."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic_algorithms": "warn_only" if torch.is_deterministic_algorithms_warn_only_enabled()
            else torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "evaluation_dtype": "float32"}


def describe_cuda(device: Any) -> dict[str, Any]:
    """The GPU of ``device``, its driver (from ``nvidia-smi`` when it is installed, else None), and the
    CUDA and cuDNN versions torch runs with."""
    import subprocess

    import torch

    index = torch.device(device).index or 0
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"-i={index}"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        driver = None
    properties = torch.cuda.get_device_properties(index)
    return {"gpu": properties.name, "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1), "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}
