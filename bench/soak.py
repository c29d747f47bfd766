"""Soak: `make run`'s whole stack under closed-loop photo-style load for minutes, watching its memory.

    python -m bench.soak --minutes 10 [--clients 16] [--interval 30] [--json soak.json]

Starts `python -m scripts.run_local` against BENCH_REDIS_URL / BENCH_DATABASE_URL (flushed and
re-created), waits for a worker, uploads user-style digits (photos, scans, JPEGs) with bench.load's
closed-loop clients, and every --interval seconds samples the RSS of each process of the stack,
Redis' used_memory and the predictions done so far. At the end it prints the series, says which
plateaued, and stops the stack (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from bench.load import Sample, Tally, run, summary
from bench.samples import load_photo_samples
from bench.stack import RunningStack, log_tail, stack_processes, start_stack, stop_stack, wait_for_workers
from shared.config import BenchSettings
from shared.logs import configure_logging

log = logging.getLogger("bench.soak")

MB = 1024 * 1024
REDIS_SERIES = "redis used_memory"


def plateaued(values: Sequence[float], rel: float = 0.05, abs_mb: float = 2.0) -> bool:
    """Whether a memory series (MB) stopped growing: last third's max <= middle third's max + max(5%, 2 MB).

    The first third is left out: it is the fill-up to the bounds a healthy process reaches (Flower's
    max_tasks, the status TTL in Redis, a worker's warm-up). A series that still grows at the end of the run
    keeps raising its maximum from the middle third to the last one; noise and a drift within the larger of
    `rel` (5%) and `abs_mb` (2 MB) do not count. Needs at least three samples.
    """
    if len(values) < 3:
        raise ValueError("a plateau needs at least three samples")
    third = len(values) // 3
    middle, last = max(values[third:len(values) - third]), max(values[len(values) - third:])
    return last - middle <= max(rel * middle, abs_mb)


def clock(seconds: float) -> str:
    """Seconds since the start as m:ss."""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def verdict(values: Sequence[float | None]) -> str:
    """'yes' / 'NO' for a series with gaps (None), '?' when fewer than three samples exist."""
    known = [v for v in values if v is not None]
    if len(known) < 3:
        return "?"
    return "yes" if plateaued(known) else "NO"


def format_table(times: Sequence[float], series: Mapping[str, Sequence[float | None]]) -> str:
    """The series as a Markdown table: one column per sample time, one row per series (MB), then plateau."""
    rows = ["| MB | " + " | ".join(clock(t) for t in times) + " | plateau |",
            "|---|" + "---:|" * len(times) + "---|"]
    for name, values in series.items():
        cells = ["-" if v is None else f"{v:.1f}" for v in values]
        cells += ["-"] * (len(times) - len(cells))
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {verdict(values)} |")
    return "\n".join(rows)


def stack_rss_mb(launcher_pid: int) -> dict[str, float]:
    """RSS (MB) of the launcher and every process below it, labelled by role; several of a role are numbered."""
    found: list[tuple[str, int, float]] = []
    for role, proc in stack_processes(launcher_pid):
        with contextlib.suppress(psutil.Error):  # it ended since it was listed
            found.append((role, proc.pid, proc.memory_info().rss / MB))
    out: dict[str, float] = {}
    for role in dict.fromkeys(r for r, _, _ in found):
        mine = sorted((pid, rss) for r, pid, rss in found if r == role)
        numbered = len(mine) > 1 or role in ("web worker", "worker child")
        for n, (_, rss) in enumerate(mine, 1):
            out[f"{role} {n}" if numbered else role] = rss
    return out


ROLE_ORDER = ("launcher", "web master", "web worker", "worker", "worker child", "flower", "redis-server",
              REDIS_SERIES)


def row_order(name: str) -> tuple[int, int, str]:
    """Sort key of a series: by role (launcher first, Redis last), then by its number."""
    role, _, number = name.rpartition(" ")
    if not number.isdigit():
        role, number = name, "0"
    rank = ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)
    return rank, int(number), name


@dataclass
class Sampler:
    """Takes the samples: RSS per process, Redis' used_memory, predictions done; keeps them as series."""

    stack: RunningStack
    redis_client: redis.Redis
    engine: Engine
    times: list[float] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)
    predictions: list[int] = field(default_factory=list)

    def take(self, elapsed: float) -> None:
        """One sample at `elapsed` seconds; fails if the stack has exited."""
        launcher = self.stack.launcher
        if launcher.poll() is not None:
            raise RuntimeError(f"the stack exited with code {launcher.returncode} during the soak:\n"
                               + log_tail(self.stack.log_path))
        values: dict[str, float] = dict(stack_rss_mb(launcher.pid))
        values[REDIS_SERIES] = self.redis_client.info("memory")["used_memory"] / MB
        if values.keys() - self.series.keys():  # a process that appeared (later): rows stay in role order
            added = {name: [None] * len(self.times) for name in values.keys() - self.series.keys()}
            self.series = dict(sorted((self.series | added).items(), key=lambda item: row_order(item[0])))
        for name, column in self.series.items():
            column.append(values.get(name))
        self.times.append(elapsed)
        self.predictions.append(predictions_done(self.engine))
        log.info("sample at %s: %d predictions; %s", clock(elapsed), self.predictions[-1],
                 ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(values.items())))


