"""Start Flower only behind real credentials: `python -m worker.flower [more flower options]`.

Flower shows every task and can shut workers down, so it never runs without basic auth, and outside local
mode (FLOWER_LOCAL_MODE, which `make run` sets) it refuses the example or an obviously weak password.

Flower runs in this process, on a Celery app of its own built from the broker URL alone (no database, no
task modules). The credentials reach it through its own environment option FLOWER_BASIC_AUTH, never through
the command line, so `ps` never shows them. Flower itself asks the workers to send task events (it broadcasts
`enable_events` at start and every few seconds, its `enable_events` option, on by default).
"""

from __future__ import annotations

import logging
import sys

from shared.config import FlowerSettings, expose_to_library
from shared.credentials import CredentialsRefused, check_basic_auth
from shared.logs import configure_logging

log = logging.getLogger(__name__)

# Flower's own environment option for its basic auth (flower/command.py, apply_env_options).
AUTH_VARIABLE = "FLOWER_BASIC_AUTH"


def check_options(argv: list[str]) -> None:
    """Refuse Flower options that carry credentials (CredentialsRefused): `ps` would show them."""
    for arg in argv:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if arg.startswith("-") and name == "basic_auth":
            raise CredentialsRefused("give Flower's credentials in FLOWER_BASIC_AUTH, not on the command line")


def flower_argv(settings: FlowerSettings, argv: list[str]) -> list[str]:
    """The `celery` command line that runs Flower: its in-memory task limit first, the operator's options after."""
    return ["flower", f"--max_tasks={settings.flower_max_tasks}", *argv]


def run_flower(settings: FlowerSettings, auth: str, argv: list[str]) -> int:
    """Run Flower in this process until it stops, on a Celery app that needs only the broker."""
    from shared.queue import make_celery

    # Flower reads its FLOWER_* options from os.environ; the checked value may have come from .env instead.
    expose_to_library(AUTH_VARIABLE, auth)
    app = make_celery(settings.redis_url, settings.queue_name, main="digits-flower")
    args = flower_argv(settings, argv)
    log.info("starting Flower: celery %s (basic auth from %s)", " ".join(args), AUTH_VARIABLE)
    # Celery.start returns the exit code of a click Exit, and None when Flower returns (SIGTERM, Ctrl-C).
    return app.start(args) or 0


def main(argv: list[str] | None = None) -> int:
    """Check the credentials and the options, then run Flower in this process with them."""
    configure_logging()
    settings = FlowerSettings()  # REDIS_URL comes from the environment
    options = sys.argv[1:] if argv is None else argv
    try:
        auth = check_basic_auth(settings.flower_basic_auth, settings.flower_local_mode)
        check_options(options)
    except CredentialsRefused as exc:
        log.error("Flower not started: %s", exc)
        return 2
    return run_flower(settings, auth, options)


if __name__ == "__main__":
    raise SystemExit(main())
