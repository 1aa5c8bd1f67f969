"""A contribution from outside: ``examples/plugin`` installed as a distribution of its own.

The example package (the contributor's guide, CONTRIBUTING.md, walks through
it) declares one defense, one attack, one dataset with a third modality and
one command through entry points only. Installed into a throwaway folder and
put on ``PYTHONPATH``, it shows up in ``mmrobust list``, the registry-wide
contract tests run on its entries, and ``mmrobust run`` trains and evaluates
with all three, with table columns for the new modality. Nothing under
``mmrobust/`` names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrobust.registry import ATTACKS, DATASETS, DEFENSES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin"
NAMES = {"defense": "label-smoothing", "attack": "pgd-dlr", "dataset": "stripes", "command": "stripes-info"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that sees the example installed (a copy is built, the tree stays clean)."""
    folder = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, folder / "source")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(folder / "site"), str(source)], check=True, capture_output=True)
    path = os.pathsep.join(p for p in (str(folder / "site"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def mmrobust(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrobust", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_this_process_does_not_see_the_example():
    assert NAMES["defense"] not in DEFENSES and NAMES["attack"] not in ATTACKS and NAMES["dataset"] not in DATASETS


def test_core_never_names_the_example():
    sources = [p for p in (ROOT / "mmrobust").rglob("*.py")]
    assert sources
    for path in sources:
        text = path.read_text()
        for name in NAMES.values():
            assert f'"{name}"' not in text and f"'{name}'" not in text and f"``{name}``" not in text, \
                f"{path} names {name}"


def test_list_shows_every_entry_and_the_new_modality(plugin_env):
    listed = mmrobust(plugin_env, "list")
    assert listed.returncode == 0, listed.stderr
    for kind, name in NAMES.items():
        assert f"  {name} " in listed.stdout, f"{kind} {name} missing:\n{listed.stdout}"
    assert "depth (D, depth video)" in listed.stdout
    info = mmrobust(plugin_env, "stripes-info")
    assert info.returncode == 0 and "D depth (depth video): (1, 8, 64, 64)" in info.stdout, info.stdout + info.stderr


def test_the_contract_tests_run_on_the_example(plugin_env):
    files = ["tests/test_contract_attacks.py", "tests/test_contract_datasets.py", "tests/test_defenses.py"]
    chosen = " or ".join(NAMES[k] for k in ("defense", "attack", "dataset"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", chosen,
                             "--collect-only", *files], env=plugin_env, cwd=ROOT, capture_output=True, text=True)
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    for name in (NAMES["defense"], NAMES["attack"], NAMES["dataset"]):
        assert sum(f"[{name}" in line or f"-{name}" in line for line in collected) >= 3, (name, result.stdout)
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", chosen, *files],
                         env=plugin_env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert f"{len(collected)} passed" in ran.stdout, ran.stdout[-500:]


def test_run_trains_and_evaluates_with_all_three_and_a_column_per_target(plugin_env, tmp_path):
    run_dir = tmp_path / "run"
    result = mmrobust(plugin_env, "run", "--dataset", NAMES["dataset"], "--defense", NAMES["defense"],
                      "--defense-param", "smoothing=0.2", "--attacks", f"{NAMES['attack']},fgsm", "--epochs", 1,
                      "--data-dir", tmp_path / "cache", "--run-dir", run_dir, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓RSD" in result.stdout and "✗D" in result.stdout and "✗RSD" in result.stdout
    [path] = run_dir.glob("result-*.json")
    record = json.loads(path.read_text())
    assert record["defense"] == NAMES["defense"] and record["modalities"] == ["rgb", "skeleton", "depth"]
    assert set(record["metrics"]["attacks"][NAMES["attack"]]) >= {"R", "S", "D", "RSD", "avg"}
    assert record["flags"]["sanity"]["rsd_le_min"] in (True, False)
    board = mmrobust(plugin_env, "leaderboard", "--records", run_dir, "--dataset", NAMES["dataset"],
                     "--protocol", record["protocol"], "--attack", NAMES["attack"], "--out", tmp_path / "boards",
                     cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    assert "✗D" in board.stdout and "| label-smoothing" in board.stdout
