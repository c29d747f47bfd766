"""Log lines: JSON objects that carry the task ids, when LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging

from shared.logs import JsonFormatter


def test_a_json_line_carries_the_message_and_the_task_ids():
    record = logging.LogRecord("web.api", logging.INFO, __file__, 1, "accepted %d upload(s)", (2,), None)
    record.task_ids = ["a", "b"]

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "accepted 2 upload(s)"
    assert entry["task_ids"] == ["a", "b"] and entry["level"] == "INFO" and entry["logger"] == "web.api"
    assert entry["time"].endswith("+00:00")


def test_an_exception_is_part_of_the_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
