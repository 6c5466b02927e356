"""Shared test fixtures."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, size: tuple[int, int], key: str | None = None) -> None:
    # pixels seeded from the path inside the fixture's folder (never from
    # tmp_path, which differs between machines and runs): reruns and other
    # machines write identical files, while two paths never produce
    # byte-identical (duplicate) images by accident
    rng = np.random.default_rng(zlib.crc32((key or path.as_posix()).encode()))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


COLOURS = [(220, 40, 40), (40, 190, 60), (50, 60, 220)]


def write_colour_folder(root: Path, per_class: int = 8, side: int = 40, classes: int = 3) -> Path:
    """``classes`` folders of noisy solid-colour PNGs (distinct per class, never duplicates)."""
    for c in range(classes):
        for i in range(per_class):
            rng = np.random.default_rng(1000 * c + i)
            base = np.array(COLOURS[c % len(COLOURS)])[None, None, :]
            if c >= len(COLOURS):  # extra classes: stripes
                base = np.where((np.arange(side) // 4 % 2)[:, None, None] == 1, base, 255 - base)
            pixels = np.clip(base + rng.integers(-40, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            path = root / f"class_{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@pytest.fixture
def make_image_folder(tmp_path):
    """Write small real images: ``make_image_folder({"cat/1.png": (16, 16)}, "set")``.

    ``layout`` maps relative paths to sizes (None: 16x16), or is a list of
    relative paths; the format follows the extension. Returns the folder.
    """
    def make(layout, name: str = "images") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        items = layout.items() if isinstance(layout, dict) else ((p, None) for p in layout)
        for rel, size in items:
            _write_image(root / rel, size or (16, 16), key=f"{name}/{rel}")
        return root
    return make


# --------------------------------------------------------------------------- #
# A real launched app and a real browser, for the app-level tests
# --------------------------------------------------------------------------- #
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"


def offline_env() -> dict:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(workspace: Path, env: dict | None = None, stop_wait: float = 10, args=(), cwd: Path | None = None):
    """``python app.py`` (plus ``args``) in a subprocess on a free port, until the block ends; yields its url."""
    port = _free_port()
    log = open(workspace.parent / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--workspace",
                             str(workspace), *args], cwd=cwd or workspace, env=env or offline_env(), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            raise RuntimeError("the app did not start:\n" + Path(log.name).read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(stop_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def torchrun_rank(torchrun_pid: int, rank: str):
    """The worker process of ``rank`` under a running torchrun (a psutil.Process), or None."""
    import psutil
    for child in psutil.Process(torchrun_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "lora_gui" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app on a free port for the session; yields (url, workspace)."""
    workspace = tmp_path_factory.mktemp("app-workspace")
    with launched_app(workspace) as url:
        yield url, workspace


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install -y chromium (.ci/run does this)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    yield pg
    context.close()
