"""The page while no worker serves the queue: the upload waits visibly, and is read once a worker starts.

A module of its own, with a web tier whose queue has no worker until the test starts one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_page, real_problems
from tests.helpers import png_bytes
from tests.stack import LiveStack, web_only_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def idle_stack(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """A web tier whose queue has no worker yet (the test starts one)."""
    with web_only_stack(database_url, redis_url) as live:
        yield live


def test_a_slow_queue_is_shown_and_the_upload_is_read_once_a_worker_starts(browser, idle_stack, mnist, screenshot):
    page, problems = open_page(browser, idle_stack.base_url, viewport={"width": 1200, "height": 900})
    try:
        expect(page.locator("#system")).to_contain_text("No worker is running")
        upload = {"name": "patient.png", "mimeType": "image/png", "buffer": png_bytes(mnist.x_test[0])}
        page.set_input_files("#file-input", files=[upload])
        card = page.locator(".card").first
        expect(card).to_have_attribute("data-state", "slow", timeout=20_000)
        expect(card.locator(".state")).to_contain_text("no worker is running")
        screenshot(page, "slow")

        idle_stack.start_worker()
        expect(card).to_have_attribute("data-state", "done", timeout=90_000)
        expect(card.locator(".digit")).to_have_text(str(mnist.y_test[0]))
        assert real_problems(problems) == []
    finally:
        page.context.close()
