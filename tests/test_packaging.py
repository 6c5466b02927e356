"""#14: the wheel carries the example dataset, the built-in presets and the logo (the repository keeps
them in its top-level assets/ and presets/; setup.py copies them into lora_gui/_bundled/), and the
installed package finds them from any folder, with no checkout beside it.

The wheel is built as ``python -m build`` builds it (an sdist of a clean copy of the repository, then
the wheel from that sdist, so MANIFEST.in is checked too), with this environment's setuptools (no build
isolation: nothing is downloaded), and installed with ``--no-deps --target`` into a folder that is put first on PYTHONPATH; its
dependencies (torch, timm ...) come from this environment. The full check in a clean venv
(``pip install`` of the wheel with its dependencies, then ``lora-gui train --data example``) is in
the README's "Install" section and was run by hand: it takes minutes of installing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)


def _shipped() -> list[str]:
    """Every file that must be in the wheel, as its path inside lora_gui/_bundled/."""
    files = [REPO / "assets" / "logo.svg", *sorted((REPO / "assets" / "example").rglob("*.png")),
             *sorted((REPO / "presets").glob("*.json"))]
    return [f.relative_to(REPO).as_posix() for f in files]


# what a fresh clone does not have: a stale build/ would hand its old files to the new wheel
NOT_IN_A_CLONE = shutil.ignore_patterns("build", "dist", "*.egg-info", ".venv", ".git", "__pycache__",
                                        ".pytest_cache", "runs", ".data", "test-artifacts", "screenshots")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel as `python -m build` makes it: an sdist of a clean copy, then a wheel from the sdist."""
    base = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, base / "src", ignore=NOT_IN_A_CLONE)
    sdist = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                            "print(b.build_sdist(sys.argv[1]))", str(base / "sdist")],
                           cwd=base / "src", check=True, timeout=600, capture_output=True, text=True)
    with tarfile.open(base / "sdist" / sdist.stdout.split()[-1]) as tar:
        tar.extractall(base / "unpacked", filter="data")
    unpacked = next((base / "unpacked").iterdir())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(base / "dist"), str(unpacked)], check=True, timeout=600, cwd=base)
    return next((base / "dist").glob("lora_gui-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600, cwd=site)
    return site


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_the_example_the_presets_and_the_logo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = _shipped()
    assert len(shipped) > 100   # 120 example images, 3 presets, the logo
    missing = [f for f in shipped if f"lora_gui/_bundled/{f}" not in names]
    assert not missing, f"not in the wheel: {missing[:5]}"
    # the rest of the repository's folders stay out of it
    assert not [n for n in names if "screenshots" in n or n.startswith(("tests/", "benchmarks/", "assets/"))]


def test_the_installed_package_finds_them_outside_the_checkout(installed, tmp_path):
    where = _run(installed, tmp_path, "-c", "import lora_gui; from lora_gui.data import bundled as b; "
                 "print(lora_gui.__file__); print(b.example_dataset_path()); print(b.builtin_preset('quick-cpu-demo')); "
                 "print(b.logo_path())")
    assert where.returncode == 0, where.stderr[-2000:]
    package, example, preset, logo = where.stdout.split()
    assert Path(package).is_relative_to(installed)   # the installed copy, not this checkout
    for path in (example, preset, logo):
        assert Path(path).is_relative_to(installed / "lora_gui" / "_bundled") and Path(path).exists(), path
    # the CLI's `example` is the bundled dataset, from a folder that has no assets/ in it
    check = _run(installed, tmp_path, "-m", "lora_gui", "check-data", "example", "--workspace", str(tmp_path / "ws"))
    assert check.returncode == 0, check.stderr[-2000:]
    assert "120 images used in 4 classes" in check.stdout
