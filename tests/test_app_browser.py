"""The real app in headless Debian Chromium, driven the way a first-time user goes.

Screenshots land in test-artifacts/ (look at them); the README's come from here.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import ARTIFACTS, REPO

pytestmark = pytest.mark.timeout(420)

EXAMPLE = REPO / "assets" / "example"


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def loss_points(page) -> int:
    return page.evaluate("""() => {
        const g = document.querySelector('#lg-loss-plot .js-plotly-plot');
        return g && g.data && g.data.length ? g.data[0].x.length : 0; }""")


def progress_status(page) -> str:
    return page.evaluate("() => (document.querySelector('#lg-progress') || {dataset: {}}).dataset.status || ''")


def test_first_run_flow(app_server, page):
    """Example data -> short training with live chart -> reload re-attaches -> predict -> PEFT export."""
    url, workspace = app_server
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    page.wait_for_selector("#lg-use-example", timeout=60_000)
    shot(page, "01-start")

    page.click("#lg-use-example")                                                   # click 1
    page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Ready')",
                           timeout=60_000)
    assert "120 images used in 4 classes" in page.inner_text("#lg-data-summary")
    page.wait_for_selector("#lg-data-summary ~ * .js-plotly-plot, .js-plotly-plot", timeout=30_000)
    shot(page, "02-data")

    open_tab(page, "2 · Model & LoRA")
    page.wait_for_function("document.querySelector('#lg-trainable').innerText.includes('trainable')",
                           timeout=60_000)
    assert "layers get LoRA" in page.inner_text("#lg-trainable")
    shot(page, "03-model")

    open_tab(page, "3 · Train")                                                     # click 2
    page.click("#lg-start")                                                         # click 3
    page.wait_for_function("() => { const g = document.querySelector('#lg-loss-plot .js-plotly-plot');"
                           " return g && g.data && g.data[0].x.length >= 2; }", timeout=120_000)
    first = loss_points(page)
    shot(page, "04-training")
    page.wait_for_function(f"() => document.querySelector('#lg-loss-plot .js-plotly-plot').data[0].x.length > {first}"
                           " || ['finished','failed'].includes(document.querySelector('#lg-progress').dataset.status)",
                           timeout=120_000)

    # Reloading the page must re-attach to the job running in the background.
    page.reload(wait_until="load")
    # laid out (not necessarily visible: a job still running brings its Train tab to the front by
    # itself, and the example now trains in seconds, so whether it still runs here is a race)
    page.wait_for_selector("#lg-use-example", state="attached", timeout=60_000)
    open_tab(page, "3 · Train")
    page.wait_for_function("['running','finished'].includes((document.querySelector('#lg-progress')||{dataset:{}})"
                           ".dataset.status)", timeout=60_000)
    page.wait_for_function("['finished','failed','stopped'].includes(document.querySelector('#lg-progress').dataset.status)",
                           timeout=240_000)
    assert progress_status(page) == "finished", page.inner_text("#lg-progress")
    progress_text = page.inner_text("#lg-progress")       # #12.5: plain words and what to do next
    assert "4 · Test" in progress_text and "last/" not in progress_text and "Finished" in progress_text
    page.locator("#lg-details").get_by_text("Show details").click()   # #12.8: the newest log line is where the box opens
    page.wait_for_selector("#lg-log textarea", timeout=10_000)
    assert page.input_value("#lg-log textarea").startswith("[finished]")
    page.wait_for_function("() => document.querySelector('#lg-acc-plot .js-plotly-plot')", timeout=30_000)
    assert loss_points(page) >= first
    shot(page, "05-trained")

    open_tab(page, "4 · Test")
    page.set_input_files("#lg-test-image input[type=file]", str(EXAMPLE / "trouser" / "00.png"))
    page.wait_for_function("document.querySelector('#lg-test-label').innerText.includes('%')", timeout=60_000)
    lines = [l.strip() for l in page.inner_text("#lg-test-label").splitlines() if l.strip()]
    assert lines[0] == "Top classes" and lines[1] == "trouser", lines   # the headline is the top class
    page.click("#lg-evaluate")
    page.wait_for_function("document.querySelector('#lg-eval-summary').innerText.includes('ccuracy')", timeout=60_000)
    summary = page.inner_text("#lg-eval-summary")
    # the gallery of mistakes is there only when there are mistakes (no empty box)
    assert (page.locator("#lg-misclassified").count() > 0
            and page.locator("#lg-misclassified").is_visible()) == (" 0 misclassified" not in summary), summary
    shot(page, "06-test")

    open_tab(page, "5 · Export")
    page.get_by_label("PEFT", exact=False).first.check()
    page.click("#lg-export-build")
    link = page.wait_for_selector("#lg-export-file a[href]", timeout=120_000)
    with page.expect_download() as dl:
        link.click()
    target = Path(workspace) / "downloaded.zip"
    dl.value.save_as(target)
    with zipfile.ZipFile(target) as z:
        names = {Path(n).name for n in z.namelist()}
        config = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("adapter_config.json")))
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json", "README.md"} <= names
    assert config["r"] == 8 and config["modules_to_save"]
    assert "PeftModel" in page.inner_text("#lg-export-code")
    shot(page, "07-export")
    assert not errors, errors


def test_folder_pick_keeps_class_folders(app_server, page, make_image_folder):
    """A folder picked in the browser arrives with its class sub-folders (webkitRelativePath)."""
    url, _ = app_server
    layout = {f"{c}/{i}.png": (24, 24) for c in ("apples", "pears", "plums") for i in range(4)}
    root = make_image_folder(layout, "fruit")
    page.goto(url, wait_until="load")
    page.wait_for_selector("#lg-folder input[type=file]", state="attached", timeout=60_000)
    page.set_input_files("#lg-folder input[type=file]", str(root))
    page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Folder')", timeout=60_000)
    text = page.inner_text("#lg-data-summary")
    assert "12 images used in 3 classes" in text, text
    assert "apples 4, pears 4, plums 4" in text, text
    shot(page, "08-folder-pick")


def test_bad_input_shows_message_not_traceback(app_server, page):
    url, _ = app_server
    page.goto(url, wait_until="load")
    page.wait_for_selector("#lg-use-example", timeout=60_000)
    open_tab(page, "3 · Train")
    page.click("#lg-start")
    toast = page.wait_for_selector("text=Choose a dataset first", timeout=30_000)
    assert toast is not None
    assert "Traceback" not in page.content()
