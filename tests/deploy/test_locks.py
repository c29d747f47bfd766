"""The hash-pinned locks (requirements/locks/, `make lock`) agree with the requirements kept by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.test_docker import requirement_closure

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
# Each lock and the hand-kept files it is compiled from (Makefile: lock).
LOCKS = {
    "dev.txt": ["dev.txt"],
    "local.txt": ["local.txt"],
    "web.txt": ["web.txt", "flower.txt"],
    "worker.txt": ["worker.txt"],
    "training.txt": ["training.txt"],
    "gpu.txt": ["gpu.txt"],
    "uv.txt": ["uv.txt"],
}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def _pins(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line (continuation lines and comments skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[_name(match.group(1))] = match.group(3)
    return pins


def _entries(lock: Path) -> list[str]:
    """The lock's requirement entries, each with its continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", lock.read_text())
    return [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_kept_by_hand_is_locked_at_its_version(lock: str) -> None:
    locked = _pins(REQUIREMENTS / "locks" / lock)
    for source in LOCKS[lock]:
        for path in requirement_closure(REQUIREMENTS / source):
            for name, version in _pins(path).items():
                assert locked.get(name) == version, f"{path.name} pins {name}=={version}; run `make lock`"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_package_is_pinned_with_hashes(lock: str) -> None:
    entries = _entries(REQUIREMENTS / "locks" / lock)
    assert entries
    for entry in entries:
        assert PIN.match(entry) and "--hash=sha256:" in entry, entry


def test_the_web_image_lock_holds_no_tensorflow() -> None:
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(_pins(REQUIREMENTS / "locks" / "web.txt"))


def test_the_worker_image_lock_holds_no_tensorflow() -> None:
    locked = set(_pins(REQUIREMENTS / "locks" / "worker.txt"))
    assert "onnxruntime" in locked and not {"tensorflow", "tensorflow-cpu", "keras", "h5py"} & locked


def _third_party_imports(folders: list[str]) -> set[str]:
    """Top-level modules imported anywhere (lazily too) in the folders' code, less the standard library and ours."""
    import ast
    import sys

    ours = {"shared", "web", "worker", "training", "evaluation", "bench", "scripts", "tests"}
    found: set[str] = set()
    for folder in folders:
        for path in (REQUIREMENTS.parent / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ours and m != "__future__"}


def test_the_training_lock_holds_every_package_training_imports() -> None:
    # make model installs only the local lock, and the trainer image only the training one: a package that the
    # dev lock happens to bring would pass every test and fail the first fresh `make model` (as scipy did).
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    locked = _pins(REQUIREMENTS / "locks" / "training.txt")
    for module in sorted(_third_party_imports(["training", "shared"])):
        names = {_name(d) for d in distributions.get(module, [module])}
        assert names & set(locked), f"training imports {module} ({', '.join(sorted(names))}), not in locks/training.txt"
