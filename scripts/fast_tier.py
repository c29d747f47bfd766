"""Whether `make check`'s fast tier already passed on exactly this tree, so that `make test` runs only the rest.

`make check` records a fingerprint of the working tree (HEAD, the diff against it, untracked files) after its
tests pass; `make test` asks for the pytest marker to run: `services` when the record matches the tree now (the
fast tier's tests need not run twice, as in CI's `make check && make test`), nothing (the whole suite) otherwise.
Any change after the check, or a check run on a subset (PYTEST_ARGS), means the whole suite runs.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

from shared.config import REPO_ROOT

RECORD = REPO_ROOT / ".venv" / ".fast-tier-passed"


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout


def tree_fingerprint(root: Path = REPO_ROOT) -> str:
    """SHA-256 of HEAD, the working tree's diff against it, and each untracked file's name and bytes."""
    digest = hashlib.sha256(_git(root, "rev-parse", "HEAD") + _git(root, "diff", "HEAD", "--binary"))
    for name in sorted(_git(root, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
        if name:
            path = root / name.decode()
            digest.update(name + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()


def record(path: Path = RECORD, root: Path = REPO_ROOT) -> None:
    """Note that the fast tier passed on the tree as it is now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tree_fingerprint(root) + "\n")


def remaining_marker(path: Path = RECORD, root: Path = REPO_ROOT) -> str:
    """The pytest `-m` expression for `make test`: the service tests alone if the fast tier passed on this tree."""
    try:
        passed = path.read_text().strip() == tree_fingerprint(root)
    except (OSError, subprocess.CalledProcessError):
        passed = False
    return "services" if passed else ""


def main(argv: list[str] | None = None) -> int:
    """`record` after a passing fast tier; `marker` prints what `make test` passes to pytest's -m."""
    parser = argparse.ArgumentParser(prog="python -m scripts.fast_tier", description=__doc__)
    parser.add_argument("command", choices=["record", "marker"])
    args = parser.parse_args(argv)
    if args.command == "record":
        record()
    else:
        sys.stdout.write(remaining_marker() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