def predictions_done(engine: Engine) -> int:
    """Uploads the benchmark database holds as SUCCESS (it was emptied at the start)."""
    from shared.schema import Prediction, State

    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Prediction)
                           .where(Prediction.state == State.SUCCESS.value)) or 0


async def soak(port: int, samples: Sequence[Sample], sampler: Sampler, args: argparse.Namespace
               ) -> tuple[Tally, float] | None:
    """bench.load's closed-loop clients as a task, sampling every `args.interval` s beside them.

    None when the clients have not finished `args.drain` s after the end (uploads that never became final).
    """
    seconds = args.minutes * 60
    warmup = min(args.warmup, seconds / 2)
    load = asyncio.create_task(run("127.0.0.1", port, samples, clients=args.clients, seconds=seconds - warmup,
                                   warmup=warmup))
    start = time.monotonic()
    try:
        await asyncio.to_thread(sampler.take, 0.0)
        k = 1
        while k * args.interval < seconds and not load.done():
            await asyncio.wait({load}, timeout=max(0.0, start + k * args.interval - time.monotonic()))
            if not load.done():
                await asyncio.to_thread(sampler.take, time.monotonic() - start)
            k += 1
        # The clients finish the upload they have in flight; bounded, or a lost answer would hang the soak.
        await asyncio.wait({load}, timeout=max(0.0, start + seconds + args.drain - time.monotonic()))
        if not load.done():
            log.error("the clients are still waiting for answers %.0f s after the end: no load figures", args.drain)
        await asyncio.to_thread(sampler.take, time.monotonic() - start)
        return load.result() if load.done() else None
    finally:
        if not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load


def results_of(args: argparse.Namespace, sampler: Sampler, load: dict[str, Any] | None, ready_s: float
               ) -> dict[str, Any]:
    """Everything the soak measured, as one JSON-able document."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "minutes": args.minutes, "clients": args.clients, "interval_s": args.interval, "images": args.images,
        "workers_ready_s": ready_s,
        "times_s": sampler.times,
        "series_mb": sampler.series,
        "plateaued": {name: verdict(values) for name, values in sampler.series.items()},
        "predictions": sampler.predictions,
        "load": load,
    }


def report(results: dict[str, Any]) -> None:
    """Print the memory table, the predictions over time and the load's figures."""
    print(format_table(results["times_s"], results["series_mb"]))  # noqa: T201 - the command's output
    done, times = results["predictions"], results["times_s"]
    print("| predictions done | " + " | ".join(str(n) for n in done) + " | |")  # noqa: T201
    rate = (done[-1] - done[0]) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    print(f"\ndatabase: {done[-1]} predictions, {rate:.1f}/s over the soak")  # noqa: T201
    load = results["load"]
    if load is None:
        print("clients: no figures (they were still waiting for answers at the end)")  # noqa: T201
    else:
        kinds = ", ".join(f"{k}: {n}" for k, n in load["error_kinds"].items())
        print(f"clients: {load['images_per_s']:.1f} predictions/s, {load['errors']} errors"  # noqa: T201
              + (f" ({kinds})" if kinds else "") + f", {load['failures']} failures; latency p50 "
              f"{load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms; accuracy {load['accuracy']:.4f}; "
              f"{results['clients']} clients, {results['cores']} cores")
    grew = [name for name, v in results["plateaued"].items() if v == "NO"]
    print("every series plateaued" if not grew else f"still growing: {', '.join(grew)}")  # noqa: T201


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds (of --minutes) left out of latencies")
    parser.add_argument("--images", type=int, default=300, help="distinct photo-style uploads to cycle through")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo-style uploads")
    parser.add_argument("--web-workers", type=int, default=2, help="WEB_WORKERS for the launcher")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for a worker")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds after the end to let clients finish the uploads in flight")
    parser.add_argument("--json", type=Path, help="write everything here too")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.clients < 1:
        parser.error("--minutes, --interval and --clients must be positive")
    return args


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Start the stack, soak it, print the series and stop it (on Ctrl-C and errors too)."""
    args = parse_args(argv)
    configure_logging()
    signal.signal(signal.SIGTERM, _terminate)  # `kill` stops the stack too, like Ctrl-C
    bench = BenchSettings()
    log.info("rendering %d photo-style uploads", args.images)
    samples = load_photo_samples(bench.mnist_dir, args.images, args.seed)
    stack = start_stack(bench, args.web_workers, Path(tempfile.mkdtemp(prefix="soak-")))
    engine = create_engine(bench.database_url)
    sampler = Sampler(stack, redis.Redis.from_url(bench.redis_url), engine)
    try:
        ready_s = wait_for_workers(stack, args.ready_timeout)
        log.info("a worker is up after %.1f s; %d clients for %.1f min, a sample every %.0f s",
                 ready_s, args.clients, args.minutes, args.interval)
        measured = asyncio.run(soak(stack.port, samples, sampler, args))
    except KeyboardInterrupt:
        log.warning("interrupted: the samples so far, without the load's figures")
        if sampler.times:
            print(format_table(sampler.times, sampler.series))  # noqa: T201 - the command's output
        return 130
    finally:
        stop_stack(stack)
        engine.dispose()
    results = results_of(args, sampler, summary(*measured) if measured else None, ready_s)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
