"""Retention sizing: MySQL bytes per upload with its image kept and after retention removed it, measured.

    python -m bench.retention [--uploads 5000] [--seed 0] [--json PATH]

Records photo-style uploads (evaluation/userstyle.py's PNG and JPEG photos, scans and drawings of MNIST digits) the
way the web does (shared/predictions.record), finishes them the way a worker does (claim, then finish with a
prediction), and reads the predictions table's size from information_schema (data + indexes, after ANALYZE
TABLE). Then worker.retention's Purge removes every image, and the size is read again in place (InnoDB keeps the
freed pages in the table for new rows), after as many new uploads again (steady state: they fill the freed
pages), and, once those are purged too, after OPTIMIZE TABLE (what rows without images take). Steady
state: size ≈ rate × (IMAGE_RETENTION_SECONDS × bytes kept + (ROW_RETENTION_SECONDS − IMAGE_RETENTION_SECONDS)
× bytes removed). It uses a database of its own next to BENCH_DATABASE_URL's (`<name>_retention`, dropped and
re-created), so a `make bench` running meanwhile is not disturbed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from PIL import Image
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.load import Sample
from bench.samples import load_photo_samples
from shared import predictions
from shared.config import BenchSettings
from shared.db import make_engine
from shared.logs import configure_logging
from shared.migrate import upgrade
from shared.schema import State
from worker.retention import Purge

log = logging.getLogger("bench.retention")

CHUNK = 100  # uploads per INSERT, as a busy web's coalesced groups are
SOAK_RATE = 137  # README's soak rate, uploads/s, for the worked example
WEEK = 7 * 24 * 3600


def fresh_database(bench: BenchSettings) -> str:
    """A new database `<bench database>_retention` at the schema's head; its URL."""
    url = make_url(bench.database_url)
    url = url.set(database=f"{url.database}_retention")
    server = create_engine(url.set(database=""))
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
        conn.execute(text(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4"))
    server.dispose()
    rendered = url.render_as_string(hide_password=False)
    upgrade(rendered)
    return rendered


def _upload(sample: Sample, index: int) -> predictions.NewUpload:
    with Image.open(io.BytesIO(sample.png)) as image:
        width, height = image.size
        content_type = Image.MIME.get(image.format or "", "application/octet-stream")
    owner = hashlib.sha256(f"visitor-{index % 50}".encode()).hexdigest()  # a hashed owner token, as the web keeps
    return predictions.NewUpload(sample.png, f"photo-{index}.{content_type.split('/')[-1]}", content_type, width,
                                 height, owner=owner)


def _result(label: int) -> dict[str, Any]:
    """A worker's final values for a digit (the same columns the pipeline writes)."""
    probabilities = [round(0.99 if d == label else 0.01 / 9, 6) for d in range(10)]
    return {"state": State.SUCCESS.value, "digit": label, "confidence": 0.99, "probabilities": probabilities,
            "inference_ms": 0.812, "preprocess_ms": 3.214, "model_name": "strong-cnn",
            "model_version": "a" * 16, "error": None}


def record_and_finish(engine: Engine, samples: Sequence[Sample], queue: str) -> None:
    """Insert the uploads as the web does and finish them as a worker does, CHUNK at a time."""
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start:start + CHUNK]
        uploads = [_upload(s, start + i) for i, s in enumerate(chunk)]
        with engine.begin() as conn:
            predictions.record(conn, uploads, queue)
        with engine.begin() as conn:
            claim = predictions.claim(conn, [u.task_id for u in uploads], 0, "bench-worker", 60.0)
            predictions.finish(conn, claim, {u.task_id: _result(s.label) for u, s in zip(uploads, chunk, strict=True)})


def table_size(engine: Engine) -> dict[str, int]:
    """The predictions table's rows, data, index and free bytes per information_schema (after ANALYZE TABLE)."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE TABLE predictions"))
        row = conn.execute(text(
            "SELECT data_length, index_length, data_free FROM information_schema.TABLES "
            "WHERE table_schema = DATABASE() AND table_name = 'predictions'")).one()
        rows = conn.scalar(text("SELECT COUNT(*) FROM predictions")) or 0
        images = conn.scalar(text("SELECT COALESCE(SUM(LENGTH(image)), 0) FROM predictions")) or 0
    return {"rows": int(rows), "data": int(row[0]), "index": int(row[1]), "free": int(row[2]),
            "image_bytes": int(images)}


def wait_for_innodb_purge(engine: Engine, timeout: float = 60) -> None:
    """Wait (bounded) until InnoDB's purge thread has freed the old image pages (history list nearly empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            status = conn.execute(text("SHOW ENGINE INNODB STATUS")).one()[2]
        length = next((int(line.split()[-1]) for line in status.splitlines()
                       if line.startswith("History list length")), 0)
        if length < 100:
            return
        time.sleep(0.5)
    log.warning("InnoDB history list still long after %.0f s: in-place figures may lag", timeout)


def purge_all(engine: Engine, redis_url: str) -> dict[str, float]:
    """Remove every image with the worker's Purge (all rows count as past retention); its batches and seconds."""
    client = redis.Redis.from_url(redis_url)
    # A retention below zero: every final row counts as past it, whatever the clocks' sub-second parts.
    purge = Purge(engine, client, image_retention_seconds=-60.0, row_retention_seconds=None,
                  idempotency_ttl_seconds=WEEK, result_ttl_seconds=300, max_batches=10_000)
    started = time.perf_counter()
    done = purge()
    seconds = time.perf_counter() - started
    client.close()
    return {"images": done.images, "batches": done.batches, "seconds": round(seconds, 2),
            "ms_per_1000_images": round(1000 * 1000 * seconds / max(1, done.images), 1)}


def per_row(size: dict[str, int], empty: dict[str, int]) -> float:
    """Bytes of data and indexes per row, the empty table's pages taken off."""
    used = size["data"] + size["index"] - empty["data"] - empty["index"]
    return used / max(1, size["rows"])


def measure(bench: BenchSettings, uploads: int, seed: int) -> dict[str, Any]:
    """Record, finish, purge; the table's size at each step, and bytes per row kept and removed."""
    samples = load_photo_samples(bench.mnist_dir, uploads, seed)
    engine = make_engine(fresh_database(bench))
    try:
        empty = table_size(engine)
        record_and_finish(engine, samples, "retention-bench")
        kept = table_size(engine)
        purge = purge_all(engine, bench.redis_url)
        wait_for_innodb_purge(engine)
        in_place = table_size(engine)
        # As at steady state: new uploads arrive while old images go; InnoDB reuses the freed pages.
        record_and_finish(engine, samples, "retention-bench")
        refilled = table_size(engine)
        purge_all(engine, bench.redis_url)
        wait_for_innodb_purge(engine)
        with engine.connect() as conn:
            conn.execute(text("OPTIMIZE TABLE predictions"))  # rebuilds it: what the rows themselves take
        rebuilt = table_size(engine)
    finally:
        engine.dispose()
    grown = refilled["data"] + refilled["index"] - in_place["data"] - in_place["index"]
    return {"uploads": uploads, "seed": seed, "empty": empty, "kept": kept, "purge": purge,
            "purged_in_place": in_place, "refilled": refilled, "purged_rebuilt": rebuilt,
            "refill_growth_per_row": round(grown / max(1, uploads)),
            "avg_image_bytes": round(kept["image_bytes"] / max(1, kept["rows"])),
            "bytes_per_row_kept": round(per_row(kept, empty)),
            "bytes_per_row_removed": round(per_row(rebuilt, empty)),
            "bytes_per_row_removed_in_place": round(per_row(in_place, empty))}


def report(results: dict[str, Any]) -> None:
    """Print the figures and the steady-state formula with them, at README's soak rate."""
    kept, removed = results["bytes_per_row_kept"], results["bytes_per_row_removed"]
    lines = [
        f"{results['uploads']} photo-style uploads, images averaging {results['avg_image_bytes']:,} bytes",
        f"bytes per row, image kept:    {kept:,}",
        f"bytes per row, image removed: {removed:,} (after OPTIMIZE TABLE; in place "
        f"{results['bytes_per_row_removed_in_place']:,}, with {results['purged_in_place']['free']:,} bytes free "
        "for new rows)",
        f"{results['uploads']} more uploads after the purge, in place: the table grew "
        f"{results['refill_growth_per_row']:,} bytes per row (freed image pages reused)",
        f"purge: {results['purge']['images']:,} images in {results['purge']['batches']} batches, "
        f"{results['purge']['ms_per_1000_images']} ms per 1,000 images",
        "steady state = rate x (IMAGE_RETENTION_SECONDS x kept + (ROW_RETENTION_SECONDS - IMAGE_RETENTION_SECONDS)"
        " x removed)",
        f"  e.g. {SOAK_RATE}/s, images kept 7 days: {SOAK_RATE * WEEK * kept / 1e9:,.0f} GB; each further day "
        f"of rows without images: {SOAK_RATE * 86400 * removed / 1e9:,.1f} GB",
    ]
    for line in lines:
        print(line)  # noqa: T201 - the script's report


def main(argv: list[str] | None = None) -> int:
    """Measure and report; optionally write the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uploads", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    results = measure(BenchSettings(), args.uploads, args.seed)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
