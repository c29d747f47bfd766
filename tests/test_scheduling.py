"""The suite's scheduling over pytest-xdist (tests/scheduling.py), run on a small suite of its own in 2 processes."""

from __future__ import annotations

import pytest

from shared.config import REPO_ROOT

pytest_plugins = ["pytester"]

SHARED = '''
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def costly():
    """Stands for a module's stack or trained model: records each time it is made."""
    with open(Path(__file__).with_name("made.txt"), "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
    return 1

'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Two long tests, eight plain ones, eight that share a module fixture; the plugin and xdist at hand."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makepyfile(
        test_shares=SHARED + "\n".join(f"def test_{i}(costly):\n    assert costly == 1\n" for i in range(8)),
        test_plain="\n".join(f"def test_{i}():\n    pass\n" for i in range(8)),
        test_long="import pytest\n\n@pytest.mark.long(5)\ndef test_a_while():\n    pass\n\n"
                  "@pytest.mark.long(50)\ndef test_longest():\n    pass\n")
    return pytester


def _run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    # As pyproject.toml's addopts: a plugin installed beside pytest that fails to load otherwise.
    return suite.runpytest_subprocess("-p", "no:cloudcoil", "-p", "tests.scheduling", *args)


def test_a_module_fixture_is_made_once_when_its_tests_are_spread_over_processes(suite: pytest.Pytester) -> None:
    result = _run(suite, "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder")
    result.assert_outcomes(passed=18)
    made = (suite.path / "made.txt").read_text().split()
    assert len(made) == 1, f"the module fixture was made in {made}: its tests were split between processes"


def test_without_groups_the_node_ids_stay_as_collected_and_the_longest_come_first(suite: pytest.Pytester) -> None:
    result = _run(suite, "--collect-only", "-q")
    listed = [line for line in result.stdout.lines if "::" in line]
    assert listed[:3] == ["test_long.py::test_longest", "test_long.py::test_a_while", "test_plain.py::test_0"]
    assert len(listed) == 18 and not any("@" in line for line in listed)
