"""How the suite is spread over pytest-xdist's processes (`make test`): unique node ids, one process per module that
shares a module fixture, the longest tests first. A plugin (pyproject.toml's addopts load it), so that
tests/test_scheduling.py can run it on a small suite of its own."""

from __future__ import annotations

from collections import Counter

import pytest
from _pytest.nodeid import coerce_node_id


@pytest.hookimpl(trylast=True)  # after conftest.py's hook has marked the tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Name, group and order the tests for pytest-xdist."""
    unique_node_ids(items)
    if distributed_by_group(config):
        for item in items:
            if shares_a_module_fixture(item):
                # One xdist worker takes the whole module (--dist loadgroup), so its stack or model starts once.
                rename(item, f"{item.nodeid}@{item.nodeid.split('::', 1)[0]}")
    # The long ones start first, longest first, then the other tests that start processes, so no worker is left with
    # one at the end while the others idle; with --no-loadscope-reorder, xdist hands out work in this order.
    items.sort(key=lambda item: (-expected_seconds(item), not starts_processes(item)))


def distributed_by_group(config: pytest.Config) -> bool:
    """Whether this run schedules by group (--dist loadgroup)."""
    # Collection runs in xdist's worker processes, which set `dist` to "no" for themselves and keep what the
    # controller asked for in `loadgroup` (xdist/remote.py): reading `dist` alone, no group ever formed.
    return bool(getattr(config.option, "loadgroup", False)) or config.getoption("dist", "no") == "loadgroup"


def rename(item: pytest.Item, node_id: str) -> None:
    """Give the test another node id: the one xdist schedules by and reports name."""
    # pytest 9 keeps the id structured in `_id`; xdist's own xdist_group renaming still writes the old `_nodeid`,
    # which pytest 9 no longer reads, so its groups would silently not form. Checked, so a pytest upgrade that
    # changes this again fails here instead of dropping or splitting tests.
    item._id = coerce_node_id(node_id)
    assert item.nodeid == node_id, f"cannot rename tests with this pytest: {item.nodeid} is not {node_id}"


def unique_node_ids(items: list[pytest.Item]) -> None:
    """Give tests that share a node id one of their own: schemathesis names every operation's test alike, and
    pytest-xdist schedules by node id, so it would run one of them and silently drop the rest."""
    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1:
            rename(item, f"{item.nodeid.rpartition('::')[0]}::{item.name}")
    repeated = [node for node, count in Counter(item.nodeid for item in items).items() if count > 1]
    assert not repeated, f"tests sharing a node id: {repeated}"


def expected_seconds(item: pytest.Item) -> float:
    """About how long the test runs when it is marked `long` (its stack, load and timers: minutes), else 0."""
    mark = item.get_closest_marker("long")
    return float(mark.args[0]) if mark and mark.args else 0.0


def starts_processes(item: pytest.Item) -> bool:
    """Whether the test starts real processes (e2e, fault and browser tests)."""
    return any(item.get_closest_marker(mark) for mark in ("e2e", "fault"))


def shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a module- or class-scoped fixture (directly or through another one)."""
    definitions = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixture closure
    if definitions is None:
        return False
    return any(d.scope in ("module", "class") for defs in definitions.name2fixturedefs.values() for d in defs)
