"""The app in a real browser: Playwright drives Debian's Chromium (never a downloaded one).

Skipped when /usr/bin/chromium is missing, unless NEGPROMPT_REQUIRE_BROWSER=1 (CI), where that is a failure.
Screenshots land in test-artifacts/ (app.png, and one per example and viewport).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from served_app import serve

from negprompt.app.examples import EXAMPLES_FILE
from negprompt.loading import EMBEDDED_MODEL
from negprompt.portrait_model.portraits import BINARY

pytestmark = [pytest.mark.browser, pytest.mark.slow]
VIEWPORTS = {"desktop": dict(viewport={"width": 1400, "height": 1000}),
             "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)}

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


def _open(page, url: str) -> None:
    """Load the app and wait until it answers (its load event filled the token counters): a click before that can
    be lost."""
    page.goto(url)
    page.wait_for_selector(".token-count:has-text('tokens')", timeout=60_000)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with serve(tmp_path_factory) as (url, _model):
        yield url


def test_compare_in_the_browser(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    _open(page, app_url)
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
    _open(page, app_url)
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
    _open(page, app_url)
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
    _open(page, app_url)
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


# -----------------------------------------------------------------------------------------------------------------
# Every built-in example, at both viewports: its lesson as the app's detector readout shows it, and the layout


def _examples_file() -> dict:
    return json.loads(EXAMPLES_FILE.read_text()) if EXAMPLES_FILE.is_file() else {"examples": []}


@pytest.fixture(scope="module")
def examples_url(tmp_path_factory):
    """The app at the examples' own settings (examples.json's steps), with room for every example's cells."""
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        pytest.skip("the examples teach on the embedded model, which is not here")
    data = _examples_file()
    steps = data.get("steps", 20)
    with serve(tmp_path_factory, default_steps=steps, max_steps=max(steps, 10), max_cells=36, max_seeds=8,
               max_negatives=8, preview_every=5) as (url, _model):
        yield url


def _pick(page, example: dict) -> None:
    """Click an example and wait until the form shows it (a click on the form before that would be overwritten)."""
    page.locator("#examples button").filter(has_text=example.get("title") or example["label"]).first.click()
    page.wait_for_function("n => document.querySelector('#seed input').value === String(n)", arg=example["seed"])
    page.wait_for_function("() => document.querySelector('#mode input:checked')?.value === 'Compare negatives'")


def _readout(page) -> list[dict]:
    """The per-cell table under the results, as the app shows it: seed, cell, and what the detector sees."""
    rows = page.locator("#table table").first.locator("tbody tr").all()
    cells = []
    for row in rows:
        seed, cell, _change, sees = [td.inner_text().strip() for td in row.locator("td").all()]
        cells.append({"seed": int(seed), "cell": cell,
                      "sees": set() if sees == "nothing" else {s.strip() for s in sees.split(",")}})
    return cells


def _lesson_faults(example: dict, cells: list[dict]) -> list[str]:
    """What the readout contradicts in the example's lesson, from its examples.json fields (negatives, other, seed,
    rows). On every seed, each negative's image does not show its attribute, keeps every other attribute the
    baseline shows and shows no new one (nor an unclear image); at least one seed's baseline shows the attribute
    (the negative removed it there), or for a negative embedding every attribute kept; "... without X" (``other``)
    shows X on more seeds than the negative "X" does."""
    faults, shows = [], {}
    seeds = range(example["seed"], example["seed"] + example.get("rows", 1))
    for seed in seeds:
        row = {c["cell"]: c["sees"] for c in cells if c["seed"] == seed}
        baseline = row.get("baseline")
        if baseline is None:
            faults.append(f"seed {seed}: no baseline in the readout {cells}")
            continue
        for attribute in example["negatives"]:
            seen = row.get(f"- {attribute}")
            if attribute not in BINARY:  # a negative embedding: it must keep every attribute (its sharpening is
                if seen != baseline:     # checked by tests/test_examples.py, which can measure the image)
                    faults.append(f"seed {seed}: '- {attribute}' changes attributes: {sorted(baseline)} -> "
                                  f"{sorted(seen or [])}")
                continue
            shows.setdefault(attribute, []).append(attribute in baseline)
            if seen is None or attribute in seen:
                faults.append(f"seed {seed}: '- {attribute}' shows {attribute} (sees {sorted(seen or [])})")
            elif seen != baseline - {attribute}:
                faults.append(f"seed {seed}: '- {attribute}' changes other attributes: {sorted(baseline)} -> "
                              f"{sorted(seen)}")
    faults += [f"no seed's baseline shows {attribute}: nothing to remove" for attribute, shown in shows.items()
               if not any(shown)]
    if example.get("other"):
        attribute = example["negatives"][0]
        other = sum(attribute in c["sees"] for c in cells if c["cell"] == f"+ {example['other']}")
        negative = sum(attribute in c["sees"] for c in cells if c["cell"] == f"- {attribute}")
        if other <= negative:
            faults.append(f"'{example['other']}' shows {attribute} on {other} of {len(seeds)} seeds, the negative "
                          f"'{attribute}' on {negative}: the lesson needs more with '... without'")
    return faults


