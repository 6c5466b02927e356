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
                                  ["export", "--help"], ["predict", "--help"], ["audit", "--help"], ["app", "--help"]])
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


LAYOUT = """
import json, sys
from lora_gui.ui.app import build_app
demo = build_app(sys.argv[1])
props = [c["props"] for c in demo.config["components"]]
backbone = next(p for p in props if p.get("label") == "Backbone")
offline = next(p for p in props if p.get("elem_id") == "lg-offline-models")
print(json.dumps({"heavy": sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules),
                  "choices": [c[0] for c in backbone["choices"]], "offline": offline["value"]}))
"""


def test_the_app_is_laid_out_without_the_engine_and_still_marks_offline_backbones(tmp_path):
    """The page is built without torch or timm (issue #15.3), yet the backbone list says which models
    work offline: from the hub ids a previous start kept in the workspace, checked against the
    Hugging Face cache (here one holding resnet18's weights) without timm."""
    import json

    from lora_gui.ui.catalog_info import CatalogInfo
    workspace, hf_cache = tmp_path / "ws", tmp_path / "hf"
    CatalogInfo(workspace).fill_hub_ids()        # what the first start's background loading leaves behind
    hub_id = CatalogInfo(workspace).info["resnet18"]["hub_id"]
    snapshot = hf_cache / ("models--" + hub_id.replace("/", "--")) / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", LAYOUT, str(workspace)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], f"laying out the page imported {out['heavy']}"
    marks = {c.split()[0]: c for c in out["choices"]}
    assert "✓ offline" in marks["resnet18"] and "✓ offline" in marks["tf_efficientnet_lite0"]
    assert "needs internet" in marks["vit_tiny_patch16_224"]
    assert "`resnet18`" in out["offline"]


def test_the_app_prints_where_it_really_listens_and_answers_engine_clicks(tmp_path):
    """#15.3: with the asked-for port taken, the one "Open …" line names the port the app got; the page
    answers there, and a click that needs the engine (the model search, timm) is answered too."""
    import re
    import socket
    import threading
    import urllib.request

    sys.path.insert(0, str(REPO / "scripts"))
    from measure_startup import app_env, first_engine_answer
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--workspace",
                                 str(tmp_path / "ws")], env=app_env(REPO), cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            url = None
            for _ in range(600):
                url = next((m[1] for line in list(lines) if (m := re.match(r"Open (http://\S+) in your browser$",
                                                                            line.strip()))), None)
                if url or proc.poll() is not None:
                    break
                reader.join(0.5)
            assert url, "no 'Open … in your browser' line:\n" + "".join(lines)[-3000:]
            assert url == f"http://127.0.0.1:{url.rsplit(':', 1)[1]}" and not url.endswith(f":{port}")
            assert port < int(url.rsplit(":", 1)[1]) <= port + 10, "the next free port, one a person can guess"
            assert f"port {port} is taken" in "".join(lines)
            with urllib.request.urlopen(url, timeout=30) as r:
                assert r.status == 200
            first_engine_answer(url)
            assert sum("in your browser" in line for line in lines) == 1   # one line, not Gradio's own as well
            assert "Running on local URL" not in "".join(lines)
        finally:
            proc.terminate()
            proc.wait(30)
