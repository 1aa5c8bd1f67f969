"""``import mmrobust`` pins the CPU kernels and OpenMP's waiting before torch starts, and leaves the user's own settings."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from mmrobust import runtime

PROBE = ("import json, os, mmrobust, torch; torch.ones(2) + 1; "
         "print(json.dumps({'env': {k: os.environ.get(k) for k in mmrobust.runtime.SETTINGS}, "
         "'kernels': torch.backends.cpu.get_cpu_capability()}))")


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in runtime.SETTINGS}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in runtime.cpu_flags(),
                    reason="x86-64 CPUs with AVX2 only")
def test_import_pins_avx2_kernels_and_short_spinning():
    seen = probe()
    assert seen["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                           "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "2000"}
    assert seen["kernels"] == "AVX2"


def test_the_users_settings_win():
    seen = probe(ATEN_CPU_CAPABILITY="default", OMP_WAIT_POLICY="ACTIVE")
    assert seen["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert seen["env"]["OMP_WAIT_POLICY"] == "ACTIVE" and seen["env"]["GOMP_SPINCOUNT"] is None


def test_differences_name_what_decides_the_bits_only():
    recorded = runtime.describe()
    assert runtime.differences(recorded, recorded) == []
    other_wait = {**recorded, "settings": {**recorded["settings"], "GOMP_SPINCOUNT": "300000"}, "numpy": "0"}
    assert runtime.differences(recorded, other_wait) == []  # speed and informative entries only
    other = {**recorded, "threads": recorded["threads"] + 1, "kernels": "AVX512"}
    assert [line.split(":")[0] for line in runtime.differences(recorded, other)] == ["kernels", "threads"]
