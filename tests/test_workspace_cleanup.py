"""Old staging folders go, folders a run uses and everything else stay."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lora_gui.store.cleanup import clean, stale_folders

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400


def _folder(path: Path, age_days: float, files=("a/1.png",)) -> Path:
    for rel in files:
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 1000)
    when = time.time() - age_days * DAY
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)
    return path


def _workspace(tmp_path):
    ws = tmp_path / "ws"
    used = _folder(ws / "uploads" / "used", 30)
    old = _folder(ws / "uploads" / "old", 30)
    fresh = _folder(ws / "uploads" / "fresh", 1)
    archive = _folder(ws / "datasets" / "pets-1a2b", 30)
    classes = _folder(ws / "classes" / "session1", 30)
    touched = _folder(ws / "classes" / "session2", 30)
    (touched / "a" / "new.png").write_bytes(b"y")           # one new file: the folder is in use
    run = ws / "run-1"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "split.json").write_text(json.dumps({"train": [[str(used / "a" / "1.png"), 0]], "val": []}))
    outside = _folder(tmp_path / "elsewhere", 30)
    (ws / "uploads" / "link").symlink_to(outside, target_is_directory=True)
    return ws, dict(used=used, old=old, fresh=fresh, archive=archive, classes=classes, touched=touched,
                    outside=outside, run=run)


def test_only_old_unused_staging_folders_are_removed(tmp_path):
    ws, f = _workspace(tmp_path)
    assert sorted(stale_folders(ws, 7)) == sorted([f["archive"], f["classes"], f["old"]])
    removed, freed = clean(ws, 7)
    assert sorted(removed) == sorted([f["archive"], f["classes"], f["old"]]) and freed == 3000
    for keep in ("used", "fresh", "touched", "outside", "run"):
        assert f[keep].exists(), keep
    assert (ws / "uploads" / "link").is_symlink() and (f["outside"] / "a" / "1.png").exists()
    assert clean(ws, 0) == ([], 0) and clean(tmp_path / "missing", 7) == ([], 0)


def test_the_app_cleans_at_start_and_says_so(tmp_path):
    ws, f = _workspace(tmp_path)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(ws), "--port", "7931"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # the clean-up happens before the server starts
            lines.append(line)
            if "Running on" in line or "removed" in line:
                break
    finally:
        proc.kill()
        proc.wait(30)
    assert any("removed 3 old upload/staging folder(s)" in line for line in lines), "".join(lines)
    assert not f["old"].exists() and f["used"].exists()


def test_weights_a_run_starts_from_stay_other_builds_go(tmp_path):
    """weights/, uploaded_adapters/ and exports/ are staging areas too; a run's starting weights
    file (config.json names it; --resume reads it again) keeps its folder."""
    from lora_gui.config import RunConfig
    ws = tmp_path / "ws"
    needed = _folder(ws / "weights" / "s1-ab12", 30, files=("resnet.safetensors",))
    unused = _folder(ws / "weights" / "s2-cd34", 30, files=("resnet.safetensors",))
    zips = _folder(ws / "exports" / "session9", 30, files=("run-peft.zip",))
    demo = _folder(ws / "exports" / "run-1-demo-app", 30, files=("app.py",))
    adapter = _folder(ws / "uploaded_adapters" / "s3-ef56", 30, files=("adapter.safetensors",))
    new_zip = _folder(ws / "exports" / "session10", 1, files=("run-onnx.zip",))
    cfg = RunConfig().to_dict()
    cfg["model"].update(weights="file", weights_file=str(needed / "resnet.safetensors"))
    run = ws / "run-2"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": cfg, "classes": ["a", "b"], "layers": [],
                                                 "data_config": {}}))
    removed, _ = clean(ws, 7)
    assert sorted(removed) == sorted([unused, zips, demo, adapter])
    assert needed.exists() and new_zip.exists() and run.exists()
