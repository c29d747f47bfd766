"""Where kombu's Redis transport keeps a queue's messages, and how it writes them: the one module that knows.

Recovery (worker/recovery.py) reads the queue and kombu's `unacked` hash, and puts back messages a stalled worker
reserved, as kombu's own restore would; /system counts the waiting messages (shared/queue.py). Both go through
this module, which takes every key name from the transport options the Celery app uses (`global_keyprefix`,
`sep`, `priority_steps`, `unacked_key`, `unacked_index_key`), with kombu's own defaults, as Flower does.
tests/shared/test_kombu_redis.py pins this to the locked kombu version: it reserves a real message through kombu
and fails if kombu keeps it elsewhere or restores it differently.
"""

from __future__ import annotations

import base64
import json
from bisect import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kombu.transport.redis import PRIORITY_STEPS, Channel

from shared.tasks import PREDICT_BATCH_TASK, PREDICT_TASK


@dataclass(frozen=True)
class Layout:
    """Key names of one Celery app's Redis transport, prefix included (for a client that does not add it)."""

    prefix: str = Channel.global_keyprefix
    sep: str = Channel.sep
    priority_steps: tuple[int, ...] = tuple(PRIORITY_STEPS)
    unacked_name: str = Channel.unacked_key
    unacked_index_name: str = Channel.unacked_index_key

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Layout:
        """The layout that these `broker_transport_options` give kombu."""
        defaults = cls()
        return cls(options.get("global_keyprefix", defaults.prefix), options.get("sep", defaults.sep),
                   tuple(options.get("priority_steps", defaults.priority_steps)),
                   options.get("unacked_key", defaults.unacked_name),
                   options.get("unacked_index_key", defaults.unacked_index_name))

    @property
    def unacked(self) -> str:
        """The hash of reserved messages: delivery tag -> [payload, exchange, routing key]."""
        return self.prefix + self.unacked_name

    @property
    def unacked_index(self) -> str:
        """The sorted set of reserved messages' delivery times (tag -> Unix time)."""
        return self.prefix + self.unacked_index_name

    def queue_key(self, queue: str, priority: int = 0) -> str:
        """The list holding this queue's messages of that priority (kombu's Channel._q_for_pri)."""
        step = self.priority_steps[bisect(self.priority_steps, priority) - 1]
        return self.prefix + (f"{queue}{self.sep}{step}" if step else queue)

    def queue_keys(self, queue: str) -> list[str]:
        """Every list of this queue, highest priority (consumed first) first."""
        return [self.queue_key(queue, step) for step in self.priority_steps]

    def restore_key(self, payload: Mapping[str, Any], queue: str) -> str:
        """Where kombu's restore puts a message back: its priority's list."""
        priority = payload.get("properties", {}).get("priority") or 0
        return self.queue_key(queue, min(max(int(priority), 0), 255))


def message_task_ids(payload: Mapping[str, Any]) -> list[str]:
    """The upload ids a Celery message carries (one for digits.predict, several for digits.predict_batch)."""
    task = payload.get("headers", {}).get("task")
    if task not in (PREDICT_TASK, PREDICT_BATCH_TASK):
        return []
    body = payload.get("body", "")
    if payload.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return [str(args[0])] if task == PREDICT_TASK else [str(t) for t in args[0]]


def due(payload: Mapping[str, Any]) -> float:
    """When a message may run (a retry's ETA), as a Unix time; 0 when at once."""
    eta = payload.get("headers", {}).get("eta")
    try:
        return datetime.fromisoformat(eta).timestamp() if eta else 0.0
    except (TypeError, ValueError):
        return 0.0


def redelivered(payload: dict[str, Any], tag: str) -> dict[str, Any]:
    """The payload as kombu's restore writes it back (marked redelivered), under a new delivery tag."""
    payload.setdefault("headers", {})["redelivered"] = True
    properties = payload.setdefault("properties", {})
    properties.setdefault("delivery_info", {})["redelivered"] = True
    properties["delivery_tag"] = tag
    return payload
