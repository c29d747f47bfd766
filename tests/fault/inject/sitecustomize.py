"""Fault injection for the fault tests' processes: on PYTHONPATH, Python imports this at start-up.

It does nothing unless a DIGITS_FAULT_* variable is set, and then only wraps functions of the project:
- DIGITS_FAULT_KILL_MARKER: preprocessing an image whose bytes contain it SIGKILLs the process (a poison image);
- DIGITS_FAULT_SLOW_MARKER / DIGITS_FAULT_SLOW_SECONDS: preprocessing such an image takes that long;
- DIGITS_FAULT_KILL_BEFORE_CACHE: the process SIGKILLs itself after its MySQL commit, before its Redis write;
- DIGITS_FAULT_TRACE_FILE: each batch's finish once its transaction committed, or a finish that raised (and the end
  of each slow preprocessing) is written there as "pid event";
- DIGITS_FAULT_KILL_AFTER_RECORD (web): a request with an Idempotency-Key that records new uploads SIGKILLs its
  process right after the key and rows are committed, before they are queued or anyone is answered. A replay of
  the key records nothing and is answered. web/ingest is patched when it is first imported, not here: a gevent
  worker must patch the standard library before redis or kombu are imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from pydantic_settings import BaseSettings, SettingsConfigDict


class FaultSettings(BaseSettings):
    """The faults this process should suffer."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_FAULT_")

    kill_marker: str = ""
    slow_marker: str = ""
    slow_seconds: float = 0.0
    kill_before_cache: bool = False
    trace_file: Path | None = None
    kill_after_record: bool = False


def _trace(cfg: FaultSettings, event: str) -> None:
    if cfg.trace_file is not None:
        with cfg.trace_file.open("a") as out:
            out.write(f"{os.getpid()} {event}\n")


def _install(cfg: FaultSettings) -> None:
    from shared import preprocessing, statuses

    preprocess, cache_final = preprocessing.preprocess, statuses.cache_final

    def faulty_preprocess(data: bytes, **options):  # type: ignore[no-untyped-def]  # the worker passes its limits
        if cfg.kill_marker and cfg.kill_marker.encode() in data:
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.slow_marker and cfg.slow_marker.encode() in data:
            time.sleep(cfg.slow_seconds)
            _trace(cfg, "slept")
        return preprocess(data, **options)

    def dying_cache_final(client, docs, ttl_seconds):  # type: ignore[no-untyped-def]
        if cfg.kill_before_cache:
            os.kill(os.getpid(), signal.SIGKILL)
        return cache_final(client, docs, ttl_seconds)

    preprocessing.preprocess = faulty_preprocess
    statuses.cache_final = dying_cache_final


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `patch` on a module right after it is first imported (and not before anyone imports it)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then(spec.loader.exec_module, self.patch)  # type: ignore[method-assign]
                return spec
        return None


def _then(run: Callable[[ModuleType], None], patch: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    """A module loader's exec_module that patches the module once it has run."""
    def run_and_patch(module: ModuleType) -> None:
        run(module)
        patch(module)
    return run_and_patch


def _trace_finishes(pipeline: ModuleType) -> None:
    """Trace each batch's finish once its transaction has ended: committed ("finished") or not ("finish-failed").

    A trace written inside the transaction would race the test reading the row against the commit.
    """
    finish = pipeline.Pipeline._finish

    def traced_finish(self, claim, results):  # type: ignore[no-untyped-def]
        try:
            docs, hold = finish(self, claim, results)
        except Exception as exc:
            _trace(_settings, "finish-failed " + ",".join(results) + f" {type(exc).__name__}")
            raise
        _trace(_settings, "finished " + ",".join(f"{t}={d['state']}" for t, d in docs.items()))
        return docs, hold

    pipeline.Pipeline._finish = traced_finish


def _kill_after_keyed_record(ingest: ModuleType) -> None:
    record = ingest.Ingest.record

    def dying_record(self, group):  # type: ignore[no-untyped-def]
        outcomes = record(self, group)
        if any(s.keyed is not None and s.fresh(o) for s, o in zip(group, outcomes, strict=True)):
            os.kill(os.getpid(), signal.SIGKILL)  # committed, not yet queued nor answered
        return outcomes

    ingest.Ingest.record = dying_record


_settings = FaultSettings()
if _settings.kill_marker or _settings.slow_marker or _settings.kill_before_cache or _settings.trace_file:
    _install(_settings)
if _settings.trace_file:
    sys.meta_path.insert(0, _AfterImport("worker.pipeline", _trace_finishes))
if _settings.kill_after_record:
    sys.meta_path.insert(0, _AfterImport("web.ingest", _kill_after_keyed_record))
