"""gunicorn settings the code needs (`gunicorn -c python:gunicorn_conf ...`); the rest is on the command line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# The files prometheus_client's multiprocess mode writes (prometheus_client/values.py: `{type}_{pid}.db`, a gauge's
# type being `gauge_{multiprocess_mode}`), and nothing else: the folder may be shared with other files (even /tmp).
METRICS_FILE = re.compile(
    r"(counter|histogram|summary"
    r"|gauge_(all|liveall|min|livemin|max|livemax|sum|livesum|mostrecent|livemostrecent))_\d+\.db")


# gevent workers: a request that waits for its prediction (POST /predict?wait=, GET /tasks/<id>?wait=) holds a
# greenlet of a few KB instead of one of a handful of threads, so waiting clients never crowd out uploads.
# gunicorn patches the standard library in each worker before it loads the app; PyMySQL, redis-py and kombu
# are pure Python over patched sockets, and the app's threads (result listener, ingest) become greenlets.
worker_class = "gevent"
# Open connections per worker process; MAX_LONG_POLLS (900) keeps room below it for uploads.
worker_connections = 1000


def clear_metrics_dir(folder: Path) -> list[Path]:
    """Create the metrics folder if missing and delete the metrics files in it (only those); the deleted paths."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = []
    for path in sorted(folder.iterdir()):
        if METRICS_FILE.fullmatch(path.name) and not path.is_dir():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def on_starting(server: Any) -> None:
    """Start without earlier metrics files: an earlier run's would add old counts to new ones."""
    from shared.config import get_settings

    folder = get_settings().prometheus_multiproc_dir
    if folder is not None:
        removed = clear_metrics_dir(folder)
        # gunicorn's own logger: the master's logging is gunicorn's at this point.
        server.log.info("metrics folder %s: removed %d file(s) of an earlier run", folder, len(removed))


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the shared metrics folder (multiprocess mode)."""
    from prometheus_client import multiprocess

    from shared.config import get_settings

    if get_settings().prometheus_multiproc_dir is not None:
        multiprocess.mark_process_dead(worker.pid)
