"""Checkpoint files and the provenance stamped on every result record.

A run directory holds ``config.json`` (the resolved configuration),
``train_log.jsonl`` (one line per epoch), ``checkpoint.pt``, ``model.pt``,
``outcomes.npz`` and ``result.json``, all written through
:func:`mmrobust.files.atomic_write`.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import mmrobust
from mmrobust.files import atomic_write


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def git_commit() -> str | None:
    """The commit of the mmrobust source tree, if it is a git checkout."""
    source = Path(mmrobust.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    return {
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mmrobust_version": mmrobust.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device_name(device),
        "seed": seed,
    }
