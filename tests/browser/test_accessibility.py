"""Accessibility as a regression test: axe-core (WCAG 2.1 A and AA) finds nothing wrong with the page's main states.

axe-core comes bundled with axe-playwright-python and is injected by Playwright: the page loads nothing from
elsewhere (the `page` fixture fails a test whose page requested another origin or logged an error).
"""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from shared.schema import State
from tests.browser.pages import (
    HISTORY_PAGE_SIZE,
    upload_and_leave_waiting,
    upload_and_wait_for_answer,
    upload_as_visitor,
    upload_refused_file,
)
from tests.helpers import png_bytes
from tests.stack import LiveStack

pytestmark = pytest.mark.e2e

# WCAG 2.0 and 2.1, levels A and AA: the rules the page promises to keep.
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
AXE_OPTIONS: dict[str, Any] = {"runOnly": {"type": "tag", "values": WCAG_21_AA}, "resultTypes": ["violations"]}


def audit(page: Page) -> dict[str, Any]:
    """axe-core's results for the page as it is now (WCAG 2.1 A and AA rules only)."""
    return Axe().run(page, options=AXE_OPTIONS).response


def describe(violations: list[dict[str, Any]]) -> str:
    """A readable list of violations: rule, impact, help, and each element's selector and HTML."""
    lines = [f"{len(violations)} accessibility violation(s):"]
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} [{v['helpUrl']}]")
        lines += [f"    {' '.join(map(str, node['target']))}: {node['html']}" for node in v["nodes"]]
    return "\n".join(lines)


def assert_accessible(page: Page) -> dict[str, Any]:
    """Fail on any violation; axe must also have passed some rules (an audit that checked nothing proves nothing)."""
    results = audit(page)
    assert results["violations"] == [], describe(results["violations"])
    assert len(results["passes"]) > 0, "axe-core ran no rule that passed: did the audit run at all?"
    return results


def settled(page: Page) -> Page:
    """The page once its first calls are answered: the service line names the model and the history has loaded."""
    expect(page.locator("#system")).to_contain_text("Model")
    expect(page.locator("#history-page")).not_to_be_empty()
    return page


# The `page` fixture (conftest.py): a desktop-sized page and the problems it logged, checked after the test.
DesktopPage = tuple[Page, list[str]]


def test_the_empty_page_has_no_accessibility_violations(page: DesktopPage) -> None:
    tab = settled(page[0])
    expect(tab.locator("#history-page")).to_have_text("Empty")
    assert_accessible(tab)


def test_the_page_with_an_answer_has_no_accessibility_violations(page: DesktopPage, mnist: Any) -> None:
    tab = settled(page[0])
    upload_and_wait_for_answer(tab, "digit.png", png_bytes(mnist.x_test[0]))
    assert_accessible(tab)


def test_the_page_with_a_refused_file_has_no_accessibility_violations(page: DesktopPage) -> None:
    tab = settled(page[0])
    upload_refused_file(tab, "notes.txt")
    assert_accessible(tab)


def test_the_history_paged_once_has_no_accessibility_violations(page: DesktopPage, stack: LiveStack,
                                                                mnist: Any) -> None:
    tab = settled(page[0])
    upload_as_visitor(tab, stack.base_url, mnist.x_test[: HISTORY_PAGE_SIZE + 2], prefix="paged")
    tab.reload()
    label = tab.locator("#history-page")
    expect(label).to_contain_text("Page 1 of 2")
    tab.locator("#history-next").click()
    expect(label).to_contain_text("Page 2 of 2")
    expect(tab.locator("#history tbody tr")).to_have_count(2)
    assert_accessible(tab)


def test_cards_that_can_be_and_were_canceled_have_no_accessibility_violations(waiting_page: DesktopPage,
                                                                             mnist: Any) -> None:
    tab = waiting_page[0]
    expect(tab.locator("#system")).to_contain_text("No worker is running")
    upload_and_leave_waiting(tab, "waits.png", png_bytes(mnist.x_test[0]))
    canceled = upload_and_leave_waiting(tab, "canceled.png", png_bytes(mnist.x_test[1]))
    assert_accessible(tab)  # a card with its Cancel button, and the history's waiting rows

    canceled.get_by_role("button", name="Cancel reading canceled.png").click()
    expect(canceled).to_have_attribute("data-state", "canceled")
    expect(tab.locator("#history tbody tr", has_text="canceled.png")).to_contain_text(State.CANCELED.value)
    assert_accessible(tab)  # a canceled card (focus was on its button: now on the card) and a CANCELED row


def test_the_history_with_delete_controls_and_their_confirmations_has_no_accessibility_violations(
        page: DesktopPage, stack: LiveStack, mnist: Any) -> None:
    tab = settled(page[0])
    upload_as_visitor(tab, stack.base_url, mnist.x_test[:2], prefix="deletable")
    tab.reload()
    expect(tab.get_by_role("button", name="Delete deletable-1.png")).to_be_visible()
    expect(tab.get_by_role("button", name="Delete all my uploads")).to_be_visible()
    assert_accessible(tab)

    tab.get_by_role("button", name="Delete deletable-1.png").click()
    expect(tab.get_by_role("group", name="Delete deletable-1.png?")).to_be_visible()
    assert_accessible(tab)  # the inline question with its Yes and No
    tab.get_by_role("button", name="Yes, delete deletable-1.png").click()
    expect(tab.locator("#history-status")).to_have_text("Deleted deletable-1.png.")
    assert_accessible(tab)  # the announcement, and the row that took its place

    tab.get_by_role("button", name="Delete all my uploads").click()
    expect(tab.get_by_role("group", name="Delete your 1 upload? This cannot be undone.")).to_be_visible()
    assert_accessible(tab)


def test_the_audit_catches_an_injected_violation(page: DesktopPage) -> None:
    tab = settled(page[0])
    # An image without a text alternative: WCAG 1.1.1, axe-core's `image-alt` rule.
    tab.evaluate("""() => {
        const img = document.createElement("img");
        img.src = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
        img.id = "injected";
        document.querySelector("main").append(img);
    }""")
    violations = audit(tab)["violations"]
    image_alt = [v for v in violations if v["id"] == "image-alt"]
    assert image_alt, describe(violations)
    assert [node["target"] for node in image_alt[0]["nodes"]] == [["#injected"]]
    with pytest.raises(AssertionError, match="image-alt"):
        assert_accessible(tab)