def _layout_faults(page, per_seed: int, seeds: int) -> list[str]:
    """Every caption under its image (never over it), and one row per seed with ``per_seed`` images each."""
    faults, tops = [], []
    items = page.locator("#gallery .thumbnail-item").all()
    if len(items) != per_seed * seeds:
        return [f"{len(items)} images in the gallery, expected {seeds} row(s) of {per_seed}"]
    for i, item in enumerate(items):
        image, label = item.locator("img").bounding_box(), item.locator(".caption-label").bounding_box()
        if label["y"] < image["y"] + image["height"] - 1:
            faults.append(f"caption {i} overlaps its image: image {image}, caption {label}")
        tops.append(round(image["y"]))
    rows = [tops[r * per_seed:(r + 1) * per_seed] for r in range(seeds)]
    for r, row in enumerate(rows):
        if len(set(row)) != 1:
            faults.append(f"seed row {r} is not one row of images: tops {row}")
        if r and row[0] <= rows[r - 1][0]:
            faults.append(f"seed row {r} is not below row {r - 1}: tops {tops}")
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > page.viewport_size["width"] + 2:
        faults.append(f"the page is {width} px wide, wider than the screen")
    return faults


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_every_example_teaches_its_lesson_at_both_viewports(browser, examples_url, viewport):
    """Each example of examples.json, clicked and run as a visitor would: the detector readout the app shows
    agrees with the example's lesson, captions sit under their images and every seed is one row."""
    examples = _examples_file()["examples"]
    assert examples, "examples.json offers no example"
    faults = {}
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(**VIEWPORTS[viewport])
    for i, example in enumerate(examples):
        _open(page, examples_url)
        _pick(page, example)
        page.click("#run")
        page.wait_for_selector("#status:has-text('Done:')", timeout=240_000)
        page.wait_for_selector("#table table", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / f"example-{i}-{viewport}.png"), full_page=True)
        per_seed = 1 + len(example["negatives"]) + bool(example.get("other"))
        found = _lesson_faults(example, _readout(page)) + _layout_faults(page, per_seed, example.get("rows", 1))
        every = ", ".join(str(k) for k in range(1, _examples_file().get("steps", 20) + 1))
        if f"kept steps {every}" not in page.locator("#scrubber").inner_text():
            found.append("the step plot and slider must keep every step of the embedded model")
        if found:
            faults[example["label"]] = found
    page.close()
    assert not faults, f"At {viewport}, these examples do not show what they say: {json.dumps(faults, indent=1)}"


# -----------------------------------------------------------------------------------------------------------------
# Compare is never silent


def test_a_refusal_about_a_closed_field_shows_in_the_status_line_and_opens_it(browser, examples_url):
    """The seed article's example fills "Another positive prompt" (under the closed Advanced options); Leave one out
    takes none: pressing Compare says so in the status line and opens the accordion, at both viewports."""
    example = next((e for e in _examples_file()["examples"] if e.get("other")), None)
    if example is None:
        pytest.skip("no example fills another positive prompt")
    for viewport in VIEWPORTS:
        page = browser.new_page(**VIEWPORTS[viewport])
        _open(page, examples_url)
        _pick(page, example)
        page.get_by_label("Leave one out").check()
        page.click("#run")
        page.wait_for_selector("#status:has-text('Another positive prompt')", timeout=60_000)
        status = page.locator("#status")
        assert status.is_visible() and "Check the input" in status.inner_text(), status.inner_text()
        other = page.get_by_label("Another positive prompt")
        other.wait_for(state="visible", timeout=10_000)
        assert other.input_value() == example["other"], "The field the refusal names must show, with its text."
        page.close()


