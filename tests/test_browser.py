"""The report in a real browser: Debian's headless chromium, driven by Playwright.

Playwright's Python package ships its own driver; the browser is the system's
/usr/bin/chromium (`make browser-deps`), never a `playwright install` download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from results_fixture import make_results

from steering_utils.report import write_report
from steering_utils.results import validate_results

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = "report_screenshot.png"


def _chromium() -> str:
    found = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed (`make browser-deps` installs Debian's "
                    "chromium with apt); the report's browser check needs it")
    return found


def load_in_chromium(path: Path, screenshot: Path) -> dict:
    """Open a report in headless chromium; what the page did, and a full-page screenshot."""
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    seen = {"console_errors": [], "page_errors": [], "dialogs": [], "requests": []}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: msg.type == "error"
                    and seen["console_errors"].append(msg.text))
            page.on("pageerror", lambda exc: seen["page_errors"].append(str(exc)))

            def on_dialog(dialog):
                seen["dialogs"].append(f"{dialog.type}: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            seen["images"] = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, "
                       "width: i.naturalWidth}))")
            seen["details_open_at_load"] = page.eval_on_selector("details.cw", "d => d.open")
            # Reveal the examples: the hostile text must show as text and still run nothing.
            page.click("details.cw > summary")
            page.wait_for_timeout(200)
            seen["examples_text"] = page.inner_text("#examples")
            seen["script_count"] = page.eval_on_selector_all("script", "s => s.length")
            page.screenshot(path=str(screenshot), full_page=True)
            seen["screenshot"] = screenshot
        finally:
            browser.close()
    return seen


@pytest.fixture(scope="module")
def loaded_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_report")
    path = write_report(validate_results(make_results()), folder)
    return load_in_chromium(path, folder / SCREENSHOT)


def test_every_image_decodes(loaded_report):
    images = loaded_report["images"]
    assert images, "the report has no images"
    assert all(img["complete"] and img["width"] > 0 for img in images), images


def test_no_console_errors_or_page_errors(loaded_report):
    assert loaded_report["console_errors"] == []
    assert loaded_report["page_errors"] == []


def test_injected_script_never_runs(loaded_report):
    assert loaded_report["dialogs"] == []
    assert loaded_report["script_count"] == 0
    text = loaded_report["examples_text"]
    assert "<script>alert(1)</script>" in text
    assert "<img src=x onerror=alert(1)>" in text and "</table>" in text


def test_examples_start_hidden_and_nothing_leaves_the_machine(loaded_report):
    assert loaded_report["details_open_at_load"] is False
    remote = [url for url in loaded_report["requests"]
              if not url.startswith(("file:", "data:"))]
    assert remote == []


def test_full_page_screenshot_is_saved(loaded_report):
    screenshot = loaded_report["screenshot"]
    assert screenshot.is_file()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 50_000
