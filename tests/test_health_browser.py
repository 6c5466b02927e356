"""The Health check in the real app and headless Chromium: run it on a messy folder, fix one
finding in place, see the Data tab follow, look at the map. Screenshots land in test-artifacts/."""
from __future__ import annotations

import json

import pytest
from conftest import launched_app
from test_app_browser import shot
from test_health import build_messy

pytestmark = pytest.mark.timeout(900)


def test_health_check_lists_findings_and_fixes_one_in_place(tmp_path, page):
    folder = tmp_path / "Pictures" / "messy clothes"
    injected = build_messy(folder)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with launched_app(workspace) as url:
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Path on this computer").click()
        page.get_by_label("Folder, archive or CSV path").fill(str(folder))
        page.get_by_role("button", name="Load this path").click()
        page.wait_for_function("document.querySelector('#lg-data-summary').innerText.includes('Ready')",
                               timeout=60_000)
        page.get_by_text("Health check: wrong labels, duplicates, leaks, outliers").click()
        page.click("#lg-health-run")
        page.wait_for_function("document.querySelector('#lg-health-summary').innerText.includes('Checked')",
                               timeout=600_000)
        summary = page.inner_text("#lg-health-summary")
        assert "suspected wrong label" in summary and "leak" in summary
        page.click('#lg-health-labels [data-testid="cell-0-1"]')  # the first suspect's file
        page.wait_for_function("document.querySelector('#lg-health-details').innerText.includes('suggest')",
                               timeout=60_000)
        shot(page, "health-01-check")
        page.click("#lg-health-exclude")
        page.wait_for_function("document.querySelector('#lg-health-details').innerText.includes('removed from "
                               "training')", timeout=60_000)
        assert "excluded by health check" in page.inner_text("#lg-data-summary")
        assert "removed from training" in page.inner_text("#lg-health-labels")
        record = json.loads(next((workspace / "data_fixes").glob("*.json")).read_text())
        assert list(record.values()) == [{"action": "exclude"}]
        page.get_by_role("tab", name="Map").click()
        page.wait_for_selector("#lg-health-map .js-plotly-plot", timeout=60_000)
        traces = page.evaluate("() => document.querySelector('#lg-health-map .js-plotly-plot').data"
                               ".map(t => t.name)")
        assert "flagged" in traces and {"bag", "sneaker", "t-shirt", "trouser"} <= set(traces)
        page.locator("#lg-health-map").scroll_into_view_if_needed()
        shot(page, "health-02-map")
    assert injected["blank"]  # the blank image was part of the checked set
