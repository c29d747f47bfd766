"""gunicorn's start empties the metrics folder of prometheus_client's files only, whatever else the folder holds."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import gunicorn_conf
from gunicorn_conf import clear_metrics_dir
from shared.config import REPO_ROOT, child_environment

# Every metric type, and a gauge in every multiprocess mode, in a process in multiprocess mode.
WRITE_METRICS = """
from prometheus_client import Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import Gauge as G

Counter("c", "c").inc()
Histogram("h", "h").observe(1)
Summary("s", "s").observe(1)
for mode in sorted(G._MULTIPROC_MODES):
    Gauge("g_" + mode, "g", multiprocess_mode=mode).set(1)
"""

PROMETHEUS_FILES = ["counter_12.db", "histogram_12.db", "summary_345.db", "gauge_all_12.db", "gauge_liveall_12.db",
                    "gauge_livesum_678.db", "gauge_mostrecent_9.db", "gauge_livemostrecent_9.db", "gauge_max_1.db"]
OTHER_FILES = ["notes.txt", "counter.db", "counter_12.db.bak", "counter_abc.db", "gauge_12.db", "gauge_bogus_12.db",
               "my_counter_12.db", ".counter_12.db", "histogram_12.dbx"]


def write(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_only_prometheus_files_go_and_everything_else_stays(tmp_path: Path) -> None:
    write(tmp_path, PROMETHEUS_FILES + OTHER_FILES)
    # Sub-folders stay, even one named like a metrics file, and so does what they hold.
    for sub in ("sub", "counter_99.db"):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub, ["counter_1.db", "keep.txt"])

    removed = clear_metrics_dir(tmp_path)

    assert sorted(p.name for p in removed) == sorted(PROMETHEUS_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OTHER_FILES + ["sub", "counter_99.db"])
    for sub in ("sub", "counter_99.db"):
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == ["counter_1.db", "keep.txt"]


def test_a_missing_folder_is_created(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b" / "metrics"
    assert clear_metrics_dir(folder) == []
    assert folder.is_dir()


def test_the_files_prometheus_client_really_writes_are_recognised(tmp_path: Path) -> None:
    env = child_environment(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", WRITE_METRICS], cwd=REPO_ROOT, env=env, check=True, timeout=60)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 3 + 10, written  # counter, histogram, summary, and a gauge file per mode
    write(tmp_path, ["keep.txt"])

    assert sorted(p.name for p in clear_metrics_dir(tmp_path)) == written
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_on_starting_clears_the_configured_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    write(folder, ["counter_1.db", "keep.txt"])
    monkeypatch.setattr("shared.config.get_settings", lambda: SimpleNamespace(prometheus_multiproc_dir=folder))

    gunicorn_conf.on_starting(SimpleNamespace(log=logging.getLogger("test.gunicorn")))

    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
