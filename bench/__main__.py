"""`make bench`: `make run`'s stack under closed-loop load, next to the seed's synchronous design, same images.

    python -m bench [--clients 16] [--seconds 20] [--warmup 5] [--json bench/results.json]

Starts `python -m scripts.run_local` (web, worker, Flower; access log on) against BENCH_REDIS_URL /
BENCH_DATABASE_URL (flushed and re-created) and measures, with Flower attached: single uploads in
one-request mode (`POST /predict?wait=`) and as upload + long-polled status, photo-style uploads in
one-request mode, and the batch path; then one-request mode again without Flower; then the baseline in
bench/seed_app.py on the same MNIST PNGs and photos. Prints each scenario's rate against the seed's, and
what each process spent in CPU per prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.load import Contract, Sample, run, summary
from bench.samples import load_photo_samples, load_samples
from bench.stack import (
    RunningStack,
    cpu_seconds,
    reset_services,
    service_pid,
    stack_processes,
    start_stack,
    stop_stack,
    wait_for_workers,
)
from scripts.supervisor import Stack, free_port, kill_leftovers, wait_for_port
from shared.config import BenchSettings, Settings, child_environment
from shared.logs import configure_logging

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Scenario:
    """One measured load: which uploads, how many clients, files per request, and how answers are awaited."""

    key: str
    title: str
    photos: bool = False
    per_request: int = 1
    one_request: bool = True
    batch: bool = False  # --batch-clients instead of --clients
    keyed: bool = False  # an Idempotency-Key (and owner token) on every upload
    webhook: bool = False  # a webhook on every upload, to bench/receiver.py


WITH_FLOWER = (
    Scenario("one_request", "single uploads, one request (`?wait=`)"),
    Scenario("long_poll", "single uploads, upload + long-poll status", one_request=False),
    Scenario("photos", "photo-style uploads, one request", photos=True),
    Scenario("batch", "batch path (16 files per request, one request)", per_request=16, batch=True),
)
WITHOUT_FLOWER = (Scenario("one_request", "single uploads, one request, no Flower"),)
# `--contract`: the contract's costs, alternated `--rounds` times in one run so that the machine's drift hits each
# alike; plain uploads' own spread across rounds is the noise the others are compared with.
CONTRACT_KINDS = (("plain", "single uploads, one request", False, False),
                  ("keyed", "... with an Idempotency-Key", True, False),
                  ("webhook", "... with a webhook", False, True))


def contract_scenarios(rounds: int) -> tuple[Scenario, ...]:
    """The contract's scenarios, plain, keyed and webhook uploads in turn, `rounds` times."""
    return tuple(Scenario(f"{key}_{n}", f"{title} ({n})", keyed=keyed, webhook=webhook)
                 for n in range(1, rounds + 1) for key, title, keyed, webhook in CONTRACT_KINDS)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB (VmHWM for its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peaks(stack: RunningStack) -> dict[str, float]:
    """Peak RSS (MB) of the Celery worker and of the largest web worker process, and the worker's start time."""
    out: dict[str, float] = {}
    for role, proc in stack_processes(stack.launcher.pid):
        if role == "worker":  # the Celery worker itself (the threads pool: the model is inside)
            out["worker_rss_mb"] = rss_mb(proc.pid, "VmHWM")
            out["worker_started"] = proc.create_time()
        elif role == "web worker":
            out["web_rss_mb"] = max(out.get("web_rss_mb", 0.0), rss_mb(proc.pid, "VmHWM"))
    return out


def measure(stack: RunningStack, services: dict[str, int | None], scenario: Scenario, samples: Sequence[Sample],
            args: argparse.Namespace) -> dict[str, Any]:
    """One scenario's figures, with the CPU milliseconds each process spent per prediction."""
    clients = args.batch_clients if scenario.batch else args.clients
    log.info("%s: %d clients, %.0f s after %.0f s warm-up", scenario.title, clients, args.seconds, args.warmup)
    before = cpu_seconds(stack, services)
    started = time.perf_counter()
    contract = Contract(keyed=scenario.keyed, webhook=stack.webhook_url if scenario.webhook else None)
    tally, seconds = asyncio.run(run("127.0.0.1", stack.port, samples, clients=clients, seconds=args.seconds,
                                     warmup=args.warmup, per_request=scenario.per_request,
                                     one_request=scenario.one_request, contract=contract))
    elapsed = time.perf_counter() - started
    after = cpu_seconds(stack, services)
    result: dict[str, Any] = summary(tally, seconds)
    # CPU over the whole run (warm-up included) divided by the predictions of the whole run, estimated from
    # the measured rate: the ratio is what sizing needs.
    done = max(1.0, result["images_per_s"] * elapsed)
    result["cpu_ms_per_prediction"] = {role: round(1000 * (after[role] - before.get(role, 0.0)) / done, 3)
                                       for role in after}
    result["cpu_cores_busy"] = {role: round((after[role] - before.get(role, 0.0)) / elapsed, 3) for role in after}
    return result


def bench_stack(args: argparse.Namespace, bench: BenchSettings, flower: bool, scenarios: Sequence[Scenario],
                samples: dict[bool, list[Sample]]) -> dict[str, Any]:
    """`make run`'s stack (with or without Flower) and the scenarios run against it."""
    receiver = start_receiver() if any(s.webhook for s in scenarios) else None
    stack = start_stack(bench, args.web_workers, Path(tempfile.mkdtemp(prefix="bench-")), flower=flower,
                        webhook_url=receiver[1] if receiver else None)
    redis_port = make_url(bench.redis_url).port or 6379
    db_port = make_url(bench.database_url).port or 3306
    services = {"mariadb": service_pid("mariadbd", db_port), "redis": service_pid("redis-server", redis_port)}
    if receiver:  # not part of the system (a deployment's receiver runs elsewhere), but on the same cores here
        services["webhook receiver"] = receiver[0].pid
    results: dict[str, Any] = {"flower": flower}
    try:
        results["stack_ready_s"] = wait_for_workers(stack, args.ready_timeout)
        results["worker_ready_s"] = time.time() - peaks(stack)["worker_started"]
        for scenario in scenarios:
            results[scenario.key] = measure(stack, services, scenario, samples[scenario.photos], args)
        results |= {k: v for k, v in peaks(stack).items() if k.endswith("_mb")}
        if receiver:
            results["webhooks_received"] = received(receiver[1], count_webhooks(results, scenarios, args.seconds))
    finally:
        stop_stack(stack)
        if receiver:
            receiver[0].terminate()
    return results


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    """bench/receiver.py in a process of its own; it and the URL webhooks go to."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.receiver", "--port", str(port)])
    wait_for_port(port, proc, timeout=20)
    return proc, f"http://127.0.0.1:{port}/hook"


def count_webhooks(results: dict[str, Any], scenarios: Sequence[Scenario], seconds: float) -> int:
    """A lower bound of the webhooks owed: the measured predictions of the webhook scenarios (warm-up not counted)."""
    return sum(round(results[s.key]["images_per_s"] * seconds) for s in scenarios if s.webhook)


def received(webhook_url: str, expected: int, timeout: float = 60.0) -> int:
    """What the receiver counted, once it has at least `expected` (or the timeout passed)."""
    count_url = webhook_url.rsplit("/", 1)[0] + "/count"
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(count_url, timeout=5) as resp:
            count = int(resp.read())
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def bench_seed(args: argparse.Namespace, bench: BenchSettings, samples: list[Sample]) -> dict[str, Any]:
    """The seed's design on the same images: dev server, model.predict per request, one INSERT each."""
    reset_services(bench)
    port = free_port()
    stack = Stack()
    model = Settings(redis_url=bench.redis_url, database_url=bench.database_url).model_path  # type: ignore[call-arg]
    try:
        seed = stack.start("seed", [sys.executable, "-m", "bench.seed_app", "--port", str(port), "--model",
                                    str(model), "--database-url", bench.database_url], child_environment())
        wait_for_port(port, seed, timeout=60)
        tally, seconds = asyncio.run(run("127.0.0.1", port, samples, clients=args.clients, seconds=args.seconds,
                                         warmup=args.warmup, sync_answer="digit"))
        return summary(tally, seconds)
    finally:
        stack.stop()


def bench_peer(args: argparse.Namespace, bench: BenchSettings, samples: list[Sample]) -> dict[str, Any]:
    """The BentoML peer the team provides (its run.sh, two services, sync /predict), same images and load."""
    run_sh = bench.peer_dir / "run.sh"
    if not run_sh.is_file():
        raise SystemExit(f"--peer: no {run_sh} (the team's peer lives in ../shared/peers/bentoml)")
    port = free_port()
    stack = Stack()
    model = Settings(redis_url=bench.redis_url, database_url=bench.database_url).model_path  # type: ignore[call-arg]
    peer: subprocess.Popen[bytes] | None = None
    try:
        # Its first start builds its own virtual environment (BentoML, TensorFlow): minutes, hence the timeout.
        peer = stack.start("peer", ["bash", str(run_sh), str(port)], child_environment(MODEL=str(model)))
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", peer, timeout=args.peer_timeout)
        tally, seconds = asyncio.run(run("127.0.0.1", port, samples, clients=args.clients, seconds=args.seconds,
                                         warmup=args.warmup, sync_answer="prediction"))
        return summary(tally, seconds)
    finally:
        stack.stop()
        if peer is not None:
            kill_leftovers(peer)  # BentoML's own worker processes, should any outlive it


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once GET url answers 200; fail if the process dies first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the peer exited ({proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while it loads
            pass
        time.sleep(0.5)
    raise SystemExit(f"the peer was not ready at {url} after {timeout:.0f} s")


ROWS = (
    ("pipeline, single uploads, one request", ("flower", "one_request"), "mnist"),
    ("pipeline, single uploads, upload + long poll", ("flower", "long_poll"), "mnist"),
    ("pipeline, photo-style uploads, one request", ("flower", "photos"), "photos"),
    ("pipeline, batch path (16 files per request)", ("flower", "batch"), "mnist"),
    ("pipeline, single uploads, one request, no Flower", ("no_flower", "one_request"), "mnist"),
    ("BentoML peer, two services, sync /predict", ("peer", "mnist"), "mnist"),
    ("seed design, MNIST PNGs (baseline)", ("seed", "mnist"), None),
    ("seed design, photo-style uploads (baseline)", ("seed", "photos"), None),
)


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table, each pipeline row against the seed on the same images."""
    rows = ["| scenario | images/s | x seed | p50 ms | p99 ms | errors | 202 fallbacks | accuracy |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (group, key), baseline in ROWS:
        r = results.get(group, {}).get(key)
        if not r:
            continue
        seed = results.get("seed", {}).get(baseline or "", {}).get("images_per_s")
        ratio = f"{r['images_per_s'] / seed:.1f}x" if seed else ""
        rows.append(f"| {name} | {r['images_per_s']:.0f} | {ratio} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                    f"{r['errors'] + r['failures']} | {r.get('fallbacks_202', 0)} | {r['accuracy']:.4f} |")
    peer = results.get("peer", {}).get("mnist", {}).get("images_per_s")
    ours = results.get("flower", {}).get("one_request", {}).get("images_per_s")
    if peer and ours:
        rows.append(f"\npipeline one request against the BentoML peer, same run: {ours / peer:.2f}x")
    return "\n".join(rows)


def contract_table(results: dict[str, Any], scenarios: Sequence[Scenario]) -> str:
    """The contract scenarios side by side: rate, latency, and the webhooks the receiver got; then each kind's
    mean rate, its spread, and how far it is from plain uploads'."""
    rows = ["| scenario | images/s | p50 ms | p99 ms | errors | web CPU ms | worker CPU ms | MariaDB CPU ms | "
            "receiver CPU ms |", "|---|---|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        r = results.get(scenario.key)
        if r:
            cpu = r["cpu_ms_per_prediction"]
            rows.append(f"| {scenario.title} | {r['images_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                        f"{r['errors'] + r['failures']} | {cpu.get('web', 0):.2f} | {cpu.get('worker', 0):.2f} | "
                        f"{cpu.get('mariadb', 0):.2f} | {cpu.get('webhook receiver', 0):.2f} |")
    rows.append(f"\nwebhooks received: {results.get('webhooks_received', 'n/a')}\n")
    return "\n".join(rows + contract_summary(results))


def contract_summary(results: dict[str, Any]) -> list[str]:
    """Per kind of upload: the median and mean rate over its rounds, lowest and highest, and each against plain's
    (the median too, since one disturbed round moves a mean of four)."""
    rates = {key: [r["images_per_s"] for name, r in results.items() if name.startswith(f"{key}_")]
             for key, _, _, _ in CONTRACT_KINDS}
    if not rates["plain"]:
        return []
    plain_median, plain_mean = statistics.median(rates["plain"]), statistics.fmean(rates["plain"])
    rows = ["| uploads | rounds | median images/s | mean | lowest | highest | median vs plain | mean vs plain |",
            "|---|---|---|---|---|---|---|---|"]
    for key, values in rates.items():
        if values:
            median, mean = statistics.median(values), statistics.fmean(values)
            rows.append(f"| {key} | {len(values)} | {median:.0f} | {mean:.0f} | {min(values):.0f} | "
                        f"{max(values):.0f} | {100 * (median / plain_median - 1):+.1f}% | "
                        f"{100 * (mean / plain_mean - 1):+.1f}% |")
    spread = 100 * (max(rates["plain"]) - min(rates["plain"])) / plain_mean
    rows.append(f"\nnoise: plain uploads' own rounds span {spread:.1f}% of their mean")
    return rows


def cpu_table(results: dict[str, Any]) -> str:
    """CPU milliseconds per prediction of each process, per pipeline scenario with Flower."""
    scenarios = [(k, v) for k, v in results.get("flower", {}).items() if isinstance(v, dict)]
    roles = sorted({role for _, r in scenarios for role in r["cpu_ms_per_prediction"]})
    rows = ["| CPU ms per prediction | " + " | ".join(k for k, _ in scenarios) + " |",
            "|---|" + "---|" * len(scenarios)]
    for role in roles:
        rows.append(f"| {role} | " + " | ".join(f"{r['cpu_ms_per_prediction'].get(role, 0):.2f}"
                                                for _, r in scenarios) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000, help="distinct MNIST test images to upload")
    parser.add_argument("--photos", type=int, default=300, help="distinct photo-style uploads to cycle through")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for a worker")
    parser.add_argument("--skip-seed", action="store_true", help="leave out the seed design's baseline")
    parser.add_argument("--skip-no-flower", action="store_true", help="leave out the run without Flower")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--peer", action="store_true",
                        help="also the BentoML peer (../shared/peers/bentoml), after the pipeline's runs")
    parser.add_argument("--peer-timeout", type=float, default=900.0,
                        help="seconds for the peer to be ready (its first start builds its environment)")
    parser.add_argument("--contract", action="store_true",
                        help="only the contract's costs: plain, keyed and webhook uploads, alternated --rounds times")
    parser.add_argument("--rounds", type=int, default=4, help="with --contract: how many times each kind runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the results."""
    args = parse_args(argv)
    configure_logging()
    bench = BenchSettings()
    samples = {False: load_samples(bench.mnist_dir, args.images),
               True: load_photo_samples(bench.mnist_dir, args.photos, seed=0)}
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
                               "machine": platform.platform(), "clients": args.clients, "seconds": args.seconds}
    if args.contract:
        scenarios = contract_scenarios(args.rounds)
        results["contract"] = bench_stack(args, bench, True, scenarios, samples)
        print(contract_table(results["contract"], scenarios))  # noqa: T201 - the command's output
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    results["flower"] = bench_stack(args, bench, True, WITH_FLOWER, samples)
    if not args.skip_no_flower:
        results["no_flower"] = bench_stack(args, bench, False, WITHOUT_FLOWER, samples)
    if args.peer:
        results["peer"] = {"mnist": bench_peer(args, bench, samples[False])}
    if not args.skip_seed:
        results["seed"] = {"mnist": bench_seed(args, bench, samples[False]),
                           "photos": bench_seed(args, bench, samples[True])}
    print(table(results) + "\n\n" + cpu_table(results))  # noqa: T201 - the command's output
    f = results["flower"]
    print(f"\nweb peak RSS {f['web_rss_mb']:.0f} MB per process; worker ready {f['worker_ready_s']:.1f} s "  # noqa: T201
          f"after its start, peak RSS {f['worker_rss_mb']:.0f} MB; {results['cores']} cores, {args.clients} clients")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
