"""A community negative pasted into Leave one out, read as A1111 reads it, in a real browser (Debian's Chromium).

Skipped when /usr/bin/chromium is missing, unless NEGPROMPT_REQUIRE_BROWSER=1 (CI). The screenshot lands in
test-artifacts/app-a1111.png.
"""

from __future__ import annotations

import pytest
from served_app import serve
from test_browser import ARTIFACTS, browser  # noqa: F401 (the browser fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COMMUNITY = ("(worst quality:1.4), (low quality:1.4), EasyNegative, bad hands, blurry, watermark, text, signature, "
             "lowres")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with serve(tmp_path_factory, max_cells=36) as (url, _model):  # 9 terms x 3 seeds: 33 images
        yield url


def _leave_one_out(page, reading: str, shows: str) -> str:
    """Run the pasted negative in Leave one out read ``reading``; the ranking once it shows ``shows``."""
    page.get_by_label(reading).check()
    page.get_by_label("Negative prompt 1").fill(COMMUNITY)
    page.click("#run")
    page.wait_for_selector(f"#explored:has-text(\"{shows}\")", timeout=400_000)
    page.wait_for_selector("#status:has-text('Leave one out:')", timeout=60_000)
    return page.locator("#explored").inner_text()


def test_a_pasted_a1111_negative_is_ranked_by_its_terms_with_their_weights(browser, app_url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.get_by_label("Leave one out").check()
    page.wait_for_selector("#mode-help:has-text('Which words of my negative prompt matter?')", timeout=30_000)
    page.get_by_text("Advanced options").click()
    explored = _leave_one_out(page, "A1111 ((x:1.3), BREAK, [a:b:0.4], 75-token chunks)", "(weight 1.4)")
    captions = page.locator("#gallery .caption-label").all_inner_texts()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-a1111.png"), full_page=True)
    assert len(captions) == 33, f"Leave one out must run three seeds by default: {len(captions)} images"
    assert "worst quality (weight 1.4)" in explored and "low quality (weight 1.4)" in explored, explored
    assert ":1.4" not in explored, f"The ranking must not rank the characters of ':1.4' as terms: {explored}"
    assert "read as characters" not in explored, "Under the A1111 reading the weights are read, not spelled."
    assert "no embedding 'EasyNegative' loaded" in explored, f"The unknown embedding must be explained: {explored}"
    assert any("EasyNegative" in c and "no embedding 'EasyNegative' loaded" in c for c in captions), captions
    assert "No two terms gave identical images" in explored or "did the same thing" in explored, explored
    assert " to " in explored and "per seed" in explored, "Each term's spread over the seeds must show."

    # The same paste read plain: the weights are spelled out and the cut term gave the full negative's image.
    explored = _leave_one_out(page, "plain (the text as it is)", "(worst quality:1.4)")
    page.screenshot(path=str(ARTIFACTS / "app-plain.png"), full_page=True)
    page.close()
    assert "(worst quality:1.4)" in explored and "A1111 syntax read as characters" in explored, explored
    assert "cut at 75 tokens" in explored, explored
    assert "Leaving out lowres gave the full negative's image on every seed" in explored, explored
