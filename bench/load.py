"""A small closed-loop HTTP load generator: asyncio, raw HTTP/1.1 keep-alive, so the client stays cheap.

Each virtual client uploads, then long-polls its status URL until the prediction is final, then
starts again; or, in one-request mode, uploads with `?wait=` and gets the answer in that one request.
Only SUCCESS counts as a prediction; latency is upload start to final answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BOUNDARY = "benchboundary7f3a"


@dataclass(frozen=True)
class Sample:
    """One test image and its label."""

    png: bytes
    label: int


def multipart(files: Sequence[tuple[str, bytes]], fields: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with each file in the field `file` (and plain fields), and its Content-Type."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (fields or {}).items()]
    for name, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


class Connection:
    """One keep-alive HTTP/1.1 connection (reopened when the server closes it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._writer.write(head.encode() + b"\r\n" + body)
        await self._writer.drain()
        assert self._reader is not None
        header = await self._reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        data = await self._reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0"):
            await self.close()
        return status, data

    async def close(self) -> None:
        """Close the connection (the next request reopens it)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


@dataclass
class Tally:
    """What one scenario measured after warm-up."""

    latencies: list[float] = field(default_factory=list)
    images: int = 0
    correct: int = 0
    failures: int = 0
    fallbacks: int = 0  # one-request uploads answered 202 (not final in time, or no waiting slot)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        """Count one error by kind."""
        self.errors[what] = self.errors.get(what, 0) + 1


async def _await_final(conn: Connection, status_url: str) -> list[dict]:
    """Long-poll a status URL (one task, or several with ?ids=) until every document is final."""
    url = f"{status_url}{'&' if '?' in status_url else '?'}wait=10"
    while True:
        status, body = await conn.request("GET", url)
        if status != 200:
            raise RuntimeError(f"status {status}")
        answer = json.loads(body)
        docs = answer.get("tasks", [answer])
        if all(doc["state"] in ("SUCCESS", "FAILURE", "CANCELED") for doc in docs):
            return docs


ONE_REQUEST_WAIT_S = 10


@dataclass(frozen=True)
class Contract:
    """What each upload asks of the service's contract: an Idempotency-Key, a webhook (both off by default)."""

    keyed: bool = False
    webhook: str | None = None

    def fields(self) -> dict[str, str]:
        """The form fields of an upload."""
        return {"webhook": self.webhook} if self.webhook else {}

    def headers(self, owner: str) -> dict[str, str]:
        """The headers of an upload: a fresh key per request (as a client that retries only on failure sends)."""
        return {"X-Owner-Token": owner, "Idempotency-Key": uuid.uuid4().hex} if self.keyed else {}


async def _predict(conn: Connection, body: bytes, ctype: str, one_request: bool, tally: Tally,
                   headers: Mapping[str, str] | None = None) -> list[dict] | None:
    """Upload, and get the final documents: in the same request, or by long-polling; None after an error."""
    path = f"/predict?wait={ONE_REQUEST_WAIT_S}" if one_request else "/predict"
    status, raw = await conn.request("POST", path, body, ctype, headers)
    if status == 200 and one_request:
        answer = json.loads(raw)
        return answer.get("tasks", [answer])
    if status != 202:
        tally.error(f"upload {status}")
        return None
    tally.fallbacks += one_request
    return await _await_final(conn, json.loads(raw)["status_url"])


async def _pipeline_client(conn: Connection, samples: Sequence[Sample], start: int, per_request: int,
                           warm_until: float, end: float, tally: Tally, one_request: bool, contract: Contract
                           ) -> None:
    i = start
    owner = f"bench-owner-{uuid.uuid4().hex}"
    while (now := time.perf_counter()) < end:
        batch = [samples[(i + k) % len(samples)] for k in range(per_request)]
        i += per_request * 7  # clients walk the set at different strides
        body, ctype = multipart([(f"{k}.png", s.png) for k, s in enumerate(batch)], contract.fields())
        t0 = time.perf_counter()
        try:
            docs = await _predict(conn, body, ctype, one_request, tally, contract.headers(owner))
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
            tally.error(type(exc).__name__ if not isinstance(exc, RuntimeError) else str(exc))
            await conn.close()
            continue
        if docs is None or now < warm_until:
            continue
        tally.latencies.append(time.perf_counter() - t0)
        for doc, sample in zip(docs, batch, strict=True):
            if doc["state"] == "SUCCESS":
                tally.images += 1
                tally.correct += doc["digit"] == sample.label
            else:
                tally.failures += 1


async def _sync_client(conn: Connection, samples: Sequence[Sample], start: int, warm_until: float, end: float,
                       tally: Tally, answer_key: str) -> None:
    """A client of a synchronous /predict (the seed's, or the peer's) that answers the digit under answer_key."""
    i = start
    while (now := time.perf_counter()) < end:
        sample = samples[i % len(samples)]
        i += 7
        body, ctype = multipart([("digit.png", sample.png)])
        t0 = time.perf_counter()
        try:
            status, raw = await conn.request("POST", "/predict", body, ctype)
        except (OSError, asyncio.IncompleteReadError) as exc:
            tally.error(type(exc).__name__)
            await conn.close()
            continue
        if status != 200:
            tally.error(f"predict {status}")
            continue
        if now < warm_until:
            continue
        tally.latencies.append(time.perf_counter() - t0)
        tally.images += 1
        tally.correct += json.loads(raw)[answer_key] == sample.label


async def run(host: str, port: int, samples: Sequence[Sample], *, clients: int, seconds: float, warmup: float,
              per_request: int = 1, sync_answer: str | None = None, one_request: bool = False,
              contract: Contract | None = None) -> tuple[Tally, float]:
    """Run `clients` closed-loop clients for warm-up + `seconds`; the tally and the measured duration.

    With `sync_answer`, the service answers each upload in its one request with the digit under that key (the
    seed's design: "digit"; the BentoML peer: "prediction"); otherwise it is this project's API.
    """
    tally = Tally()
    conns = [Connection(host, port) for _ in range(clients)]
    start = time.perf_counter()
    warm_until, end = start + warmup, start + warmup + seconds
    if sync_answer is not None:
        jobs = [_sync_client(c, samples, n * 101, warm_until, end, tally, sync_answer) for n, c in enumerate(conns)]
    else:
        jobs = [_pipeline_client(c, samples, n * 101, per_request, warm_until, end, tally, one_request,
                                 contract or Contract()) for n, c in enumerate(conns)]
    await asyncio.gather(*jobs)
    measured = time.perf_counter() - warm_until
    for conn in conns:
        await conn.close()
    return tally, measured


def summary(tally: Tally, seconds: float) -> dict[str, float | int | dict[str, int]]:
    """Throughput, latency percentiles (ms), errors and accuracy of one scenario."""
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    return {
        "images_per_s": tally.images / seconds,
        "requests": len(lat),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "failures": tally.failures,
        "fallbacks_202": tally.fallbacks,
        "accuracy": tally.correct / tally.images if tally.images else float("nan"),
    }
