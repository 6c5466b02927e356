"""Issue #12 in a real browser (Debian chromium): no Error pills, one message per bad number,
displays that match the value shown. Screenshots go to test-artifacts/ui-*.png."""
from __future__ import annotations

import pytest
from conftest import ARTIFACTS, REPO

pytestmark = pytest.mark.timeout(420)
PILL = "[data-testid=status-tracker] span.error"


@pytest.fixture
def app(app_server, page):
    url, _ = app_server
    page.goto(url, wait_until="load")
    page.wait_for_selector("#lg-use-example", timeout=60_000)
    return page


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def test_class_builder_error_keeps_the_drop_zone(app):
    """#12.4: images dropped before any class exists: a message, no pill, the label stays."""
    page = app
    page.get_by_role("tab", name="Class by class (webcam)").click()
    page.set_input_files("#lg-cb-files input[type=file]", str(REPO / "assets/example/bag/00.png"))
    page.wait_for_selector(".toast-body", timeout=30_000)
    assert "Add a class first" in page.inner_text(".toast-body")
    shot(page, "class-builder-error")
    assert page.locator(PILL).count() == 0
    assert page.locator("#lg-cb-files").get_by_text("Add images to this class").is_visible()


def test_a_wrong_file_in_an_upload_zone_gets_a_sentence_not_a_pill(app, tmp_path):
    """Gradio's own file-type check turned the archive, adapter and weights zones into a red "Error"
    pill with its own wording; the zones take any file now and the handler says what to drop."""
    page = app
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list")
    for tab, zone, expected in (("1 · Data", "#lg-archive", "unsupported file type '.txt'; give a folder, a .zip"),
                                ("5 · Export", "#lg-adapter-upload", "Upload one adapter .safetensors file")):
        page.get_by_role("tab", name=tab).click()
        if tab == "1 · Data":
            page.get_by_role("tab", name="Archive or CSV").click()
        page.set_input_files(f"{zone} input[type=file]", str(notes))
        page.wait_for_selector(f".toast-body:has-text(\"{expected[:30]}\")", timeout=60_000)
        shot(page, f"wrong-file-{zone[1:]}")
        assert page.locator(PILL).count() == 0
        page.locator(".toast-close").first.click()


def _rank(page, value: str) -> None:
    box = page.locator("input[aria-label='number input for Rank (r)']")
    box.fill(value)
    box.press("Enter")


def test_bad_rank_gives_one_message_and_counts_follow(app):
    """#12.6: rank 0 / -5: one message with the allowed range, no pill; Enter applies a rank and the
    trainable count always describes the rank in the box."""
    page = app
    page.get_by_role("tab", name="2 · Model & LoRA").click()
    page.wait_for_function("document.querySelector('#lg-trainable').innerText.includes('trainable')",
                           timeout=60_000)
    for bad in ("0", "-5"):
        _rank(page, bad)
        page.wait_for_function(f"document.querySelector('#lg-model-check').innerText.includes('got {bad}')",
                               timeout=30_000)
        assert "from 1 to 1024" in page.inner_text("#lg-model-check")
        assert "once the rank above is fixed" in page.inner_text("#lg-trainable")
        assert page.locator(PILL).count() == 0 and page.locator(".toast-body").count() == 0
    shot(page, "model-bad-rank")
    _rank(page, "16")
    page.wait_for_function("document.querySelector('#lg-trainable').innerText.includes('226,048')", timeout=30_000)
    page.wait_for_function("!document.querySelector('#lg-model-check').innerText.includes('must')", timeout=30_000)


def test_folder_upload_leaves_non_images_in_the_browser(app, tmp_path):
    """#12.9: non-images are not uploaded but counted; the zone and the status say it in words."""
    import shutil
    import uuid
    from pathlib import Path

    from conftest import write_colour_folder
    page = app
    root = Path.home() / "Pictures" / f"lg pets {uuid.uuid4().hex[:6]}"   # outside /tmp, with a space
    try:
        write_colour_folder(root / "photos", per_class=4)
        (root / "photos" / "class_0" / "notes.txt").write_text("not a picture")
        (root / "photos" / "class_1" / ".DS_Store").write_bytes(b"\0\0")
        (root / "photos" / "class_2" / "clip.mp4").write_bytes(b"\0" * 64)
        assert "Drop a folder of class folders" in page.inner_text("#lg-folder")
        page.set_input_files("#lg-folder input[type=file]", str(root / "photos"))
        page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Folder')",
                               timeout=60_000)
        text = page.inner_text("#lg-data-summary")
        assert "12 images used in 3 classes, 0 files skipped" in text, text      # nothing to skip on the server
        assert "3 other files left out in the browser" in text and ".txt 1" in text and ".mp4 1" in text
        page.wait_for_function("document.getElementById('lg-folder-status')?.textContent"
                               ".startsWith(\"Folder 'photos' · 12 images\")", timeout=30_000)
        assert page.locator(".toast-body").count() == 0 and page.locator(PILL).count() == 0
        shot(page, "folder-upload")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _huge_png(path):
    """A real 100-megapixel PNG (a few hundred kB: one colour compresses well)."""
    from PIL import Image
    Image.new("1", (10_000, 10_000)).save(path)
    return path


def test_huge_photo_in_test_tab_gives_a_sentence_not_a_pill(app, tmp_path):
    """#12: Gradio decodes an upload before any handler runs; a 100 MP photo made Pillow raise
    DecompressionBombError there, a bare "Error" on every output. Now: one toast that says what
    to do, no pill (image_input.ImageInput)."""
    page = app
    page.get_by_role("tab", name="4 · Test").click()
    page.set_input_files("#lg-test-image input[type=file]", str(_huge_png(tmp_path / "panorama.png")))
    page.wait_for_selector(".toast-body", timeout=180_000)   # the upload and its check queue behind other work
    text = page.inner_text(".toast-body")
    shot(page, "test-huge-photo")
    assert "too many pixels" in text and "scale it down" in text, text
    assert page.locator(PILL).count() == 0
