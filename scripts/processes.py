"""The command lines of the system's processes, written once: `make run`, `make bench` and the tests start them
from here, and tests/deploy checks that the Dockerfiles, compose and Kubernetes run the same commands."""

from __future__ import annotations

from collections.abc import Sequence

WEB_APP = "web:create_app()"
GUNICORN_CONFIG = "python:gunicorn_conf"  # gevent workers, timeouts, metrics (gunicorn_conf.py)
CELERY_APP = "worker.celery_app"


def _program(name: str, python: str | None) -> list[str]:
    """`name` as a console script (in an image), or `python -m name` (a venv's interpreter, no PATH needed)."""
    return [python, "-m", name] if python else [name]


def web(bind: str, workers: int, python: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """gunicorn serving the web app on `bind` (host:port) with `workers` processes."""
    return [*_program("gunicorn", python), "-c", GUNICORN_CONFIG, "--bind", bind, "--workers", str(workers), *extra,
            WEB_APP]


def worker(python: str | None = None, hostname: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """A Celery worker process on the queue of the settings in its environment."""
    named = ["--hostname", hostname] if hostname else []
    return [*_program("celery", python), "-A", CELERY_APP, "worker", "--loglevel=INFO", *named, *extra]


def flower(port: int, python: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Flower behind its checked credentials (worker/flower.py)."""
    return [python or "python", "-m", "worker.flower", f"--port={port}", *extra]
