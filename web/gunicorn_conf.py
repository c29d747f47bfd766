"""gunicorn settings the code needs (`gunicorn -c python:web.gunicorn_conf ...`); the rest is on the command line."""

from __future__ import annotations

from typing import Any


def on_starting(server: Any) -> None:
    """Start from an empty metrics folder: files left by an earlier run would add old counts to new ones."""
    import shutil

    from shared.config import get_settings

    folder = get_settings().prometheus_multiproc_dir
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the shared metrics folder (multiprocess mode)."""
    from prometheus_client import multiprocess

    from shared.config import get_settings

    if get_settings().prometheus_multiproc_dir is not None:
        multiprocess.mark_process_dead(worker.pid)
