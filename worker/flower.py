"""Start Flower only behind real credentials: `python -m worker.flower [more flower options]`.

Flower shows every task and can shut workers down, so it never runs without basic auth, and outside local
mode (FLOWER_LOCAL_MODE, which `make run` sets) it refuses the example or an obviously weak password.
"""

from __future__ import annotations

import logging
import os
import sys

from shared.config import FlowerSettings
from shared.logs import configure_logging

log = logging.getLogger(__name__)

# Placeholders of .env.example / k8s/secret.example.yaml and passwords nobody should ship.
WEAK_PASSWORDS = frozenset({"change_me", "changeme", "password", "admin", "flower", "secret", "example"})
MIN_LENGTH = 12


class CredentialsRefused(ValueError):
    """Flower's credentials are missing or not fit for a deployment."""


def check_basic_auth(value: str | None, local_mode: bool) -> str:
    """The `user:password` to give Flower, or CredentialsRefused saying what is wrong."""
    if not value or ":" not in value:
        raise CredentialsRefused("FLOWER_BASIC_AUTH must be set to user:password")
    user, password = value.split(":", 1)
    if not user or not password:
        raise CredentialsRefused("FLOWER_BASIC_AUTH needs both a user and a password (user:password)")
    if not local_mode and (password.lower() in WEAK_PASSWORDS or "change_me" in password.lower()
                           or len(password) < MIN_LENGTH):
        raise CredentialsRefused(
            f"FLOWER_BASIC_AUTH's password is the example or too weak (at least {MIN_LENGTH} characters, "
            "e.g. `openssl rand -hex 12`); only a local run (FLOWER_LOCAL_MODE=1) may use such a password")
    return value


def main(argv: list[str] | None = None) -> int:
    """Check the credentials, then become `celery -A worker.celery_app flower` with them."""
    configure_logging()
    settings = FlowerSettings()
    try:
        auth = check_basic_auth(settings.flower_basic_auth, settings.flower_local_mode)
    except CredentialsRefused as exc:
        log.error("Flower not started: %s", exc)
        return 2
    args = ["celery", "-A", "worker.celery_app", "flower", f"--basic-auth={auth}",
            *(sys.argv[1:] if argv is None else argv)]
    # exec, not a child: signals reach Flower directly (it is PID 1 in a container).
    os.execvp(sys.executable, [sys.executable, "-m", *args])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
