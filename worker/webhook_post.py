"""One webhook POST: to the address the target guard checked, no redirects, a bounded answer, a total timeout.

The worker's delivery loop (worker/webhooks.py) gives each sender thread a Poster; the target (shared/webhooks.py's
check_target) was resolved and checked for this attempt, and the Poster connects to that address, never resolving
the name again, so DNS rebinding cannot reach another host. For https, SNI and the certificate check use the URL's
host. A Poster keeps its connection to each checked address open for KEEP_ALIVE_SECONDS after an answer read to its
end (HTTP/1.1 keep-alive): under load a receiver gets many webhooks a second, and a TCP (and TLS) handshake for each
cost the worker and the receiver more than the POST itself. http.client, not urllib3: the same exchange for a
third of the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import logging
import math
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from shared.webhooks import Target

logger = logging.getLogger(__name__)

USER_AGENT = "digits-webhooks/1"
# How long an idle connection is kept for the next POST: under the usual servers' keep-alive timeouts (gunicorn
# 2 s, Node and Apache 5 s), so a receiver rarely closes one as it is reused; when it does, the POST is made again
# on a new connection (below).
KEEP_ALIVE_SECONDS = 1.0
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


class _ConnectFailed(OSError):
    """The TCP connection could not be made (its cause tells why)."""


class _Stale(Exception):
    """A kept connection turned out closed by the receiver before it answered anything."""


# What a network exchange may raise; anything else is a bug of the caller's (a header with a newline) and raises.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_Key = tuple[str, str, int, str]  # scheme, checked address, port, host: a connection serves exactly one


class Poster:
    """One sender thread's POSTs, each connection kept open briefly for the next POST to the same target."""

    def __init__(self, timeout: float = 5.0, max_answer_bytes: int = 65536, *,
                 keep_alive: float = KEEP_ALIVE_SECONDS, ssl_context: ssl.SSLContext | None = None) -> None:
        if ssl_context is not None and not (ssl_context.check_hostname
                                            and ssl_context.verify_mode == ssl.CERT_REQUIRED):
            raise ValueError("the TLS context must check certificates and host names")
        self._timeout = timeout
        self._max_answer_bytes = max_answer_bytes
        self._keep_alive = keep_alive
        self._ssl_context = ssl_context
        self._idle: dict[_Key, tuple[http.client.HTTPConnection, float]] = {}

    def send(self, target: Target, headers: dict[str, str], body: bytes) -> Attempt:
        """POST body to the target's checked address once; follows no redirects, never raises for network errors."""
        key = (target.scheme, target.address, target.port, target.host)
        self.close_idle()
        kept = self._idle.pop(key, None)
        if kept is not None:
            attempt, reusable, stale = self._post(kept[0], target, headers, body)
            if not stale:
                return self._done(key, kept[0], attempt, reusable)
            # The receiver closed the kept connection while it was idle, before reading anything from it:
            # the usual keep-alive race; the webhook goes again on a new connection (receivers drop repeats).
        conn = self._connection(target)
        attempt, reusable, _ = self._post(conn, target, headers, body)
        return self._done(key, conn, attempt, reusable)

    def close_idle(self, everything: bool = False) -> None:
        """Close the connections idle for KEEP_ALIVE_SECONDS or more (all of them with everything)."""
        now = time.monotonic()
        for key, (conn, since) in list(self._idle.items()):
            if everything or now - since >= self._keep_alive:
                del self._idle[key]
                conn.close()

    def _done(self, key: _Key, conn: http.client.HTTPConnection, attempt: Attempt, reusable: bool) -> Attempt:
        if reusable and self._keep_alive > 0:
            self._idle[key] = (conn, time.monotonic())
        else:
            conn.close()
        return attempt

    def _connection(self, target: Target) -> http.client.HTTPConnection:
        """A new connection to the checked address (not opened yet)."""
        if target.scheme == "https":
            return _TLSConnection(target.address, target.port, self._timeout, target.host.rstrip("."),
                                  self._ssl_context or _default_context())
        return _Connection(target.address, target.port, timeout=self._timeout)

    def _post(self, conn: http.client.HTTPConnection, target: Target, headers: dict[str, str],
              body: bytes) -> tuple[Attempt, bool, bool]:
        """One exchange on conn: the attempt, whether conn may serve another, whether a kept conn was found closed."""
        expired = threading.Event()
        # Socket timeouts bound each read, not the whole exchange (a receiver could drip a byte at a time):
        # the watchdog cuts the connection when the total time is up.
        watched = _WATCHDOG.watch(self._timeout, conn, expired)
        try:
            attempt, reusable = _exchange(conn, target, headers, body, self._max_answer_bytes, expired)
            return attempt, reusable, False
        except _Stale:
            return Attempt(status=None, error="the kept connection was closed"), False, True
        except _NETWORK_ERRORS as exc:
            error = _describe(exc, self._timeout, expired.is_set())
            logger.debug("Webhook POST to %s failed: %s", target.host, error)
            return Attempt(status=None, error=error), False, False
        finally:
            _WATCHDOG.unwatch(watched)  # once it returns, the watchdog never touches this socket again


