"""What ``pip install mmrobust`` delivers: one top-level package, data files included, lean dependencies."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a source checkout may hold besides the sources (see .gitignore).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "runs", "__pycache__",
                                     ".pytest_cache", ".ruff_cache", "*.pyc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built offline from a copy of the checkout (the checkout itself is left alone)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = root / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
                           cwd=source, capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = out.glob("mmrobust-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def test_mmrobust_is_the_only_top_level_package(wheel):
    names = wheel.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"mmrobust"}
    stray = [n for n in names if n.endswith(".py") and not n.startswith("mmrobust/")]
    assert stray == []
    assert "defenses/__init__.py" not in names and "attacks/__init__.py" not in names


def test_contributions_and_data_files_are_inside(wheel):
    names = set(wheel.namelist())
    for required in ("mmrobust/defenses/__init__.py", "mmrobust/defenses/none.py",
                     "mmrobust/attacks/__init__.py", "mmrobust/attacks/pgd.py",
                     "mmrobust/datasets/ntu60_missing_skeletons.txt", "mmrobust/py.typed",
                     "mmrobust/backbones/i3d.py", "mmrobust/backbones/hcn.py"):
        assert required in names, required
    assert wheel.read("mmrobust/datasets/ntu60_missing_skeletons.txt").strip()


def test_every_source_module_is_shipped(wheel):
    names = set(wheel.namelist())
    expected = {f"mmrobust/{p.relative_to(REPO / 'mmrobust').as_posix()}" for p in (REPO / "mmrobust").rglob("*.py")
                if "__pycache__" not in p.parts}
    for folder in ("defenses", "attacks"):
        expected |= {f"mmrobust/{folder}/{p.name}" for p in (REPO / folder).glob("*.py")}
    assert expected - names == set()


def test_dependencies_leave_out_torchvision_and_torchattacks(wheel):
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    names = {r.split(";")[0].strip().split()[0].split("[")[0] for r in requires}
    names = {n.split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].lower() for n in names}
    assert "torch" in names
    assert "torchvision" not in names
    assert "torchattacks" not in names


def test_console_script_is_declared(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(name).decode()
    assert "[console_scripts]" in text and "mmrobust = mmrobust.cli:main" in text


@pytest.mark.parametrize("folder", ["defenses", "attacks"])
def test_contribution_packages_refuse_a_non_canonical_name(folder):
    spec = importlib.util.spec_from_file_location(folder, REPO / folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=f"mmrobust.{folder}"):
        spec.loader.exec_module(module)
    assert folder not in sys.modules


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_setup_reads_clean(tmp_path):
    """`make setup` into a fresh venv prints no ERROR line (pip's report of torchattacks' undeclared
    requirements) and no setuptools deprecation (the license table)."""
    venv = tmp_path / "venv"
    setup = subprocess.run(["make", "--no-print-directory", "setup", f"VENV={venv}", f"PYTHON={sys.executable}"],
                           cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    output = setup.stdout + setup.stderr
    assert setup.returncode == 0, output[-3000:]
    assert not [line for line in output.splitlines() if line.lstrip().startswith("ERROR")], output[-3000:]
    assert "deprecated" not in output.lower(), output[-3000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import mmrobust, torchattacks, pyautoattack"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert installed.returncode == 0, installed.stderr
