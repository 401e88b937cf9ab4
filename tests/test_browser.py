"""The app in a real browser: Playwright drives Debian's Chromium (never a downloaded one).

Skipped when /usr/bin/chromium is missing, unless NEGPROMPT_REQUIRE_BROWSER=1 (CI), where that is a failure.
The screenshot lands in test-artifacts/app.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from served_app import serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("NEGPROMPT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and NEGPROMPT_REQUIRE_BROWSER=1: install Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_compare_in_the_browser(browser, tmp_path_factory):
    with serve(tmp_path_factory) as (url, _model):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_label("Prompt", exact=True).fill("portrait photo of a man")
        page.get_by_label("Negative prompt 1").fill("mustache")
        page.click("#add-negative")
        page.get_by_label("Negative prompt 2").fill("glasses")
        page.click("#run")
        # Fails (TimeoutError) if the finished gallery never appears.
        page.wait_for_selector("#status:has-text('Done:')", timeout=180_000)
        captions = page.locator("#gallery .caption-label").all_inner_texts()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert len(captions) == 3, f"The gallery must show the baseline and two negatives: {captions}"
    assert captions[0].startswith("baseline"), f"The baseline must come first: {captions}"
    assert captions[1].startswith("- mustache") and captions[2].startswith("- glasses"), captions
