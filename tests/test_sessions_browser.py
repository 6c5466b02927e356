"""Sessions in a real browser (#12, #13): two tabs of one browser, reload re-attach, folders outside
the working folder, and the model under test. Screenshots go to test-artifacts/ (look at them)."""
from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import ARTIFACTS, launched_app, write_colour_folder

pytestmark = pytest.mark.timeout(420)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def ready(page, url) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#lg-use-example", timeout=60_000)


def use_example(page) -> None:
    page.click("#lg-use-example")
    page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Ready')", timeout=60_000)


def status(page) -> str:
    return page.evaluate("() => (document.querySelector('#lg-progress') || {dataset: {}}).dataset.status || ''")


def wait_status(page, *wanted, timeout=120_000) -> None:
    page.wait_for_function(f"() => {list(wanted)!r}.includes((document.querySelector('#lg-progress') || "
                           "{dataset: {}}).dataset.status)", timeout=timeout)


def set_epochs(page, n: int) -> None:
    box = page.locator("#lg-epochs input[type=number]")
    box.fill(str(n))
    box.press("Enter")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("sessions-browser") / "ws"
    workspace.mkdir()
    with launched_app(workspace) as url:
        yield url, workspace


def test_two_tabs_own_jobs_and_reload_reattaches(server, browser):
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        one = context.new_page()
        ready(one, url)
        use_example(one)
        open_tab(one, "3 · Train")
        # slow epochs, and many: still running when tab 2 and the reload come (7 epochs finished in
        # 35 s once training got faster, before tab 2 had polled; the test stops the run itself)
        one.get_by_label("strong").check()
        set_epochs(one, 50)   # the most the field takes
        one.click("#lg-start")
        wait_status(one, "running")

        two = context.new_page()              # same browser, another tab: not taken over
        ready(two, url)
        open_tab(two, "3 · Train")
        # wait until the page has polled: the offer shows, or (the old bug) tab 1's job was taken over
        two.wait_for_function("() => { const o = document.querySelector('#lg-other-tab');"
                              " return (o && o.offsetParent !== null) ||"
                              " !!document.querySelector('#lg-progress').dataset.status; }",
                              timeout=60_000)
        assert status(two) == "", two.inner_text("#lg-progress")
        assert two.locator("#lg-other-tab").is_visible()
        assert "another tab of this browser" in two.inner_text("#lg-other-tab")
        shot(two, "sessions-00-other-tab-offered")
        open_tab(two, "1 · Data")
        use_example(two)
        open_tab(two, "3 · Train")
        two.click("#lg-start")                # its own job, queued behind tab 1's
        two.wait_for_function("document.querySelector('#lg-progress').innerText.includes('1 training(s) ahead')",
                              timeout=60_000)
        shot(two, "sessions-02-second-tab-queued")

        one.reload(wait_until="load")         # re-attach: the Train tab, with the job's own settings
        one.wait_for_function("() => { const t = [...document.querySelectorAll('[role=tab]')]"
                              ".find(e => e.innerText.includes('3 · Train'));"
                              " return t && t.getAttribute('aria-selected') === 'true'; }", timeout=60_000)
        wait_status(one, "running", timeout=60_000)
        assert one.locator("#lg-epochs input[type=number]").input_value() == "50"
        assert one.get_by_label("strong").is_checked()
        assert "Dataset of run" in one.inner_text("#lg-data-summary")
        assert not one.locator("#lg-other-tab").is_visible()
        shot(one, "sessions-01-reloaded-tab-reattached")
        one.click("#lg-stop")
        two.click("#lg-stop")
        wait_status(one, "stopped", "finished", "failed")
        wait_status(two, "stopped", "finished", "failed")
    finally:
        context.close()


