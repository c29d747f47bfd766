"""The page in a real browser (Chromium): upload, draw, errors, history, slow queue, phone width.

Each test saves screenshots under TEST_SCREENSHOT_DIR (var/screenshots by default).
"""

from __future__ import annotations

import json

import pytest
import requests
from playwright.sync_api import Page, expect

from evaluation.userstyle import user_style_set
from shared.config import REPO_ROOT
from tests.browser.conftest import open_page, real_problems
from tests.browser.pages import ANSWER_TIMEOUT_MS, png_file, text_file, upload_as_visitor, upload_refused_file
from tests.helpers import png_bytes

pytestmark = pytest.mark.e2e


def _model_version() -> str:
    return json.loads((REPO_ROOT / "models" / "mnist_model.json").read_text())["model_version"]


def _model_label() -> str:
    """Which model read an answer, as the page shows it: the architecture, then the version."""
    metadata = json.loads((REPO_ROOT / "models" / "mnist_model.json").read_text())
    return f"{metadata['architecture']} {metadata['model_version']}"


def test_uploading_a_photo_of_a_digit_shows_the_right_digit_and_its_probabilities(page, mnist, screenshot):
    page, _ = page
    data, label, kind = user_style_set(mnist.x_test, mnist.y_test, 1, seed=3)[0]
    assert kind == "paper"
    expect(page.locator("#system")).to_contain_text(f"Model {_model_version()}")

    page.set_input_files("#file-input", files=[png_file("photo.png", data)])

    card = page.locator(".card").first
    expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    expect(card.locator(".digit")).to_have_text(str(label))
    expect(card.locator(".name")).to_have_text("photo.png")
    expect(card.locator(".bars li")).to_have_count(10)
    expect(card.locator(".bars li.top span").first).to_have_text(str(label))
    expect(card.locator(".model")).to_have_text(_model_label())
    assert card.locator(".thumb").evaluate("img => img.naturalWidth") > 0
    # The history (from MySQL) shows the same upload with the model that read it.
    row = page.locator("#history tbody tr", has_text="photo.png").first
    expect(row).to_contain_text(_model_label())
    screenshot(page, "answer")


def test_a_file_that_is_not_an_image_gets_a_clear_message(page, screenshot):
    page, _ = page
    upload_refused_file(page, "notes.txt")

    card = page.locator(".card").first
    expect(card).to_have_attribute("data-state", "error")
    expect(card.locator(".card-error")).to_contain_text("'notes.txt'")
    screenshot(page, "refused")


def test_several_files_get_a_card_each_and_one_bad_file_spoils_none_of_the_others(page, mnist, screenshot):
    page, _ = page
    files = [png_file(f"digit-{i}.png", png_bytes(mnist.x_test[i])) for i in range(3)]
    files.insert(1, {"name": "empty.png", "mimeType": "image/png", "buffer": b""})

    page.set_input_files("#file-input", files=files)

    cards = page.locator(".card")
    expect(cards).to_have_count(4)
    for i in range(3):
        card = cards.filter(has_text=f"digit-{i}.png")
        expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
        expect(card.locator(".digit")).to_have_text(str(mnist.y_test[i]))
    bad = cards.filter(has_text="empty.png")
    expect(bad).to_have_attribute("data-state", "error")
    expect(bad.locator(".card-error")).to_contain_text("is empty")
    # The history reloads once answers arrive: the read files are in MySQL, the refused one is not.
    history = page.locator("#history tbody")
    for i in range(3):
        expect(history.locator("tr", has_text=f"digit-{i}.png")).to_have_count(1)
    expect(history.locator("tr", has_text="empty.png")).to_have_count(0)
    screenshot(page, "cards")


def _draw_seven(page: Page) -> None:
    """A hand-drawn 7 with mouse events: a top bar, then a slanted down-stroke."""
    box = page.locator("#pad").bounding_box()
    assert box is not None

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    page.mouse.move(*at(0.28, 0.22))
    page.mouse.down()
    page.mouse.move(*at(0.72, 0.22), steps=12)
    page.mouse.move(*at(0.45, 0.82), steps=16)
    page.mouse.up()


def test_a_digit_drawn_with_the_mouse_is_read(page, screenshot):
    page, _ = page
    predict = page.locator("#pad-predict")
    expect(predict).to_be_disabled()  # nothing drawn yet
    _draw_seven(page)
    expect(predict).to_be_enabled()
    screenshot(page, "drawn")

    predict.click()

    card = page.locator(".card").first
    expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    expect(card.locator(".name")).to_contain_text("drawing")
    expect(card.locator(".digit")).to_have_text("7")
    expect(predict).to_be_disabled()  # the pad was cleared for the next digit
    screenshot(page, "read")


