"""`make bench`: the pipeline under closed-loop load, next to the seed's synchronous design, on the same images.

    python -m bench [--clients 16] [--seconds 20] [--warmup 5] [--json bench/results.json]

Starts gunicorn and one Celery worker against BENCH_REDIS_URL / BENCH_DATABASE_URL (flushed and
re-created), measures single uploads and the batch path, then the baseline in bench/seed_app.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.load import Sample, run, summary
from scripts.run_local import Stack, free_port, wait_for_port
from shared.config import BenchSettings, Settings, child_environment
from shared.logs import configure_logging
from shared.migrate import upgrade
from worker.mnist_data import load_idx_dir

log = logging.getLogger("bench")


def load_samples(mnist_dir: Path, count: int) -> list[Sample]:
    """The first `count` MNIST test digits as PNG uploads, with their labels."""
    import io

    from PIL import Image

    mnist = load_idx_dir(mnist_dir)
    samples = []
    for image, label in zip(mnist.x_test[:count], mnist.y_test[:count], strict=True):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        samples.append(Sample(buf.getvalue(), int(label)))
    return samples


def reset_services(bench: BenchSettings) -> None:
    """A fresh benchmark database at the schema's head and an empty Redis database."""
    url = make_url(bench.database_url)
    if url.get_backend_name() == "mysql":
        server = create_engine(url.set(database=""))
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
            conn.execute(text(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4"))
        server.dispose()
    upgrade(bench.database_url)
    redis.Redis.from_url(bench.redis_url).flushdb()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB (VmHWM for its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`."""
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text_ = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text_:
            kids.append(int(status.parent.name))
    return kids


def wait_ready(url_port: int, proc: subprocess.Popen[bytes], path: str = "/readyz", timeout: float = 60) -> float:
    """Seconds until GET path answers 200 on the port."""
    import urllib.request

    start = time.perf_counter()
    wait_for_port(url_port, proc, timeout)
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{url_port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"not ready after {timeout} s")


def worker_ready_seconds(port: int, sample: Sample, started: float) -> float:
    """Seconds from the worker's start until it answered a first prediction."""
    async def one() -> None:
        from bench.load import Connection, _await_final, multipart

        conn = Connection("127.0.0.1", port)
        body, ctype = multipart([("warm.png", sample.png)])
        status, raw = await conn.request("POST", "/predict", body, ctype)
        assert status == 202, raw
        await _await_final(conn, json.loads(raw)["status_url"])
        await conn.close()

    asyncio.run(one())
    return time.perf_counter() - started


def bench_pipeline(args: argparse.Namespace, bench: BenchSettings, samples: list[Sample]) -> dict[str, Any]:
    """The pipeline: gunicorn + one micro-batching Celery worker; single uploads then the batch path."""
    reset_services(bench)
    # All the load comes from one address: no per-client rate limit.
    # Every gunicorn thread may hold a long poll (the default keeps some free for other requests).
    env = child_environment(REDIS_URL=bench.redis_url, DATABASE_URL=bench.database_url, LOG_LEVEL="WARNING",
                            RATE_LIMIT="", MAX_LONG_POLLS=str(args.web_threads))
    port = free_port()
    stack = Stack()
    python = sys.executable
    results: dict[str, Any] = {}
    try:
        web = stack.start("web", [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
                                  str(args.web_workers), "--worker-class", "gthread", "--threads",
                                  str(args.web_threads), "web:create_app()"], env)
        results["web_ready_s"] = wait_ready(port, web)
        worker_started = time.perf_counter()
        worker = stack.start("worker", [python, "-m", "celery", "-A", "worker.celery_app", "worker",
                                        "--loglevel=WARNING", "--without-gossip", "--without-mingle"], env)
        results["worker_ready_s"] = worker_ready_seconds(port, samples[0], worker_started)

        if not args.skip_single:
            log.info("single uploads: %d clients, %.0f s after %.0f s warm-up", args.clients, args.seconds,
                     args.warmup)
            tally, seconds = asyncio.run(run("127.0.0.1", port, samples, clients=args.clients,
                                             seconds=args.seconds, warmup=args.warmup))
            results["single"] = summary(tally, seconds)
        if not args.skip_batch:
            log.info("batch path: %d clients x %d files per request", args.batch_clients, args.batch_files)
            tally, seconds = asyncio.run(run("127.0.0.1", port, samples, clients=args.batch_clients,
                                             seconds=args.seconds, warmup=args.warmup,
                                             per_request=args.batch_files))
            results["batch"] = summary(tally, seconds)
        results["worker_rss_mb"] = rss_mb(worker.pid, "VmHWM")
        results["web_rss_mb"] = max(rss_mb(pid, "VmHWM") for pid in children(web.pid))
    finally:
        stack.stop()
    return results


def bench_seed(args: argparse.Namespace, bench: BenchSettings, samples: list[Sample]) -> dict[str, Any]:
    """The seed's design on the same images: dev server, model.predict per request, one INSERT each."""
    reset_services(bench)
    port = free_port()
    stack = Stack()
    try:
        seed = stack.start("seed", [sys.executable, "-m", "bench.seed_app", "--port", str(port), "--model",
                                    str(Settings(redis_url=bench.redis_url, database_url=bench.database_url)
                                        .model_path), "--database-url", bench.database_url],
                           child_environment())
        wait_for_port(port, seed, timeout=60)
        tally, seconds = asyncio.run(run("127.0.0.1", port, samples, clients=args.clients, seconds=args.seconds,
                                         warmup=args.warmup, seed_design=True))
        return {"single": summary(tally, seconds)}
    finally:
        stack.stop()


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = ["| scenario | images/s | p50 ms | p95 ms | p99 ms | errors | accuracy |", "|---|---|---|---|---|---|---|"]
    for name, key in (("pipeline, single uploads", ("pipeline", "single")),
                      ("pipeline, batch path", ("pipeline", "batch")),
                      ("seed design (baseline)", ("seed", "single"))):
        r = results.get(key[0], {}).get(key[1])
        if r:
            rows.append(f"| {name} | {r['images_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                        f"{r['p99_ms']:.0f} | {r['errors'] + r['failures']} | {r['accuracy']:.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--batch-files", type=int, default=16)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000, help="distinct MNIST test images to upload")
    parser.add_argument("--skip-seed", action="store_true", help="leave out the seed design's baseline")
    parser.add_argument("--skip-batch", action="store_true", help="leave out the batch path")
    parser.add_argument("--skip-single", action="store_true", help="leave out single uploads")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    configure_logging()
    bench = BenchSettings()
    samples = load_samples(bench.mnist_dir, args.images)

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "clients": args.clients,
        "seconds": args.seconds,
    }
    results["pipeline"] = bench_pipeline(args, bench, samples)
    if not args.skip_seed:
        results["seed"] = bench_seed(args, bench, samples)
        if "single" in results["pipeline"]:
            results["speedup"] = (results["pipeline"]["single"]["images_per_s"]
                                  / results["seed"]["single"]["images_per_s"])
    print(table(results))  # noqa: T201 - the command's output
    p = results["pipeline"]
    print(f"\nweb ready {p['web_ready_s']:.2f} s, peak RSS {p['web_rss_mb']:.0f} MB per process; "  # noqa: T201
          f"worker ready {p['worker_ready_s']:.2f} s, peak RSS {p['worker_rss_mb']:.0f} MB; "
          f"{results['cores']} cores" + (f"; speed-up over the seed design {results['speedup']:.1f}x"
                                          if "speedup" in results else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