def send(target: Target, headers: dict[str, str], body: bytes, timeout: float = 5.0,
         max_answer_bytes: int = 65536, *, ssl_context: ssl.SSLContext | None = None) -> Attempt:
    """One POST on a connection of its own, closed after (a Poster's, without keep-alive)."""
    return Poster(timeout, max_answer_bytes, keep_alive=0, ssl_context=ssl_context).send(target, headers, body)


class _Connection(http.client.HTTPConnection):
    """http.client's connection, with a failed TCP connect told apart from what follows."""

    def connect(self) -> None:
        try:
            super().connect()
        except OSError as exc:
            raise _ConnectFailed(str(exc)) from exc


class _TLSConnection(_Connection):
    """https to a checked address: SNI and the certificate check use the URL's host, never the address."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, address: str, port: int, timeout: float, server_name: str, context: ssl.SSLContext) -> None:
        super().__init__(address, port, timeout=timeout)
        self._server_name = server_name  # certificates name hosts without the final dot
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's trusted certificates, host names checked: loaded once per process, shared by its senders."""
    return ssl.create_default_context()


class _Watchdog:
    """One thread per process that cuts the connections whose time is up (a timer thread per POST cost more than
    the POST itself)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, http.client.HTTPConnection, threading.Event]] = {}
        self._ids = itertools.count()
        self._pid: int | None = None
        self._wakes_at = math.inf  # when the thread wakes next by itself (inf: only when notified)

    def watch(self, timeout: float, conn: http.client.HTTPConnection, expired: threading.Event) -> int:
        """Cut `conn` (and set `expired`) `timeout` seconds from now, unless unwatched first; a key to unwatch."""
        with self._cond:
            if self._pid != os.getpid():  # started in the process that sends: threads do not survive a fork
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="webhook-watchdog", daemon=True).start()
            key = next(self._ids)
            deadline = time.monotonic() + timeout
            # Woken only when it would otherwise wake after this deadline: it sees this one when it wakes anyway
            # (waking a thread per POST cost as much as the POST). Unwatching never wakes it either, so under
            # load it wakes about once per timeout, at a deadline whose POST has long returned.
            if deadline < self._wakes_at:
                self._wakes_at = deadline
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
                nearest = min((deadline for deadline, _, _ in self._watched.values()), default=math.inf)
                self._wakes_at = nearest
                self._cond.wait(None if nearest == math.inf else max(0.0, nearest - now))


_WATCHDOG = _Watchdog()


def _cut(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The watchdog: mark the time as up and shut the socket, which wakes a blocked read or write."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        # socket.socket's own shutdown, not SSLSocket's: that one also drops its TLS state under the reader.
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _exchange(conn: http.client.HTTPConnection, target: Target, headers: dict[str, str], body: bytes,
              max_answer_bytes: int, expired: threading.Event) -> tuple[Attempt, bool]:
    """Connect if need be, POST, read the status and at most max_answer_bytes; the attempt, and whether the
    connection may carry another request (the answer was read to its end and the receiver keeps it open)."""
    kept = conn.sock is not None
    if not kept:
        conn.connect()
        if expired.is_set():  # the watchdog fired before the socket existed
            raise TimeoutError("deadline passed while connecting")
    fixed = {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    sent = {name: value for name, value in headers.items() if name.lower() not in _SENDER_HEADERS} | fixed
    try:
        conn.request("POST", target.path_and_query, body=body, headers=sent)
        response = conn.getresponse()
    except ConnectionError as exc:  # reset, broken pipe, or closed without a word
        if kept and not expired.is_set():
            raise _Stale from exc
        raise
    if expired.is_set():
        # Cut while the headers arrived: http.client takes the cut for their end, so this status is not an answer.
        raise TimeoutError("deadline passed while the answer's headers arrived")
    ended = _drain(response, max_answer_bytes)
    status = response.status
    reusable = ended and not response.will_close and not expired.is_set()
    if 200 <= status < 300:
        return Attempt(status=status, error=None), reusable
    if 300 <= status < 400:
        return Attempt(status=status, error=f"HTTP {status}: redirects are not followed"), reusable
    return Attempt(status=status, error=f"HTTP {status}"), reusable


def _drain(response: http.client.HTTPResponse, max_answer_bytes: int) -> bool:
    """Read at most max_answer_bytes of the answer and drop them; whether it was read to its end."""
    left = max_answer_bytes
    try:
        while left > 0 and not response.isclosed():
            chunk = response.read(min(left, _READ_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
    except _NETWORK_ERRORS as exc:
        # The status has arrived, and it is the answer; the body is read only to be polite.
        logger.debug("Webhook answer's body not read to its end: %s", exc)
        return False
    return response.isclosed()


def _describe(exc: BaseException, timeout: float, expired: bool) -> str:
    """A short sentence for a failed exchange, for the delivery's record and the log."""
    cause = exc.__cause__ if isinstance(exc, _ConnectFailed) and exc.__cause__ is not None else exc
    if expired or isinstance(cause, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, _ConnectFailed):
        return f"could not connect: {getattr(cause, 'strerror', None) or cause}"[:300]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc}"[:300]
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