def test_folder_outside_working_folder_loads_by_flag_and_path(tmp_path_factory, browser):
    home = Path.home() / f"lg-Pictures-{uuid.uuid4().hex[:8]}"
    first = write_colour_folder(home / "shapes", per_class=5)
    second = write_colour_folder(home / "more shapes" / "nested", per_class=4)
    workspace = tmp_path_factory.mktemp("outside") / "ws"
    workspace.mkdir()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with launched_app(workspace, args=["--data", str(first)]) as url:
            page = context.new_page()
            page.goto(url, wait_until="load")
            page.wait_for_function("(document.querySelector('#lg-data-summary') || {innerText: ''}).innerText.includes('15 images used')",
                                   timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#lg-data-gallery img').length >= 3", timeout=30_000)
            assert page.locator("text=Error").count() == 0
            open_tab(page, "Path on this computer")
            page.get_by_label("Folder, archive or CSV path", exact=False).fill(str(second))
            page.get_by_role("button", name="Load this path").click()
            page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('12 images used')",
                                   timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#lg-data-gallery img').length >= 3", timeout=30_000)
            srcs = page.eval_on_selector_all("#lg-data-gallery img", "els => els.map(e => e.src)")
            assert all(str(home) not in s and ".gradio_cache" in s or s.startswith("data:") for s in srcs), srcs
            assert page.locator("text=Error").count() == 0
            shot(page, "sessions-03-folder-outside-workspace")
    finally:
        context.close()
        shutil.rmtree(home, ignore_errors=True)


def test_switching_models_clears_evaluation(server, browser):
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        ready(page, url)
        use_example(page)
        open_tab(page, "3 · Train")
        set_epochs(page, 1)
        page.click("#lg-start")
        wait_status(page, "finished", "failed", "stopped", timeout=240_000)
        assert status(page) == "finished", page.inner_text("#lg-progress")
        open_tab(page, "4 · Test")
        page.click("#lg-evaluate")
        page.wait_for_function("document.querySelector('#lg-eval-summary').innerText.includes('ccuracy')",
                               timeout=60_000)
        page.wait_for_function("/best adapter \\(epoch 1/.test(document.querySelector('#lg-test-source').innerText)"
                               " && !document.querySelector('#lg-test-source').innerText.includes('images -')",
                               timeout=60_000)
        trained = re.search(r"folder (run-[\w-]+)", page.inner_text("#lg-test-source")).group(1)

        open_tab(page, "3 · Train")           # a second run, stopped before its first epoch ends
        page.get_by_label("strong").check()
        set_epochs(page, 5)
        batch = page.locator("input[aria-label='number input for Batch size']")
        batch.fill("2")                       # 48 slow steps in epoch 1: Stop lands well before its end
        batch.press("Enter")
        page.click("#lg-start")
        page.wait_for_function("/step [1-9]/.test(document.querySelector('#lg-progress').innerText)",
                               timeout=120_000)   # training steps: the run folder is complete (listed in Runs)
        page.click("#lg-stop")
        wait_status(page, "stopped", "finished", "failed")
        open_tab(page, "4 · Test")            # still the trained model, and says why
        page.wait_for_function("document.querySelector('#lg-test-source').innerText.includes('is training') ||"
                               " document.querySelector('#lg-test-source').innerText.includes('best adapter')",
                               timeout=30_000)
        assert trained in page.inner_text("#lg-test-source")   # the same run as before
        assert "ccuracy" in page.inner_text("#lg-eval-summary")

        open_tab(page, "Runs")                # pick the stopped run (newest) for testing
        page.wait_for_function(   # the list has refreshed: it holds a run newer than the trained one
            f"((document.querySelector('#lg-runs-table') || {{innerText: ''}}).innerText.match(/run-\\d{{8}}-\\d{{6}}-\\w{{4}}/g) || [])"
            f".some(n => n > {trained!r})", timeout=30_000)
        name = max(re.findall(r"run-\d{8}-\d{6}-\w{4}", page.inner_text("#lg-runs-table")))  # the newest run
        page.locator("#lg-runs-table span").get_by_text(name, exact=True).click()   # a click on its row picks it
        label = page.locator("#lg-runs-table tr", has_text=name).locator("td").first.inner_text().strip()
        page.wait_for_function(f"document.querySelector('#lg-runs-pick input').value.includes({label!r})",
                               timeout=30_000)
        page.get_by_role("button", name="Use for testing").click()
        page.wait_for_function(f"!document.querySelector('#lg-test-source').innerText.includes({trained!r})"
                               " && document.querySelector('[role=tab][aria-selected=true]').innerText.includes('Test')",
                               timeout=30_000)
        assert "ccuracy" not in page.inner_text("#lg-eval-summary")     # not the other model's evaluation
        assert "No trained adapter yet" in page.inner_text("#lg-test-source")
        page.click("#lg-evaluate")
        page.wait_for_selector("text=has no trained adapter yet", timeout=30_000)
        shot(page, "sessions-04-stopped-run-not-tested")
    finally:
        context.close()
