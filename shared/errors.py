"""The errors that mean "a service or the link to it is away", written once: callers retry, refuse with a 503,
or log one line and go on; anything else is a bug and propagates."""

from __future__ import annotations

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Redis refused, timed out or unreachable (OSError: a socket error redis-py did not wrap).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
# Publishing through Celery: kombu wraps what it retried (shared/queue.py's ChannelLost included).
BROKER_ERRORS: tuple[type[Exception], ...] = (KombuOperationalError, *REDIS_ERRORS)
# MySQL away, its connection lost, or no pooled connection free in time.
DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)
# Any of the above: what a worker's batch gives back its claim for and retries.
INFRA_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, *REDIS_ERRORS)
