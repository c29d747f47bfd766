"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, against a live stack."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright

from tests.conftest import TestServices
from tests.stack import LiveStack, running_stack

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
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def elsewhere(request: Request) -> None:
        if not request.url.startswith((f"{base_url}/", "blob:", "data:")):
            problems.append(f"request to another origin: {request.url}")

    page.on("request", elsewhere)
    page.goto("/")
    return page, problems


def real_problems(problems: list[str]) -> list[str]:
    """Console errors other than the ones a test provoked on purpose (refused uploads log their status)."""
    provoked = re.compile(r"Failed to load resource: the server responded with a status of (4\d\d|503)")
    return [p for p in problems if not provoked.search(p)]
