"""One webhook POST: to the address the target guard checked, no redirects, a bounded answer, a total timeout.

The worker's delivery loop (worker/webhooks.py) calls send() for each attempt; the target (shared/webhooks.py's
check_target) was resolved once and checked, and this connects to that address, never resolving the name again, so
DNS rebinding cannot reach another host. For https, SNI and the certificate check use the URL's host.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import HTTPResponse
from urllib3.util.ssl_match_hostname import CertificateError

from shared.webhooks import Target

logger = logging.getLogger(__name__)

USER_AGENT = "digits-webhooks/1"
# Headers the sender sets itself, whatever the caller passes.
_SENDER_HEADERS = frozenset({"host", "content-type", "user-agent", "content-length", "transfer-encoding"})
_READ_CHUNK = 16384


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: the answer's status, or None and why none came; error is None exactly when ok."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Whether the receiver accepted the webhook (2xx; a 3xx is not, redirects are not followed)."""
        return self.status is not None and 200 <= self.status < 300


# What a network exchange may raise; anything else is a bug of the caller's (a header with a newline) and raises.
_NETWORK_ERRORS = (OSError, Urllib3Error, http.client.HTTPException, CertificateError)


def send(target: Target, headers: dict[str, str], body: bytes, timeout: float = 5.0,
         max_answer_bytes: int = 65536, *, ssl_context: ssl.SSLContext | None = None) -> Attempt:
    """POST body to the target's checked address once; follows no redirects and never raises for network errors."""
    conn = _connection(target, timeout, ssl_context)
    expired = threading.Event()
    # Socket timeouts bound each read, not the whole exchange (a receiver could drip a byte at a time):
    # the watchdog cuts the connection when the total time is up.
    watched = _WATCHDOG.watch(timeout, conn, expired)
    try:
        return _exchange(conn, target, headers, body, max_answer_bytes, expired)
    except _NETWORK_ERRORS as exc:
        error = _describe(exc, timeout, expired.is_set())
        logger.debug("Webhook POST to %s failed: %s", target.host, error)
        return Attempt(status=None, error=error)
    finally:
        _WATCHDOG.unwatch(watched)  # once it returns, the watchdog never touches this socket again
        conn.close()


class _Watchdog:
    """One thread per process that cuts the connections whose time is up (a timer thread per POST cost more than
    the POST itself)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, HTTPConnection, threading.Event]] = {}
        self._ids = itertools.count()
        self._pid: int | None = None

    def watch(self, timeout: float, conn: HTTPConnection, expired: threading.Event) -> int:
        """Cut `conn` (and set `expired`) `timeout` seconds from now, unless unwatched first; a key to unwatch."""
        with self._cond:
            if self._pid != os.getpid():  # started in the process that sends: threads do not survive a fork
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="webhook-watchdog", daemon=True).start()
            key = next(self._ids)
            deadline = time.monotonic() + timeout
            # Woken only when this deadline comes first: otherwise it wakes at an earlier one and sees this then
            # (waking a thread per POST cost as much as the POST).
            if all(deadline < other for other, _, _ in self._watched.values()):
                self._cond.notify()
            self._watched[key] = (deadline, conn, expired)
            return key

    def unwatch(self, key: int) -> None:
        """Stop watching; cuts happen under the same lock, so none is in flight once this returns."""
        with self._cond:
            self._watched.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, conn, expired) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[key]
                        _cut(conn, expired)
                nearest = min((deadline for deadline, _, _ in self._watched.values()), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - now))


_WATCHDOG = _Watchdog()


def _connection(target: Target, timeout: float, ssl_context: ssl.SSLContext | None) -> HTTPConnection:
    """A connection to the checked address; for https, SNI and the certificate check use the URL's host."""
    if target.scheme == "https":
        name = target.host.rstrip(".")  # certificates name hosts without the final dot
        return HTTPSConnection(target.address, target.port, timeout=timeout, server_hostname=name,
                               assert_hostname=name, cert_reqs=ssl.CERT_REQUIRED, ssl_context=ssl_context)
    return HTTPConnection(target.address, target.port, timeout=timeout)


def _cut(conn: HTTPConnection, expired: threading.Event) -> None:
    """The watchdog: mark the time as up and shut the socket, which wakes a blocked read or write."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        # socket.socket's own shutdown, not SSLSocket's: that one also drops its TLS state under the reader.
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _exchange(conn: HTTPConnection, target: Target, headers: dict[str, str], body: bytes,
              max_answer_bytes: int, expired: threading.Event) -> Attempt:
    """Connect, POST, read the status and at most max_answer_bytes of the answer."""
    conn.connect()
    if expired.is_set():  # the watchdog fired before the socket existed
        raise TimeoutError("deadline passed while connecting")
    fixed = {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    sent = {name: value for name, value in headers.items() if name.lower() not in _SENDER_HEADERS} | fixed
    conn.request("POST", target.path_and_query, body=body, headers=sent, preload_content=False,
                 decode_content=False)
    response = conn.getresponse()
    if expired.is_set():
        # Cut while the headers arrived: http.client takes the cut for their end, so this status is not an answer.
        response.close()
        raise TimeoutError("deadline passed while the answer's headers arrived")
    try:
        _drain(response, max_answer_bytes)
    finally:
        response.close()
    status = response.status
    if 200 <= status < 300:
        return Attempt(status=status, error=None)
    if 300 <= status < 400:
        return Attempt(status=status, error=f"HTTP {status}: redirects are not followed")
    return Attempt(status=status, error=f"HTTP {status}")


def _drain(response: HTTPResponse, max_answer_bytes: int) -> None:
    """Read at most max_answer_bytes of the answer and drop them; the connection is closed, not reused, after."""
    left = max_answer_bytes
    try:
        while left > 0:
            chunk = response.read(min(left, _READ_CHUNK), decode_content=False)
            if not chunk:
                return
            left -= len(chunk)
    except _NETWORK_ERRORS as exc:
        # The status has arrived, and it is the answer; the body is read only to be polite.
        logger.debug("Webhook answer's body not read to its end: %s", exc)


def _describe(exc: BaseException, timeout: float, expired: bool) -> str:
    """A short sentence for a failed exchange, for the delivery's record and the log."""
    # NewConnectionError derives from ConnectTimeoutError in urllib3 (history): a refused connection is no timeout.
    if isinstance(exc, NewConnectionError) and not expired:
        cause = exc.__cause__ or exc
        return f"could not connect: {getattr(cause, 'strerror', None) or cause}"[:300]
    if expired or isinstance(exc, TimeoutError | Urllib3Timeout):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, CertificateError | ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc}"[:300]
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
