"""Demo mode (#16): live stream answers, heatmaps that follow the object, temperature scaling and
the "not sure" curve, copy-on-fix and the retrain, and the exported demo app in a venv without
lora_gui. One model (bundled EfficientNet-Lite0 at 64 px, trained on 'bright square in corner X'
with a few unclear images, as real folders have) serves every test of the module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, _free_port, offline_env
from demo_helpers import CORNERS, square_image, train_squares, write_squares
from demo_stream_client import stream_frames
from PIL import Image

from lora_gui.inference.calibration import (
    calibrate,
    coverage_curve,
    nll,
    validation_logits,
)
from lora_gui.inference.explain import explain, heatmaps_for
from lora_gui.inference.predict import load_adapter, predict
from lora_gui.store.calibration_file import read_calibration

VENV = Path(os.environ.get("LORA_GUI_DEMO_VENV", Path.home() / ".cache" / "lora_gui-tests" / "demo-app-venv"))


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """(workspace, data folder, run folder): a messy real-looking folder outside /tmp when possible."""
    base = Path(tmp_path_factory.mktemp("demo"))
    # a few unclear photos among the clear ones, as in real folders: the model is then sometimes
    # unsure and wrong, which is what calibration needs to learn from
    data = write_squares(base / "Pictures" / "squares", hard=4)
    (data / "notes.txt").write_text("not an image")
    workspace = base / "ws"
    run = train_squares(workspace, data)
    return workspace, data, run


@pytest.fixture(scope="module")
def loaded(squares):
    return load_adapter(squares[2])


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots for p in r.rglob("*")}


# ---------------------------------------------------------------- calibration

def test_temperature_scaling_lowers_the_validation_nll_and_the_curve_is_monotone(squares, loaded):
    run = squares[2]
    logits, labels = validation_logits(loaded, run)
    assert 0 < int((logits.argmax(-1) != labels).sum()) < len(labels)   # some unclear ones are wrong
    cal = calibrate(loaded, run)
    assert cal.nll_before == pytest.approx(nll(logits, labels))
    assert cal.nll_after < cal.nll_before                      # the fitted T is more honest
    assert cal.temperature != 1.0
    coverage = [r["coverage"] for r in cal.curve]
    assert coverage == sorted(coverage, reverse=True) and coverage[0] == 1.0
    # the accuracy of the kept answers rises with the threshold. Not a theorem: raising it can drop
    # a right answer and keep a wrong one, so a step may dip by at most one kept answer's worth
    # (measured here: 83% at 0 -> 95.2, 95.0, 94.4% -> 100% from 0.8)
    kept = [(r["accuracy"], r["coverage"] * len(labels)) for r in cal.curve if r["accuracy"] is not None]
    for (a, _), (b, m) in zip(kept, kept[1:]):
        assert b >= a - 1 / m - 1e-6, cal.curve
    # and no threshold does worse than keeping everything, by more than that one answer (on a CPU without
    # bf16 units, fp32 training: 87.5 % at 0, 20 of 23 = 87.0 % at 0.5 after one right answer dropped)
    assert kept[-1][0] > kept[0][0] and all(acc >= kept[0][0] - 1 / m - 1e-6 for acc, m in kept), cal.curve
    # saved beside the adapter, and load_adapter/predict use it
    saved = read_calibration(run / "best")
    assert saved.temperature == pytest.approx(cal.temperature) and saved.threshold == cal.threshold
    again = load_adapter(run)
    assert again.calibration.temperature == pytest.approx(cal.temperature)
    img = Image.fromarray(square_image("top_left", 4242))
    p_cal = predict(again, [img], topk=1)[0][0][1]
    import torch
    x = again.transform(img).unsqueeze(0)
    with torch.no_grad():
        p_raw = float(again.model(x).softmax(-1).max())
    assert p_cal != pytest.approx(p_raw, abs=1e-6)


def test_coverage_curve_counts_kept_answers():
    import torch
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    rows = {r["threshold"]: r for r in coverage_curve(probs, labels, [0.0, 0.6, 0.8, 0.95])}
    assert rows[0.0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.75}
    assert rows[0.6]["coverage"] == 0.75 and rows[0.6]["accuracy"] == pytest.approx(2 / 3)
    assert rows[0.8] == {"threshold": 0.8, "coverage": 0.25, "accuracy": 1.0}
    assert rows[0.95]["coverage"] == 0.0 and rows[0.95]["accuracy"] is None


# ---------------------------------------------------------------- heatmaps

def _quadrant_share(cam: np.ndarray, corner: str) -> float:
    h, w = cam.shape
    rows = slice(0, h // 2) if corner.startswith("top") else slice(h // 2, h)
    cols = slice(0, w // 2) if corner.endswith("left") else slice(w // 2, w)
    return float(cam[rows, cols].sum() / max(cam.sum(), 1e-9))


def test_heatmap_follows_the_square(loaded):
    for corner in CORNERS:
        img = square_image(corner, 777)
        hm = explain(loaded, img)
        assert hm.overlay.size == (img.shape[1], img.shape[0]) and hm.cam.shape == img.shape[:2]
        assert hm.target == corner
        shares = {c: _quadrant_share(hm.cam, c) for c in CORNERS}
        assert max(shares, key=shares.get) == corner, (corner, shares)
    # any class can be asked for; a non-square input keeps its own size
    wide = np.concatenate([square_image("top_left", 1), square_image("top_right", 2)], axis=1)
    hm = explain(loaded, wide, target="bottom_left")
    assert hm.target == "bottom_left" and hm.overlay.size == (wide.shape[1], wide.shape[0])


def test_heatmaps_for_a_gallery_skip_unreadable_files(loaded, tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(square_image("top_right", 5)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = heatmaps_for([good, bad], loaded, targets=["top_left", None])
    assert len(out) == 1 and "top_left" in out[0][1] and isinstance(out[0][0], Image.Image)


def test_misclassified_gallery_shows_where_it_looked(loaded, tmp_path, monkeypatch):
    """The Test tab's gallery of mistakes: each with the heatmap for the class it wrongly chose (the
    first HEATMAP_MAX of them), plain thumbnails after that; an unreadable file is left out."""
    from lora_gui.ui.tabs import test_tab
    mistakes = []
    for i, corner in enumerate(CORNERS):
        path = tmp_path / f"{corner}.png"
        Image.fromarray(square_image(corner, 900 + i)).save(path)
        mistakes.append((str(path), corner, CORNERS[(i + 1) % len(CORNERS)], 0.6))   # "mistaken" for the next
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    mistakes.append((str(broken), "top_left", "top_right", 0.5))
    monkeypatch.setattr(test_tab, "HEATMAP_MAX", 2)
    seen = []
    items = test_tab.mistakes_gallery(loaded, mistakes, lambda done, total: seen.append((done, total)))
    assert len(items) == len(CORNERS) and seen[-1] == (len(mistakes), len(mistakes))
    for n, ((image, caption), (path, true, pred, _)) in enumerate(zip(items, mistakes)):
        assert caption.startswith(f"{true} → {pred} 60%")
        plain = np.asarray(test_tab._thumb(path), dtype=np.float32)
        assert image.size == (plain.shape[1], plain.shape[0])
        changed = float(np.abs(np.asarray(image, dtype=np.float32) - plain).mean())
        if n < 2:   # the heat is drawn over the image
            assert f"heat: where it saw {pred}" in caption and changed > 5, (caption, changed)
        else:
            assert "heat" not in caption and changed == 0.0


# ---------------------------------------------------------------- fix it on the spot

def test_thats_wrong_writes_one_file_in_the_class_folder_and_retrain_uses_it(squares, loaded):
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs.demo_tab import on_fix
    workspace, data, run = squares
    before = _tree(workspace, data)
    frame = square_image("bottom_right", 31337)
    session = Session()
    session.set_model(str(run))
    message = on_fix(frame, "top_left", session, workspace)
    added = _tree(workspace, data) - before
    files = [Path(p) for p in added if Path(p).is_file()]
    assert len(files) == 1 and files[0].parent == workspace / "fixes" / run.name / "top_left", added
    assert {Path(p) for p in added if Path(p).is_dir()} <= {workspace / "fixes", workspace / "fixes" / run.name,
                                                           files[0].parent}   # only its new folders
    assert _tree(data) == {p for p in before if p.startswith(str(data))}   # the user's folder is untouched
    assert "top_left" in message
    on_fix(frame, "top_left", session, workspace)                           # same picture again: nothing new
    assert _tree(workspace, data) - before == added

    from lora_gui.jobs.device_queue import DeviceQueue
    from lora_gui.jobs.retrain_job import retrain_with_fixes
    job = retrain_with_fixes(run, workspace, epochs=1, queue=DeviceQueue(), interactive=False)
    assert job.wait(240) and job.status == "finished", job.snapshot().message
    split = job.run.read_json(job.run.split_file)
    assert str(files[0].resolve()) in [p for p, _ in split["train"]]
    assert split["val"] == job.run.read_json(run / "split.json")["val"]    # comparable validation
    assert "continuing from" in job.run.log_file.read_text()
    assert (job.run.best_dir / "adapter.safetensors").is_file()

    # the Retrain button: the new run is its starter's (their Runs tab lists it, nobody else's does),
    # and a second press while it runs is refused instead of queueing another
    import gradio as gr

    from lora_gui.jobs.registry import get_job, owner_of
    from lora_gui.ui.access import AccessPolicy
    from lora_gui.ui.tabs.demo_tab import on_retrain
    session.owner_id, session.tab_id = "browser:retrainer-0123456789", "tab-1"
    job_id, text, _ = on_retrain(None, session, workspace)
    button_job = get_job(job_id)
    try:
        assert owner_of(button_job) == ("browser:retrainer-0123456789", "tab-1") and "Retraining from" in text
        multi = AccessPolicy(multi_user=True)
        assert multi.sees_run(button_job.run.path, "browser:retrainer-0123456789")
        assert not multi.sees_run(button_job.run.path, "browser:someone-else-0123")
        with pytest.raises(gr.Error, match="still running: wait for it to finish"):
            on_retrain(job_id, session, workspace)
    finally:
        button_job.stop()
        button_job.wait(120)


def test_share_builds_the_demo_app_per_session_and_hands_out_a_copy(squares, monkeypatch, tmp_path):
    """The Demo tab's "Share" button: each page builds into a folder of its own under the workspace's
    exports, and the download is a copy in Gradio's cache (the workspace is not served: a workspace
    outside the working folder and the temp folder made Gradio refuse the path, a raw error)."""
    import zipfile

    from lora_gui.store.demo_app_format import DEMO_FILES
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs.demo_tab import on_share
    workspace, _, run = squares
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    one, two = Session(), Session()
    for s in (one, two):
        s.set_model(str(run))
    got_one, text = on_share(one, workspace, progress=lambda *a, **k: None)
    got_two, _ = on_share(two, workspace, progress=lambda *a, **k: None)
    assert Path(got_one).is_relative_to(cache) and not Path(got_one).is_relative_to(workspace)
    assert set(zipfile.ZipFile(got_one).namelist()) == set(DEMO_FILES)
    built = {p.relative_to(workspace / "exports").parts[0] for p in (workspace / "exports").rglob("*.zip")}
    assert {one.id, two.id} <= built, built
    assert not list((workspace / "exports").rglob("*.partial")) and "pip install -r requirements.txt" in text


# ---------------------------------------------------------------- a served demo

@pytest.fixture(scope="module")
def demo_server(squares):
    workspace, _, run = squares
    port = _free_port()
    log = open(workspace.parent / f"demo-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "demo_server.py"), str(port), str(workspace),
                             str(run)], env=offline_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_for(url, proc, log.name)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


def _wait_for(url: str, proc: subprocess.Popen, log: str, seconds: float = 180) -> None:
    import urllib.request
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start:\n" + Path(log).read_text()[-3000:])
        time.sleep(0.5)


def test_stream_frames_get_the_same_answer_as_predict(demo_server, squares):
    run = squares[2]
    frames = [square_image(c, 900 + i) for i, c in enumerate(CORNERS)] + [square_image("top_left", 950)]
    answers = stream_frames(demo_server, "demo_frame", frames, extra_inputs=1)
    assert len(answers) == len(frames)
    reference = load_adapter(run)   # with the run's calibration.json, as the server loads it
    for frame, (label, sentence, _) in zip(frames, answers):
        top = predict(reference, [Image.fromarray(frame)], topk=5)[0]
        assert label["label"] == top[0][0], (label, top)
        got = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert got[top[0][0]] == pytest.approx(top[0][1], abs=1e-4)
        assert top[0][0] in sentence


def test_exported_demo_app_runs_without_lora_gui(squares, loaded, tmp_path):
    from lora_gui.store.demo_app_format import DEMO_FILES, write_demo_app
    run = squares[2]
    out = write_demo_app(run, tmp_path / "Demo App", zip_path=tmp_path / "demo.zip")
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "lora_gui" not in (out / "requirements.txt").read_text() and "grad-cam" in (out / "requirements.txt").read_text()
    import zipfile
    assert sorted(zipfile.ZipFile(tmp_path / "demo.zip").namelist()) == sorted(DEMO_FILES)

    python = _demo_venv(out / "requirements.txt")
    probe = subprocess.run([str(python), "-c", "import lora_gui"], capture_output=True, text=True, cwd=out)
    assert probe.returncode != 0 and "No module named 'lora_gui'" in probe.stderr
    port = _free_port()
    env = {k: v for k, v in offline_env().items() if k != "PYTHONPATH"}
    env.update(PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    log = open(tmp_path / "demo-app.log", "w")
    proc = subprocess.Popen([str(python), "app.py"], cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url, proc, log.name)
        from gradio_client import Client, handle_file
        client = Client(url, verbose=False)
        reference = load_adapter(run)
        for corner in ("bottom_left", "top_right"):
            path = tmp_path / f"{corner}.png"
            Image.fromarray(square_image(corner, 4040)).save(path)
            label, sentence = client.predict(handle_file(str(path)), api_name="/predict")
            top = predict(reference, [path], topk=5)[0]
            assert label["label"] == top[0][0]
            got = {c["label"]: c["confidence"] for c in label["confidences"]}
            for name, p in top:
                assert got[name] == pytest.approx(p, abs=1e-4)
            assert top[0][0] in sentence
        heat = client.predict(handle_file(str(path)), "", api_name="/explain")
        assert Image.open(heat).size == (96, 96)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _demo_venv(requirements: Path) -> Path:
    """A plain venv with the demo app's requirements (no lora_gui), made once and kept in VENV:
    a fresh install took 511 s here (torch's CUDA wheels are large)."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    if shutil.which("python3") is None:
        pytest.skip("no python3 to create a venv for the demo app")
    made = subprocess.run(["python3", "-m", "venv", str(VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"python3 -m venv is unavailable here ({made.stderr.strip()[:200]})")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                         capture_output=True, text=True, timeout=1800)
    if pip.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        pytest.fail(f"pip could not install the demo app's requirements:\n{pip.stderr[-2000:]}")
    return python


def _capture(fn, errors):
    try:
        fn()
    except BaseException as exc:   # re-raised in the test's own thread
        errors.append(exc)


def test_live_webcam_in_a_real_browser(demo_server, tmp_path):
    """Chromium's fake webcam plays a still video of a square in the bottom-right corner: the live
    answer names that corner (not mirrored), and 'Where does it look?' draws a heatmap of the frame."""
    from conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
    from demo_helpers import write_y4m
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install -y chromium")
    still = np.asarray(Image.fromarray(square_image("bottom_right", 12)).resize((240, 240), Image.NEAREST))
    video = write_y4m(tmp_path / "square.y4m", still)
    ARTIFACTS.mkdir(exist_ok=True)
    # in a thread of its own: the session's browser fixture (conftest) keeps Playwright's event loop
    # running in this one, and a second sync_playwright() there refuses to start
    def drive():
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + [
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={video}"])
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
                page.goto(demo_server)
                page.get_by_text("Click to Access Webcam").click()
                page.locator("#lg-demo-cam button", has_text="Record").click()
                verdict = page.locator("#lg-demo-verdict")
                deadline = time.time() + 90
                while "bottom_right" not in verdict.inner_text() and time.time() < deadline:
                    time.sleep(0.5)
                assert "bottom_right" in verdict.inner_text(), verdict.inner_text()
                page.screenshot(path=str(ARTIFACTS / "demo-live-webcam.png"), full_page=True)
                page.locator("#lg-demo-look").click()
                page.locator("#lg-demo-heat img").wait_for(timeout=90000)
                page.get_by_text("Where it looks for").wait_for(timeout=30000)
                page.screenshot(path=str(ARTIFACTS / "demo-live-heatmap.png"), full_page=True)
            finally:
                browser.close()

    errors = []
    worker = threading.Thread(target=lambda: _capture(drive, errors))
    worker.start()
    worker.join(400)
    if errors:
        raise errors[0]
    assert not worker.is_alive(), "the browser check did not finish"


def test_an_open_live_stream_does_not_block_another_session(demo_server):
    """Session A keeps its webcam stream open (no more frames, not closed); session B's stream
    still gets its answers meanwhile (each stream holds a slot; LIVE_CONCURRENCY > 1)."""
    import json
    import threading
    import uuid

    import httpx
    from demo_stream_client import fn_index, frame_payload
    index, trigger = fn_index(demo_server, "demo_frame")
    a_answered, b_done = threading.Event(), threading.Event()
    a_session = uuid.uuid4().hex[:10]
    state = {}

    def session_a():
        with httpx.Client(timeout=120) as client:
            state["event"] = client.post(f"{demo_server}/gradio_api/queue/join", json={
                "data": [frame_payload(square_image("top_left", 1)), None], "fn_index": index,
                "session_hash": a_session, "trigger_id": trigger}).json()["event_id"]
            with client.stream("GET", f"{demo_server}/gradio_api/queue/data",
                               params={"session_hash": a_session}) as sse:
                for line in sse.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_streaming":
                        a_answered.set()
                        # A's stream stays open while B streams; if B is queued behind A, A gives up
                        state["a_gave_up"] = not b_done.wait(60)
                        client.post(f"{demo_server}/gradio_api/stream/{state['event']}/close")
                        break

    a = threading.Thread(target=session_a, daemon=True)
    a.start()
    assert a_answered.wait(120), "session A's first frame was never answered"
    try:
        answers = stream_frames(demo_server, "demo_frame", [square_image("bottom_left", 2),
                                                            square_image("top_right", 3)], extra_inputs=1, timeout=120)
    finally:
        b_done.set()
        a.join(30)
    assert not state.get("a_gave_up"), "session B was only answered after session A closed its stream"
    assert len(answers) == 2 and all(ans[0]["label"] in CORNERS for ans in answers)


def test_heatmap_for_a_vit_token_model(tmp_path):
    """ViT-style models: the last block's tokens, class token dropped, reshaped to the patch grid."""
    from test_export import make_adapter

    from lora_gui.inference.explain import _cam_model
    vit = load_adapter(make_adapter(tmp_path, "vit_tiny_patch16_224", classes=3).run_dir)
    img = np.concatenate([square_image("top_left", 1), square_image("top_right", 2)], axis=0)   # 192 x 96
    hm = explain(vit, img, target="class_2")
    assert hm.target == "class_2" and hm.cam.shape == (192, 96) and hm.overlay.size == (96, 192)
    assert hm.cam.max() > 0 and _cam_model(vit).reshape_transform is not None
