"""Fault injection for the fault tests' worker processes: on PYTHONPATH, Python imports this at start-up.

It does nothing unless a DIGITS_FAULT_* variable is set, and then only wraps functions of the project:
- DIGITS_FAULT_KILL_MARKER: preprocessing an image whose bytes contain it SIGKILLs the process (a poison image);
- DIGITS_FAULT_SLOW_MARKER / DIGITS_FAULT_SLOW_SECONDS: preprocessing such an image takes that long;
- DIGITS_FAULT_KILL_BEFORE_CACHE: the process SIGKILLs itself after its MySQL commit, before its Redis write;
- DIGITS_FAULT_TRACE_FILE: each finish (and the end of each slow preprocessing) is written there as "pid event".
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class FaultSettings(BaseSettings):
    """The faults this process should suffer."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_FAULT_")

    kill_marker: str = ""
    slow_marker: str = ""
    slow_seconds: float = 0.0
    kill_before_cache: bool = False
    trace_file: Path | None = None


def _trace(cfg: FaultSettings, event: str) -> None:
    if cfg.trace_file is not None:
        with cfg.trace_file.open("a") as out:
            out.write(f"{os.getpid()} {event}\n")


def _install(cfg: FaultSettings) -> None:
    from shared import predictions, preprocessing, statuses

    preprocess, finish, cache_final = preprocessing.preprocess, predictions.finish, statuses.cache_final

    def faulty_preprocess(data: bytes):  # type: ignore[no-untyped-def]
        if cfg.kill_marker and cfg.kill_marker.encode() in data:
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.slow_marker and cfg.slow_marker.encode() in data:
            time.sleep(cfg.slow_seconds)
            _trace(cfg, "slept")
        return preprocess(data)

    def traced_finish(conn, claim, results):  # type: ignore[no-untyped-def]
        docs = finish(conn, claim, results)
        _trace(cfg, "finished " + ",".join(f"{t}={d['state']}" for t, d in docs.items()))
        return docs

    def dying_cache_final(client, docs, ttl_seconds):  # type: ignore[no-untyped-def]
        if cfg.kill_before_cache:
            os.kill(os.getpid(), signal.SIGKILL)
        return cache_final(client, docs, ttl_seconds)

    preprocessing.preprocess = faulty_preprocess
    predictions.finish, statuses.cache_final = traced_finish, dying_cache_final


_settings = FaultSettings()
if _settings.kill_marker or _settings.slow_marker or _settings.kill_before_cache or _settings.trace_file:
    _install(_settings)
