"""The quick commands never load the engine (issue #15.3).

`--help`, `train --help`, `check-data`, `runs` and `models --help` run in a fresh interpreter under
``-X importtime``, which names every module the process imported; torch, timm (and torchvision
under it) and gradio must not be among them. This checks the cause of a slow start rather than
a time, which a busy machine would make flaky; benchmarks/startup.py measures the seconds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "timm", "torchvision", "gradio"}


def imported_modules(args: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    """Top-level names of every module ``python -X importtime -m lora_gui ARGS`` imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lora_gui", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2}
    return names, proc


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """Two classes of the bundled example's real photos (Fashion-MNIST), five each."""
    root = tmp_path_factory.mktemp("small")
    for cls in ("bag", "sneaker"):
        (root / cls).mkdir()
        for src in sorted((REPO / "assets" / "example" / cls).iterdir())[:5]:
            shutil.copy(src, root / cls / src.name)
    return root


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["models", "--help"], ["runs"],
                                  ["export", "--help"], ["predict", "--help"], ["audit", "--help"]])
def test_quick_commands_do_not_import_the_engine(args, tmp_path):
    names, proc = imported_modules(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lora_gui" in names, "importtime output not parsed: the check would pass vacuously"
    assert not names & HEAVY, f"`lora_gui {' '.join(args)}` imported {sorted(names & HEAVY)}"


def test_check_data_validates_real_images_without_the_engine(small_folder, tmp_path):
    names, proc = imported_modules(["check-data", str(small_folder), "--workspace", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10 images" in proc.stdout and "2 classes" in proc.stdout, proc.stdout
    assert "PIL" in names   # the images really were decoded
    assert not names & HEAVY, f"check-data imported {sorted(names & HEAVY)}"


def test_help_still_lists_every_export_format():
    """The format names moved to a torch-free module; the writers and the CLI agree with it."""
    from lora_gui.cli import parser
    from lora_gui.store.export_formats import FORMATS
    from lora_gui.store.exports import WRITERS
    assert tuple(WRITERS) == FORMATS
    text = parser().format_help()
    assert all(fmt in text for fmt in FORMATS)