@pytest.mark.parametrize("field, value, shown", [
    ("Steps", "0", r"Steps.*0 must be from 1 to \d+"),
    ("Guidance scale", "1", r"Guidance scale.*must be above 1"),
    ("Seeds \\(rows\\)", "0", r"Seeds \(rows\).*must be from 1 to"),
])
def test_an_out_of_range_number_is_refused_not_clamped(browser, app_url, field, value, shown):
    """A number typed out of range is refused where it is (the Advanced options open), never run as the nearest
    allowed value."""
    from playwright.sync_api import TimeoutError as BrowserTimeout

    page = browser.new_page(**VIEWPORTS["desktop"])
    _open(page, app_url)
    page.get_by_label("Negative prompt 1").fill("hat")
    page.get_by_text("Advanced options").click()
    box = page.get_by_label(re.compile(f"^{field}$"))
    error = page.get_by_text(re.compile(shown)).first
    status = page.locator("#status")
    for attempt in range(3):
        # Gradio sends the box's new value to the app after its blur event, asynchronously; on a loaded machine a
        # click right after can still carry the old value. So: type, leave the box, give it time, then press.
        box.fill(value)
        box.blur()
        page.wait_for_timeout(1_000 * (attempt + 1))
        page.click("#run")
        try:
            error.wait_for(timeout=60_000)
            break
        except BrowserTimeout:
            seen = status.inner_text()
            assert "Done:" not in seen, f"{field}={value} ran instead of being refused: {seen[:300]}"
    else:
        pytest.fail(f"No refusal for {field}={value} after 3 tries; the status line: {status.inner_text()[:300]}")
    assert box.input_value() == value, f"{field} must keep what was typed ({value}), not clamp it"
    assert "Done:" not in page.locator("#status").inner_text(), "An out-of-range number must not run."
    page.close()


def test_a_long_prompt_is_refused_whole_with_one_short_message(browser, app_url):
    """3,000 characters pasted into the prompt stay 3,000 (no browser cut) and get one short refusal."""
    page = browser.new_page(**VIEWPORTS["phone"])
    _open(page, app_url)
    page.get_by_label("Prompt", exact=True).fill("a" * 3000)
    page.get_by_label("Negative prompt 1").fill("hat")
    assert len(page.get_by_label("Prompt", exact=True).input_value()) == 3000, "The browser cut the text."
    page.click("#run")
    error = page.get_by_text("3,000 characters; at most 2,000").first
    error.wait_for(timeout=60_000)
    assert len(error.inner_text()) < 80, f"One short message: {error.inner_text()!r}"
    page.close()


def test_the_word_buttons_do_not_overlap(browser, app_url):
    """The words the embedded model knows, as buttons that wrap at both viewports: no two overlap, none is cut."""
    for viewport in VIEWPORTS:
        page = browser.new_page(**VIEWPORTS[viewport])
        _open(page, app_url)
        accordion = page.locator("#known-words")
        if not accordion.count():
            pytest.skip("no embedded model: no word buttons")
        accordion.get_by_text("Words the portrait model knows").click()
        accordion.get_by_role("button", name="mustache", exact=True).wait_for(state="visible", timeout=30_000)
        buttons = accordion.locator("button:not(.label-wrap)").all()
        boxes = [b.bounding_box() for b in buttons if b.is_visible()]
        assert len(boxes) > 10, boxes
        for i, a in enumerate(boxes):
            assert a["x"] >= 0 and a["x"] + a["width"] <= page.viewport_size["width"], f"A word button is cut: {a}"
            for b in boxes[i + 1:]:
                apart = (a["x"] + a["width"] <= b["x"] + 1 or b["x"] + b["width"] <= a["x"] + 1
                         or a["y"] + a["height"] <= b["y"] + 1 or b["y"] + b["height"] <= a["y"] + 1)
                assert apart, f"At {viewport}, two word buttons overlap: {a} and {b}"
        page.close()
