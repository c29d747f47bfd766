"""Logging setup shared by every entry point."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """One line per record with time, process and logger; safe to call more than once."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        force=True,
    )