def test_a_dropped_and_a_pasted_image_are_read_too(page, mnist):
    page, _ = page
    for i, event in ((0, "drop"), (1, "paste")):
        data = list(png_bytes(mnist.x_test[i]))
        page.evaluate(
            """([bytes, name, event]) => {
                 const transfer = new DataTransfer();
                 transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
                 if (event === "drop") {
                   document.getElementById("drop-zone").dispatchEvent(
                     new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
                 } else {
                   document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
                 }
               }""",
            [data, f"{event}.png", event],
        )
        card = page.locator(".card", has_text=f"{event}.png")
        expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
        expect(card.locator(".digit")).to_have_text(str(mnist.y_test[i]))


def test_rate_limited_and_unavailable_answers_are_explained(page, mnist):
    page, _ = page
    # The refusals themselves are tested against the real web tier (tests/web); here only what the page says.
    answers = iter([
        {"status": 429, "headers": {"Retry-After": "42", "Content-Type": "application/json"},
         "body": json.dumps({"error": {"code": "rate_limited", "message": "Too many uploads."}})},
        {"status": 503, "content_type": "application/json",
         "body": json.dumps({"error": {"code": "queue_unavailable",
                                       "message": "The prediction queue is unavailable; try again shortly."}})},
    ])
    page.route("**/predict", lambda route: route.fulfill(**next(answers)))

    page.set_input_files("#file-input", files=[png_file("first.png", png_bytes(mnist.x_test[0]))])
    first = page.locator(".card", has_text="first.png")
    expect(first.locator(".card-error")).to_have_text("Too many uploads from your address: try again in 42 seconds.")
    page.set_input_files("#file-input", files=[png_file("second.png", png_bytes(mnist.x_test[0]))])
    second = page.locator(".card", has_text="second.png")
    expect(second.locator(".card-error")).to_contain_text("queue is unavailable")
    expect(second.locator(".card-error")).to_contain_text("Nothing was kept")


def test_history_is_paged_newest_first(page, stack, mnist):
    page, _ = page
    # More than a page of history, through the API (twelve files in one request: the batch path).
    upload_as_visitor(page, stack.base_url, mnist.x_test[:12], prefix="batch")
    page.reload()

    label = page.locator("#history-page")
    expect(label).to_contain_text("Page 1 of")
    expect(page.locator("#history tbody tr")).to_have_count(10)
    expect(page.locator("#history tbody tr").first).to_contain_text("batch-11.png")
    expect(page.locator("#history-prev")).to_be_disabled()
    page.locator("#history-next").click()
    expect(label).to_contain_text("Page 2 of")
    expect(page.locator("#history tbody tr").first).to_contain_text("batch-1.png")
    expect(page.locator("#history-prev")).to_be_enabled()


def test_the_page_fits_a_phone_and_can_be_used_from_the_keyboard(browser, stack, mnist, screenshot):
    page, problems = open_page(browser, stack.base_url, viewport={"width": 375, "height": 740},
                               is_mobile=True, has_touch=True)
    try:
        expect(page.locator("#system")).to_contain_text("Model")
        # A card with its bars, a refused file with a long name, and the history: still nothing wider than
        # the screen (no sideways scrolling on a phone; the history table scrolls inside its own box).
        page.set_input_files("#file-input", files=[
            png_file("a-rather-long-file-name-from-a-phone-camera-20261127.png", png_bytes(mnist.x_test[0])),
            text_file("not-a-picture-either.txt", b"hello")])
        expect(page.locator(".card[data-state=done]")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator(".card[data-state=error]")).to_have_count(1)
        expect(page.locator("#history tbody tr").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        # The file picker is reachable with Tab (after the skip link) and named by its label; so is the pad.
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "file-input"
        assert page.locator("#file-input").evaluate("el => el.labels[0].textContent").strip().startswith("Choose")
        expect(page.get_by_role("img", name="Drawing area: draw one digit with a mouse, finger or pen")).to_be_visible()
        screenshot(page, "phone")
        assert real_problems(problems) == []
    finally:
        page.context.close()


def test_a_visitor_sees_their_own_history_and_nobody_else_does(browser, stack, mnist, screenshot):
    first, first_problems = open_page(browser, stack.base_url)
    second, second_problems = open_page(browser, stack.base_url)  # another browser: its own cookie jar
    try:
        first.set_input_files("#file-input", files=[png_file("mine-only.png", png_bytes(mnist.x_test[7]))])
        expect(first.locator("#history tbody tr", has_text="mine-only.png")).to_have_count(
            1, timeout=ANSWER_TIMEOUT_MS)
        second.reload()
        expect(second.locator("#history-page")).to_have_text("Empty")
        assert "mine-only.png" not in second.locator("#history").inner_text()
        # Without a token at all, the API lists nothing either.
        assert requests.get(f"{stack.base_url}/predictions", timeout=5).json()["total"] == 0
        screenshot(first, "own-history")
        assert real_problems(first_problems) == [] and real_problems(second_problems) == []
    finally:
        first.context.close()
        second.context.close()
