"""scripts/fast_tier.py: `make test` skips the fast tier only when `make check` passed on exactly this tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

from scripts.fast_tier import record, remaining_marker


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_any_change_after_the_check_means_the_whole_suite(tmp_path: Path) -> None:
    root, stamp = tmp_path / "repo", tmp_path / "stamp"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    _git(root, "add", "code.py")
    _git(root, "commit", "-qm", "first")
    assert remaining_marker(stamp, root) == ""  # never checked: everything runs

    record(stamp, root)
    assert remaining_marker(stamp, root) == "services"  # checked on this tree: only the rest
    (root / "code.py").write_text("x = 2\n")
    assert remaining_marker(stamp, root) == ""  # an edit after the check
    (root / "code.py").write_text("x = 1\n")
    assert remaining_marker(stamp, root) == "services"
    (root / "new.py").write_text("y = 1\n")
    assert remaining_marker(stamp, root) == ""  # a new file after the check
    (root / "new.py").unlink()
    _git(root, "commit", "-q", "--allow-empty", "-m", "second")
    assert remaining_marker(stamp, root) == ""  # another commit
