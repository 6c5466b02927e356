"""Screenshots of every tab in its empty, working, finished and error states (issue #12).

    python scripts/take_screenshots.py OUT_DIR [--readme]

Launches the app (tests/conftest.launched_app) on a fresh workspace, drives it with Debian chromium,
and with --readme also refreshes assets/screenshots/{data,train,test,export}.png.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import CHROMIUM, CHROMIUM_ARGS, launched_app  # noqa: E402

EXAMPLE = REPO / "assets" / "example"


def main(out: Path, readme: bool) -> None:
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix="lg-shots-")) / "ws"
    workspace.mkdir()
    with launched_app(workspace) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def shot(name, settle=1.0):
            time.sleep(settle)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print("shot", name, flush=True)

        def tab(name):
            page.get_by_role("tab", name=name).click()
            time.sleep(0.8)

        def step(name, fn):
            try:
                fn()
            except Exception as exc:   # one state failing must not lose the others
                print(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
                shot(f"{name}-FAILED")

        page.goto(url, wait_until="load")
        page.wait_for_selector("#lg-use-example", timeout=60_000)
        shot("data-1-empty")

        def data_error():
            page.get_by_role("tab", name="Path on this computer").click()
            page.get_by_label("Folder, archive or CSV path").fill("/root/Pictures/<no such>/folder")
            page.get_by_role("button", name="Load this path").click()
            page.wait_for_selector(".toast-body", timeout=30_000)
            shot("data-4-error", 0.5)
        step("data-error", data_error)

        def model_states():
            tab("2 · Model & LoRA")
            page.wait_for_function("document.querySelector('#lg-trainable').innerText.includes('trainable')",
                                   timeout=60_000)
            shot("model-1-empty")
            box = page.locator("input[aria-label='number input for Rank (r)']")
            box.fill("0")
            box.press("Enter")
            page.wait_for_function("document.querySelector('#lg-model-check').innerText.includes('rank')",
                                   timeout=30_000)
            shot("model-4-error-rank")
            box.fill("8")
            box.press("Enter")
        step("model", model_states)

        def train_error():
            tab("3 · Train")
            shot("train-1-empty")
            page.click("#lg-start")
            page.wait_for_selector(".toast-body", timeout=30_000)
            shot("train-4-error-no-data", 0.5)
        step("train-error", train_error)

        for name in ("4 · Test", "5 · Export", "Runs", "Presets"):
            tab(name)
            shot(f"{name.split(' ')[-1].lower()}-1-empty")

        def test_error():
            tab("4 · Test")
            page.set_input_files("#lg-test-image input[type=file]", str(EXAMPLE / "bag" / "00.png"))
            page.wait_for_selector(".toast-body", timeout=30_000)
            shot("test-4-error-no-model", 0.5)
        step("test-error", test_error)

        def export_error():
            tab("5 · Export")
            page.click("#lg-export-build")
            page.wait_for_selector(".toast-body", timeout=30_000)
            shot("export-4-error-no-run", 0.5)
        step("export-error", export_error)

        def data_done():
            tab("1 · Data")
            page.click("#lg-use-example")
            page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Ready')",
                                   timeout=60_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
            shot("data-3-loaded", 2)
        step("data-done", data_done)

        def train_run():
            tab("3 · Train")
            page.click("#lg-start")
            page.wait_for_function("() => { const g = document.querySelector('#lg-loss-plot .js-plotly-plot');"
                                   " return g && g.data && g.data[0].x.length >= 3; }", timeout=180_000)
            shot("train-2-working", 1.5)
            page.wait_for_function("['finished','failed','stopped'].includes(document.querySelector('#lg-progress')"
                                   ".dataset.status)", timeout=400_000)
            shot("train-3-finished", 2)
            page.locator("#lg-details").get_by_text("Show details").click()
            shot("train-3-finished-details", 1.5)
        step("train", train_run)

        def test_done():
            tab("4 · Test")
            page.set_input_files("#lg-test-image input[type=file]", str(EXAMPLE / "trouser" / "00.png"))
            page.wait_for_function("document.querySelector('#lg-test-label').innerText.includes('%')", timeout=60_000)
            shot("test-2-predicted")
            page.click("#lg-evaluate")
            page.wait_for_function("document.querySelector('#lg-eval-summary').innerText.includes('ccuracy')",
                                   timeout=120_000)
            shot("test-3-evaluated", 2)
        step("test", test_done)

        def export_done():
            tab("5 · Export")
            page.click("#lg-export-build")
            page.wait_for_selector("#lg-export-file a[href]", timeout=120_000)
            shot("export-3-built")
        step("export", export_done)

        def runs_done():
            tab("Runs")
            page.wait_for_selector("#lg-runs-table", state="visible", timeout=30_000)
            page.wait_for_function("document.querySelector('#lg-runs-table').innerText.includes('example')",
                                   timeout=30_000)
            page.locator("#lg-runs-compare input").click()
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Enter")
            page.wait_for_selector("#lg-runs-curves .js-plotly-plot", timeout=30_000)
            shot("runs-3-listed")
        step("runs", runs_done)

        def failed_run():
            tab("3 · Train")
            lr = page.get_by_label("Learning rate", exact=True)
            lr.fill("10")
            lr.press("Enter")
            page.click("#lg-start")
            page.wait_for_function("document.querySelector('#lg-progress').dataset.status !== 'finished'",
                                   timeout=60_000)
            page.wait_for_function("['finished','failed','stopped'].includes(document.querySelector('#lg-progress')"
                                   ".dataset.status)", timeout=400_000)
            shot("train-4-failed", 2)
        step("train-failed", failed_run)

        tab("Presets")
        shot("presets-3-default")
        browser.close()
    if readme:
        for name, shot_name in (("data", "data-3-loaded"), ("train", "train-3-finished"),
                                ("test", "test-3-evaluated"), ("export", "export-3-built")):
            src = out / f"{shot_name}.png"
            if src.is_file():
                shutil.copyfile(src, REPO / "assets" / "screenshots" / f"{name}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--readme" in sys.argv)
