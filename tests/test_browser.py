"""The report in a real browser: Debian's headless chromium, driven by Playwright.

Playwright's Python package ships its own driver; the browser is the system's
/usr/bin/chromium (`make browser-deps`), never a `playwright install` download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from results_fixture import HOSTILE_CONTINUATION, make_eval_rows, make_results

from steering_utils.continuations import continuations_table
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


def load_in_chromium(path: Path, screenshot: Path, then=None) -> dict:
    """Open a report in headless chromium; what the page did, and a full-page screenshot;
    then(page) may drive the opened page further (its dict joins the answer)."""
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
            seen["scripts"] = page.eval_on_selector_all(
                "script", "s => s.map(x => x.type || 'javascript')")
            page.screenshot(path=str(screenshot), full_page=True)
            seen["screenshot"] = screenshot
            if then is not None:
                seen.update(then(page))
        finally:
            browser.close()
    return seen


def _shown(page) -> dict:
    """What the continuation browser shows once typing has settled: prompts (id, text, mean),
    cells, scores, the count and page lines."""
    page.wait_for_selector("#cb:not([data-busy])", state="attached")
    return page.evaluate("""() => {
      const prompts = [...document.querySelectorAll('#cb-results .cb-prompt')];
      return {ids: prompts.map(p => p.dataset.promptId),
              texts: prompts.map(p => p.querySelector('.cb-prompt-text').textContent),
              means: prompts.map(p => p.dataset.mean === '' ? null : Number(p.dataset.mean)),
              cells: [...new Set([...document.querySelectorAll('#cb-results td[data-cell]')]
                                 .map(td => td.dataset.cell))],
              scores: [...document.querySelectorAll('#cb-results .cb-scores')]
                        .map(s => s.dataset.score === '' ? null : Number(s.dataset.score)),
              count: document.getElementById('cb-count').textContent,
              page: document.getElementById('cb-page').textContent};
    }""")


def browser_count(page) -> dict:
    """The continuation browser's count line once it has drawn its first page."""
    page.wait_for_selector("#cb-results .cb-prompt")
    return {"browser_count": page.text_content("#cb-count")}


def _browse(page) -> dict:
    """Drive the continuation browser: page, filter by prompt text, cell and score, sort."""
    seen = {}
    page.wait_for_selector("#cb-results .cb-prompt")
    seen["first_page"] = _shown(page)
    page.click("#cb-next")
    seen["second_page"] = _shown(page)
    page.fill("#cb-q", "weather")
    seen["by_text"] = _shown(page)
    page.fill("#cb-q", "rtp-0003")
    seen["hostile"] = _shown(page)
    seen["hostile_text"] = page.inner_text("#cb-results")
    seen["hostile_elements"] = page.eval_on_selector_all(
        "#cb-results script, #cb-results img, #cb-results b, #cb-results i", "e => e.length")
    page.fill("#cb-q", "")
    page.select_option("#cb-score", label="jigsaw-bilstm")
    page.fill("#cb-min", "0.5")
    page.fill("#cb-max", "0.6")
    seen["by_score"] = _shown(page)
    page.fill("#cb-min", "")
    page.fill("#cb-max", "")
    page.select_option("#cb-sort", "score-desc")
    seen["sorted"] = _shown(page)
    page.click("#cb-none")
    page.check("#cb-cells label:has-text('random 7') input")
    seen["one_cell"] = _shown(page)
    seen["scripts_after"] = page.eval_on_selector_all("script", "s => s.length")
    return seen


@pytest.fixture(scope="module")
def eval_rows():
    return continuations_table(*make_eval_rows(), seed=1234)


@pytest.fixture(scope="module")
def loaded_report(tmp_path_factory, eval_rows):
    folder = tmp_path_factory.mktemp("browser_report")
    path = write_report(validate_results(make_results()), folder, eval_rows)
    return load_in_chromium(path, folder / SCREENSHOT, then=_browse)


def test_every_image_decodes(loaded_report):
    images = loaded_report["images"]
    assert images, "the report has no images"
    assert all(img["complete"] and img["width"] > 0 for img in images), images


def test_no_console_errors_or_page_errors(loaded_report):
    assert loaded_report["console_errors"] == []
    assert loaded_report["page_errors"] == []


def test_injected_script_never_runs(loaded_report):
    assert loaded_report["dialogs"] == []
    # The page's scripts are the browser's data block and its own code, nothing else.
    assert loaded_report["scripts"] == ["application/json", "javascript"]
    assert loaded_report["scripts_after"] == 2
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


# --- the continuation browser ---------------------------------------------------------------

def test_browser_pages_through_every_prompt(loaded_report, eval_rows):
    first, second = loaded_report["first_page"], loaded_report["second_page"]
    ids = eval_rows["prompt_id"].unique()
    assert len(first["ids"]) == 20 and first["page"] == "page 1 of 2"
    assert sorted(first["ids"] + second["ids"]) == sorted(ids) and second["page"] == "page 2 of 2"
    assert first["count"] == f"{len(ids)} prompt(s), {len(eval_rows)} continuation(s) match"
    assert set(first["cells"]) == set(eval_rows["cell"])  # the cells side by side


def test_browser_filters_by_prompt_text(loaded_report, eval_rows):
    shown = loaded_report["by_text"]
    expected = eval_rows.loc[eval_rows["prompt"].str.contains("weather"), "prompt_id"].unique()
    assert len(expected) == 4 and sorted(shown["ids"]) == sorted(expected)
    assert all("weather" in text for text in shown["texts"])


def test_browser_filters_by_score_range(loaded_report, eval_rows):
    shown = loaded_report["by_score"]
    inside = eval_rows[eval_rows["toxicity"].round(3).between(0.5, 0.6)]
    assert shown["scores"] and all(0.5 <= s <= 0.6 for s in shown["scores"])
    assert shown["count"] == (f"{inside['prompt_id'].nunique()} prompt(s), {len(inside)} "
                              "continuation(s) match")


def test_browser_sorts_by_mean_score(loaded_report, eval_rows):
    means = loaded_report["sorted"]["means"]
    assert means == sorted(means, reverse=True)
    by_prompt = eval_rows["toxicity"].round(3).groupby(eval_rows["prompt_id"]).mean()
    assert loaded_report["sorted"]["ids"][0] == by_prompt.idxmax()


def test_browser_filters_by_cell(loaded_report, eval_rows):
    shown = loaded_report["one_cell"]
    assert shown["cells"] == ["random 7 · layer 2 · α 2"]
    n = int((eval_rows["cell"] == "random 7 · layer 2 · α 2").sum())
    assert shown["count"].endswith(f", {n} continuation(s) match")


def test_an_injected_script_continuation_shows_as_text(loaded_report):
    assert loaded_report["hostile"]["ids"] == ["rtp-0003"]
    assert HOSTILE_CONTINUATION in loaded_report["hostile_text"]
    assert "(empty)" not in loaded_report["hostile_text"]
    assert loaded_report["hostile_elements"] == 0 and loaded_report["dialogs"] == []
