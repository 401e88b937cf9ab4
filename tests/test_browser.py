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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with serve(tmp_path_factory) as (url, _model):
        yield url


def test_compare_in_the_browser(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
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
    page.close()
    assert len(captions) == 3, f"The gallery must show the baseline and two negatives: {captions}"
    assert captions[0].startswith("baseline"), f"The baseline must come first: {captions}"
    assert captions[1].startswith("- mustache") and captions[2].startswith("- glasses"), captions
    assert "% changed" in captions[1], f"A caption must keep its change score: {captions[1]}"


def test_on_a_phone_errors_show_at_their_field_and_results_fit(browser, app_url):
    """390x844: a bad field is pointed at where it is, the previous result stays, and the gallery fits the screen."""
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(app_url)
    page.get_by_label("Negative prompt 1").fill("hat")
    page.click("#run")
    page.wait_for_selector("#status:has-text('Done:')", timeout=180_000)
    assert page.locator("#gallery .caption-label").count() == 2

    page.get_by_label("Negative prompt 1").fill("\u200b  ")  # invisible: refused
    page.click("#run")
    box = page.get_by_label("Negative prompt 1")
    error = page.locator(".validation-error, [class*='error']").filter(has_text="has no visible text")
    error.first.wait_for(timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-error.png"), full_page=True)
    field_box, error_box = box.bounding_box(), error.first.bounding_box()
    assert abs(error_box["y"] - field_box["y"]) < 150, \
        f"The error must show at its field: field at y={field_box['y']}, error at y={error_box['y']}"
    assert page.locator("#gallery .caption-label").count() == 2, "The previous result must stay on screen."
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 2, f"Nothing may overflow the phone's width: the page is {width} px wide."
    for image in page.locator("#gallery img").all():
        right = image.bounding_box()
        assert right["x"] + right["width"] <= 392, f"A gallery image is clipped on the phone: {right}"
    page.close()


def _compare(page, negative: str, done: str) -> list[str]:
    """Type ``negative`` in the first box, press Compare, wait for a status with ``done``; the gallery's captions."""
    page.get_by_label("Negative prompt 1").fill(negative)
    page.click("#run")
    page.wait_for_selector(f"#status:has-text('{done}')", timeout=180_000)
    return page.locator("#gallery .caption-label").all_inner_texts()


def test_the_explorer_modes_in_the_browser(browser, app_url):
    """One click on a mode shows its explanation; leave-one-out captions name the left-out terms and rank them; the
    timing sweep makes one image per start."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.get_by_label("Leave one out").check()
    page.wait_for_selector("#mode-help:has-text('Which words of my negative prompt matter?')", timeout=30_000)
    captions = _compare(page, "hat, glasses", "Leave one out:")  # three seeds by default: 12 images
    assert [c.split(" · ")[0] for c in captions] == ["baseline", "full negative", "without hat",
                                                     "without glasses"] * 3, captions
    assert "rank" in page.locator("#explored").inner_text(), "The ranked terms must show under the results."

    page.get_by_label("When it acts (timing)").check()
    page.wait_for_selector("#mode-help:has-text('When does a negative prompt act?')", timeout=30_000)
    captions = _compare(page, "hat", "When it acts (timing):")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-timing.png"), full_page=True)
    page.close()
    assert [c.split(" · ")[0] for c in captions] == ["baseline", "- hat", "- hat @0.2", "- hat @0.4", "- hat @0.6"], \
        captions


def test_the_step_scrubber_in_the_browser(browser, app_url):
    """After a comparison, the step-by-step panel shows every image at the last kept step; moving the slider to its
    start shows them at the first kept step; the plot of each image's change over the steps is drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    _compare(page, "hat", "Done:")
    frames = page.locator("#frames .caption-label")
    frames.first.wait_for(timeout=30_000)
    assert [c.split(" · ")[0] for c in frames.all_inner_texts()] == ["step 3/3"] * 2, frames.all_inner_texts()
    slider = page.locator("#scrubber input[type=range]")
    slider.focus()
    page.keyboard.press("Home")
    page.wait_for_selector("#frames .caption-label:has-text('step 1/3')", timeout=30_000)
    assert [c.split(" · ")[0] for c in frames.all_inner_texts()] == ["step 1/3"] * 2, frames.all_inner_texts()
    page.locator("#curves canvas, #curves svg").first.wait_for(timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-steps.png"), full_page=True)
    page.close()
