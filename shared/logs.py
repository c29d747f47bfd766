"""Logging setup shared by every entry point: readable lines, or JSON lines (LOG_FORMAT=json) for collectors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Fields a record may carry through `extra=`: they become JSON keys, so one upload can be followed from the
# web's "accepted" to the worker's "predicted" by its task id.
CONTEXT_FIELDS = ("task_id", "task_ids", "batch_size")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message, the context fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        entry |= {name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT: "json", or readable text."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at `level` in `fmt`; safe to call more than once."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
