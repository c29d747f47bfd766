"""Helpers that drive the page into its states, shared by the browser tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import requests
from playwright.sync_api import FilePayload, Locator, Page, expect

from tests.helpers import png_bytes

ANSWER_TIMEOUT_MS = 60_000  # the first answer may wait for the worker's warm-up
HISTORY_PAGE_SIZE = 10  # rows the page shows per history page


def png_file(name: str, data: bytes) -> FilePayload:
    """A PNG for Page.set_input_files."""
    return {"name": name, "mimeType": "image/png", "buffer": data}


def text_file(name: str, text: bytes) -> FilePayload:
    """A plain-text file for Page.set_input_files (the page refuses it: not an image)."""
    return {"name": name, "mimeType": "text/plain", "buffer": text}


def owner_token(page: Page) -> str:
    """The owner token the page's first visit set as a cookie (HttpOnly: scripts cannot read it)."""
    cookie = next(c for c in page.context.cookies() if c["name"] == "digits_owner")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    return cookie["value"]


def upload_as_visitor(page: Page, base_url: str, images: Sequence[np.ndarray], prefix: str = "batch") -> None:
    """Upload the images through the API in one request, as the page's visitor; named `{prefix}-{i}.png`."""
    files = [("file", (f"{prefix}-{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)]
    # The API client sends the visitor's owner token as a header: the uploads join that visitor's history.
    resp = requests.post(f"{base_url}/predict", files=files, timeout=30, headers={"X-Owner-Token": owner_token(page)})
    assert resp.status_code == 202, resp.text


def upload_and_wait_for_answer(page: Page, name: str, data: bytes) -> None:
    """Choose one PNG in the file picker and wait until its card shows the answer and the history lists it."""
    page.set_input_files("#file-input", files=[png_file(name, data)])
    card = page.locator(".card", has_text=name)
    expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#history tbody tr", has_text=name)).to_have_count(1)


def upload_refused_file(page: Page, name: str = "notes.txt") -> None:
    """Choose a file that is not an image and wait until its card shows why it was refused."""
    page.set_input_files("#file-input", files=[text_file(name, b"shopping list: eggs, milk\n")])
    card = page.locator(".card", has_text=name)
    expect(card).to_have_attribute("data-state", "error")
    expect(card.locator(".card-error")).to_contain_text("not an image")


def upload_and_leave_waiting(page: Page, name: str, data: bytes) -> Locator:
    """Choose one PNG on a stack without a worker; its card once it is queued and offers to cancel."""
    page.set_input_files("#file-input", files=[png_file(name, data)])
    card = page.locator(".card", has_text=name)
    expect(card.get_by_role("button", name=f"Cancel reading {name}")).to_be_visible()
    return card


def task_id_of(card: Locator) -> str:
    """The task id the API gave the card's upload."""
    task_id = card.get_attribute("data-task-id")
    assert task_id, "the card has no task id yet"
    return task_id


def api_status(page: Page, base_url: str, task_id: str) -> requests.Response:
    """GET /tasks/<id> as the page's visitor, through the API."""
    return requests.get(f"{base_url}/tasks/{task_id}", timeout=10, headers={"X-Owner-Token": owner_token(page)})


def api_history(page: Page, base_url: str) -> dict:
    """The visitor's first page of history, through the API."""
    resp = requests.get(f"{base_url}/predictions", timeout=10, headers={"X-Owner-Token": owner_token(page)})
    assert resp.status_code == 200, resp.text
    return resp.json()


def history_row(page: Page, name: str) -> Locator:
    """The history's row of the file of this name."""
    return page.locator("#history tbody tr", has_text=name)
