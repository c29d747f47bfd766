"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, against a live stack."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, expect, sync_playwright

from tests.helpers import TestServices
from tests.stack import LiveStack, running_stack, web_only_stack

# As the environment notes advise: no sandbox as root, and no background calls to a network that is closed.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def browser(services: TestServices) -> Iterator[Browser]:
    """Headless Chromium from the system (Playwright's own browser download is not used)."""
    assert services.chromium.exists(), f"{services.chromium} is missing: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(services.chromium), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """gunicorn and one micro-batching worker on the test services."""
    with running_stack(database_url, redis_url) as live:
        live.wait_for_workers()  # the page should show the worker's model from the start
        yield live


@pytest.fixture(scope="module")
def waiting_stack(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """A web tier whose queue no worker serves: every upload stays PENDING, so its card can be cancelled."""
    with web_only_stack(database_url, redis_url) as live:
        yield live


@pytest.fixture
def page(browser: Browser, stack: LiveStack) -> Iterator[tuple[Page, list[str]]]:
    """The page at a desktop size; fails the test if the page logged an unexpected error."""
    yield from _checked_page(browser, stack)


@pytest.fixture
def waiting_page(browser: Browser, waiting_stack: LiveStack) -> Iterator[tuple[Page, list[str]]]:
    """The page at a desktop size on the stack without a worker; checked as `page` is."""
    yield from _checked_page(browser, waiting_stack)


def _checked_page(browser: Browser, live: LiveStack) -> Iterator[tuple[Page, list[str]]]:
    page, problems = open_page(browser, live.base_url, viewport={"width": 1200, "height": 900})
    yield page, problems
    assert real_problems(problems) == []
    expect(page.locator("#error")).to_be_hidden()  # no page-wide trouble (lost connection, retries)
    page.context.close()


@pytest.fixture
def screenshot(services: TestServices, request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """Save a full-page screenshot named after the test; returns its path."""
    services.screenshot_dir.mkdir(parents=True, exist_ok=True)

    def take(page: Page, label: str) -> Path:
        path = services.screenshot_dir / f"{request.node.name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        return path

    return take


def open_page(browser: Browser, base_url: str, **context_args) -> tuple[Page, list[str]]:
    """A fresh page on the app, and the list that collects its console errors, uncaught exceptions and
    requests to anywhere but the app (the page must work without any CDN)."""
    context = browser.new_context(base_url=base_url, **context_args)
    page = context.new_page()
    problems: list[str] = []

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"{PROVOKED} {msg.text}" if expected_refusal(msg) else msg.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def elsewhere(request: Request) -> None:
        if not request.url.startswith((f"{base_url}/", "blob:", "data:")):
            problems.append(f"request to another origin: {request.url}")

    page.on("request", elsewhere)
    page.goto("/")
    return page, problems


def expected_refusal(msg: ConsoleMessage) -> bool:
    """Whether a console error is Chromium logging an answer the page expects and explains: any refused
    POST /predict (a test provokes them), or a 409 to a cancel (the upload finished first: the page shows it)."""
    url = msg.location.get("url", "")
    if "status of" not in msg.text:
        return False
    return url.endswith("/predict") or (url.endswith("/cancel") and "status of 409" in msg.text)


def real_problems(problems: list[str]) -> list[str]:
    """The page's problems, less the refused uploads a test provoked on purpose (the browser logs their status)."""
    return [p for p in problems if not p.startswith(PROVOKED)]


# How a refusal the page expects is logged (see expected_refusal): a status a test asked for, not a fault.
PROVOKED = "expected refusal:"
