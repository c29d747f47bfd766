"""Cancel and delete from the page, in a real browser against the real stack (issue #17).

A card waits on a web tier whose queue no worker serves (`waiting_stack`), so it stays PENDING long enough to be
cancelled; deletes run against the stack with a worker (`stack`), on finished uploads. Every outcome is checked
through the API too, not only on the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from playwright.sync_api import Page, Route, expect
from sqlalchemy import Engine

from shared.db import make_engine
from shared.retention import purge_images
from shared.schema import State, utcnow
from tests.browser.conftest import open_page, real_problems
from tests.browser.pages import (
    ANSWER_TIMEOUT_MS,
    api_history,
    api_status,
    history_row,
    task_id_of,
    upload_and_leave_waiting,
    upload_and_wait_for_answer,
    upload_as_visitor,
)
from tests.helpers import eventually, png_bytes
from tests.stack import LiveStack, web_only_stack

pytestmark = pytest.mark.e2e


def _focused(page: Page) -> str:
    """The accessible name (aria-label, else text) of the element that has the keyboard focus."""
    return page.evaluate("() => { const el = document.activeElement;"
                         " return el.getAttribute('aria-label') || el.textContent.trim(); }")


def test_a_waiting_upload_is_canceled_from_its_card_by_mouse_or_keyboard(waiting_page, waiting_stack, mnist,
                                                                         screenshot):
    page, _ = waiting_page
    expect(page.locator("#system")).to_contain_text("No worker is running")
    cards = {name: upload_and_leave_waiting(page, name, png_bytes(mnist.x_test[i]))
             for i, name in enumerate(["one.png", "two.png", "three.png"])}

    cards["one.png"].get_by_role("button", name="Cancel reading one.png").click()
    expect(cards["one.png"]).to_have_attribute("data-state", "canceled")
    expect(cards["one.png"].locator(".state")).to_contain_text("Canceled")
    expect(cards["one.png"].locator(".cancel")).to_be_hidden()  # final: nothing left to cancel
    doc = api_status(page, waiting_stack.base_url, task_id_of(cards["one.png"])).json()
    assert doc["state"] == State.CANCELED
    expect(history_row(page, "one.png")).to_contain_text(State.CANCELED.value)

    # From the keyboard: Enter on the focused button; the focus then stays on the card, not lost to the page.
    cards["two.png"].get_by_role("button", name="Cancel reading two.png").focus()
    page.keyboard.press("Enter")
    expect(cards["two.png"]).to_have_attribute("data-state", "canceled")
    assert cards["two.png"].evaluate("card => card === document.activeElement")
    assert api_status(page, waiting_stack.base_url, task_id_of(cards["two.png"])).json()["state"] == State.CANCELED

    # The third still waits, and still offers to cancel; every history row offers to delete.
    expect(cards["three.png"]).not_to_have_attribute("data-state", "canceled")
    expect(cards["three.png"].get_by_role("button", name="Cancel reading three.png")).to_be_visible()
    assert api_status(page, waiting_stack.base_url, task_id_of(cards["three.png"])).json()["state"] == State.PENDING
    expect(history_row(page, "two.png")).to_contain_text(State.CANCELED.value)
    for name in cards:
        expect(page.get_by_role("button", name=f"Delete {name}", exact=True)).to_be_visible()
    screenshot(page, "canceled")
    history_row(page, "three.png").get_by_role("button", name="Delete three.png").click()
    expect(page.get_by_role("group", name="Delete three.png?")).to_be_visible()
    screenshot(page, "confirm")
    page.get_by_role("button", name="No, keep three.png").click()


@pytest.fixture
def idle_stack(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """A web tier of this test's own, whose queue gets a worker only when the test starts one."""
    with web_only_stack(database_url, redis_url) as live:
        yield live


def test_a_cancel_that_loses_the_race_shows_the_answer_that_won(browser, idle_stack, mnist):
    page, problems = open_page(browser, idle_stack.base_url, viewport={"width": 1200, "height": 900})
    held: list[Route] = []
    try:
        # The page hears nothing from its long polls (held unanswered), so its card still offers to cancel
        # when the worker has already read the upload: the click arrives after the answer, as in a real race.
        def hold(route: Route) -> None:
            held.append(route)  # neither answered nor continued: the request waits

        page.route(lambda url: "/tasks?" in url, hold)
        card = upload_and_leave_waiting(page, "late.png", png_bytes(mnist.x_test[0]))
        task_id = task_id_of(card)
        idle_stack.start_worker()

        def read() -> bool:
            resp = requests.get(f"{idle_stack.base_url}/tasks/{task_id}?wait=20", timeout=30)
            return resp.json()["state"] == State.SUCCESS

        assert eventually(read, timeout=120)

        card.get_by_role("button", name="Cancel reading late.png").click()  # answered 409, with the answer
        expect(card).to_have_attribute("data-state", "done")
        expect(card.locator(".digit")).to_have_text(str(mnist.y_test[0]))
        expect(card.locator(".card-note")).to_have_text("It finished before the cancel arrived.")
        expect(card.locator(".cancel")).to_be_hidden()
        assert api_status(page, idle_stack.base_url, task_id).json()["state"] == State.SUCCESS
        assert held, "the page's long poll was not held: the race was not staged"
        assert real_problems(problems) == []
    finally:
        page.unroute_all(behavior="ignoreErrors")
        page.context.close()


def test_a_history_redrawn_by_a_new_answer_keeps_the_keyboard_on_the_same_delete_button(page, stack, mnist):
    page, _ = page
    upload_and_wait_for_answer(page, "kept.png", png_bytes(mnist.x_test[1]))
    history_row(page, "kept.png").get_by_role("button", name="Delete kept.png").focus()
    first = history_row(page, "kept.png").element_handle()
    # Another answer comes in and the history is read again: the row is drawn anew, the focus follows it.
    upload_and_wait_for_answer(page, "later.png", png_bytes(mnist.x_test[2]))
    assert page.evaluate("(row) => !row.isConnected", first)  # redrawn, not kept
    assert _focused(page) == "Delete kept.png"


def test_a_history_row_is_deleted_only_once_the_visitor_confirms(page, stack, mnist, screenshot):
    page, _ = page
    upload_and_wait_for_answer(page, "keep.png", png_bytes(mnist.x_test[1]))
    upload_and_wait_for_answer(page, "gone.png", png_bytes(mnist.x_test[2]))
    gone_card = page.locator(".card", has_text="gone.png")
    gone_id = task_id_of(gone_card)
    delete = history_row(page, "gone.png").get_by_role("button", name="Delete gone.png")

    # No: nothing is deleted, and the focus goes back to the button that asked.
    delete.click()
    expect(page.get_by_role("group", name="Delete gone.png?")).to_be_visible()
    assert _focused(page) == "No, keep gone.png"  # the safe answer is the one a stray Enter gives
    page.get_by_role("button", name="No, keep gone.png").click()
    expect(page.get_by_role("group", name="Delete gone.png?")).to_have_count(0)
    assert _focused(page) == "Delete gone.png"
    # Escape answers No too.
    delete.click()
    page.keyboard.press("Escape")
    expect(page.get_by_role("group", name="Delete gone.png?")).to_have_count(0)
    expect(history_row(page, "gone.png")).to_have_count(1)
    assert api_status(page, stack.base_url, gone_id).status_code == 200

    delete.click()
    page.get_by_role("button", name="Yes, delete gone.png").click()
    expect(history_row(page, "gone.png")).to_have_count(0)
    expect(page.locator("#history-status")).to_have_text("Deleted gone.png.")
    expect(gone_card).to_have_attribute("data-state", "deleted")
    assert api_status(page, stack.base_url, gone_id).status_code == 404
    # The other upload is untouched, and the keyboard lands on the row that took the deleted one's place.
    expect(history_row(page, "keep.png")).to_have_count(1)
    keep_id = task_id_of(page.locator(".card", has_text="keep.png"))
    assert api_status(page, stack.base_url, keep_id).json()["state"] == State.SUCCESS
    assert [item["filename"] for item in api_history(page, stack.base_url)["items"]] == ["keep.png"]
    assert _focused(page) == "Delete keep.png"
    screenshot(page, "deleted")


def test_delete_all_empties_the_history(page, stack, mnist):
    page, _ = page
    upload_as_visitor(page, stack.base_url, mnist.x_test[:3], prefix="all")
    upload_and_wait_for_answer(page, "card.png", png_bytes(mnist.x_test[3]))
    expect(page.locator("#history-page")).to_contain_text("(4 in all)")

    page.get_by_role("button", name="Delete all my uploads").click()
    page.get_by_role("button", name="No, keep them").click()  # changing one's mind deletes nothing
    assert api_history(page, stack.base_url)["total"] == 4

    page.get_by_role("button", name="Delete all my uploads").click()
    expect(page.get_by_role("group", name="Delete all 4 of your uploads? This cannot be undone.")).to_be_visible()
    page.get_by_role("button", name="Yes, delete all 4 of your uploads").click()
    expect(page.locator("#history-page")).to_have_text("Empty")
    expect(page.locator("#history tbody tr")).to_have_count(0)
    expect(page.locator("#history-status")).to_have_text("Deleted all your uploads.")
    expect(page.locator("#erase-all")).to_be_hidden()  # nothing left to delete
    expect(page.locator(".card", has_text="card.png")).to_have_attribute("data-state", "deleted")
    assert api_history(page, stack.base_url)["total"] == 0


def test_deleting_a_waiting_upload_stops_its_card_waiting(waiting_page, waiting_stack, mnist):
    page, _ = waiting_page
    card = upload_and_leave_waiting(page, "waiting.png", png_bytes(mnist.x_test[4]))
    task_id = task_id_of(card)
    row = history_row(page, "waiting.png")
    expect(row).to_contain_text(State.PENDING.value)

    row.get_by_role("button", name="Delete waiting.png").click()
    page.get_by_role("button", name="Yes, delete waiting.png").click()
    expect(card).to_have_attribute("data-state", "deleted")
    expect(card.locator(".cancel")).to_be_hidden()
    expect(history_row(page, "waiting.png")).to_have_count(0)
    assert api_status(page, waiting_stack.base_url, task_id).status_code == 404
    # The `waiting_page` fixture then checks the console: no poll asked for the deleted id (it would be a 404).


def _purge(engine: Engine) -> list[str]:
    with engine.begin() as conn:
        return purge_images(conn, utcnow() + timedelta(minutes=1))


def test_an_image_removed_by_retention_is_marked_in_the_history(page, stack, mnist, database_url, screenshot):
    page, _ = page
    upload_and_wait_for_answer(page, "old.png", png_bytes(mnist.x_test[5]))
    purged: list[str] = []
    engine = make_engine(database_url)
    try:
        # What the retention sweep does once IMAGE_RETENTION_SECONDS have passed, batch by batch (the session's
        # other tests may have left more finished uploads than one batch).
        while batch := _purge(engine):
            purged += batch
    finally:
        engine.dispose()
    assert task_id_of(page.locator(".card", has_text="old.png")) in purged
    page.reload()
    row = history_row(page, "old.png")
    expect(row.locator(".tag")).to_have_text("image removed", timeout=ANSWER_TIMEOUT_MS)
    expect(row).to_contain_text(str(mnist.y_test[5]))  # the answer stays
    screenshot(page, "image-removed")
