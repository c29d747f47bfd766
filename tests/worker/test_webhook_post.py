"""The webhook POST (worker/webhook_post.py) against real receivers on loopback: what it sends, what it accepts,
its total timeout, TLS by the URL's name, and the connections a Poster keeps between POSTs."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook

from shared.webhooks import Target, check_target, sign
from tests.helpers import fake_resolver
from worker.webhook_post import Poster, send

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
LOCAL = frozenset({"127.0.0.1"})


# --- one POST, against a real receiver on 127.0.0.1 ---------------------------------------------------------------

@dataclass
class Seen:
    """What the receiver was asked: (method, path, headers, body) per request."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.requests]


def make_handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    """A receiver whose answer depends on the path."""

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.requests.append(("POST", self.path, dict(self.headers.items()), body))
            with contextlib.suppress(OSError):  # the sender hangs up after what it wants, as it should
                self.answer(self.path.split("?")[0])

        do_GET = do_POST

        def answer(self, path: str) -> None:
            if path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/other")
                self.end_headers()
            elif path == "/fail":
                self.send_error(500)
            elif path == "/slow":
                seen.release.wait(5)
            elif path == "/drip":  # a status line a byte at a time: no single read ever times out
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Drip: ")
                while not seen.release.wait(0.1):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            elif path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                self.wfile.write(b"x" * (1 << 20))
            elif path == "/endless":
                self.send_response(200)
                self.end_headers()
                while not seen.release.is_set():
                    self.wfile.write(b"x" * 65536)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

    return Receiver


def serve(seen: Seen, context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Run a receiver on a free port of 127.0.0.1 in a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(seen))
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        seen.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def port(seen: Seen) -> Iterator[int]:
    yield from serve(seen)


def local(port: int, path: str) -> Target:
    return check_target(f"http://127.0.0.1:{port}{path}", LOCAL)


def test_a_2xx_is_ok_and_the_receiver_sees_the_urls_host_and_the_body_unchanged(seen, port):
    body = json.dumps({"task_id": "t1", "status": "SUCCESS", "note": "é"}).encode()
    calls: list[str] = []
    # hooks.example exists only in this resolver: the sender must connect to the checked address, not look it up.
    target = check_target(f"http://hooks.example:{port}/hook?x=1", frozenset({"hooks.example"}),
                          resolve=fake_resolver({"hooks.example": ["127.0.0.1"]}, calls))
    headers = sign(SECRET, "msg_1", dt.datetime.now(dt.UTC), body.decode())

    attempt = send(target, headers | {"Host": "evil.example"}, body)

    assert attempt.ok and attempt.status == 200 and attempt.error is None and calls == ["hooks.example"]
    [(method, path, received, received_body)] = seen.requests
    assert (method, path, received_body) == ("POST", "/hook?x=1", body)
    assert received["Host"] == f"hooks.example:{port}"
    assert received["Content-Type"] == "application/json" and received["User-Agent"] == "digits-webhooks/1"
    assert Webhook(SECRET).verify(received_body, received)["task_id"] == "t1"


def test_a_5xx_is_not_ok(seen, port):
    attempt = send(local(port, "/fail"), {}, b"{}")
    assert (attempt.ok, attempt.status) == (False, 500) and "500" in (attempt.error or "")


def test_a_redirect_is_not_followed_and_not_ok(seen, port):
    attempt = send(local(port, "/redirect"), {}, b"{}")
    time.sleep(0.1)
    assert (attempt.ok, attempt.status) == (False, 302) and "redirect" in (attempt.error or "")
    assert seen.paths() == ["/redirect"]


def test_a_receiver_slower_than_the_timeout_is_a_timeout(seen, port):
    started = time.monotonic()
    attempt = send(local(port, "/slow"), {}, b"{}", timeout=0.5)
    assert time.monotonic() - started < 2
    assert attempt.status is None and not attempt.ok and "timed out" in (attempt.error or "")


def test_the_timeout_bounds_the_whole_exchange_not_each_read(seen, port):
    started = time.monotonic()
    attempt = send(local(port, "/drip"), {}, b"{}", timeout=0.5)
    assert time.monotonic() - started < 2
    assert attempt.status is None and "timed out" in (attempt.error or "")


@pytest.mark.parametrize("path", ["/big", "/endless"])
def test_a_large_answer_is_read_only_so_far(seen, port, path):
    started = time.monotonic()
    attempt = send(local(port, path), {}, b"{}", timeout=5)  # well under the timeout: the bounded read returned
    assert time.monotonic() - started < 2
    assert attempt.ok and attempt.status == 200


def test_nobody_listening_is_a_failed_attempt_not_an_exception():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    attempt = send(local(free, "/"), {}, b"{}", timeout=1)
    assert attempt.status is None and "connect" in (attempt.error or "")


# --- https: SNI and the certificate use the URL's name, the connection the checked address --------------------------

def certificate_for(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate and key (PEM) for one DNS name."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls(tmp_path, seen) -> Iterator[tuple[int, ssl.SSLContext]]:
    """An https receiver for hooks.example on 127.0.0.1, and a client context that trusts its certificate."""
    cert, key = certificate_for("hooks.example")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_context.sni_callback = lambda sock, name, ctx: seen.server_names.append(name)
    for port in serve(seen, server_context):
        yield port, ssl.create_default_context(cadata=cert.decode())


def test_https_uses_the_name_for_sni_and_the_certificate(seen, tls):
    port, client_context = tls
    resolve = fake_resolver({"hooks.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    allowed = frozenset({"hooks.example", "other.example"})

    good = send(check_target(f"https://hooks.example:{port}/hook", allowed, resolve), {}, b"{}",
                ssl_context=client_context)
    wrong = send(check_target(f"https://other.example:{port}/hook", allowed, resolve), {}, b"{}",
                 ssl_context=client_context)

    assert good.ok and seen.server_names[0] == "hooks.example"
    assert seen.requests[0][2]["Host"] == f"hooks.example:{port}"
    assert wrong.status is None and "certificate" in (wrong.error or "")
    assert len(seen.requests) == 1  # nothing was sent to a host whose certificate did not match




def test_a_receiver_dripping_its_tls_handshake_is_cut_at_the_timeout():
    """A TLS record header promising 16 KB, then a byte every 0.2 s: no read ever times out, the total must."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KB is coming...
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"\x00")  # ...one byte at a time
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    target = check_target(f"https://127.0.0.1:{server.getsockname()[1]}/hook", LOCAL)
    started = time.monotonic()
    attempt = send(target, {}, b"{}", timeout=1.0)
    took = time.monotonic() - started
    stop.set()
    server.close()
    assert attempt.status is None and "timed out" in (attempt.error or "")
    assert took < 3.0  # cut at the timeout, not left to drip for as long as the receiver likes


# --- connections kept between POSTs (HTTP/1.1 keep-alive) ----------------------------------------------------------

@dataclass
class Connections:
    """What a keep-alive receiver saw: for each connection, the address it came to and its requests' paths."""

    opened: list[tuple[str, list[str]]] = field(default_factory=list)
    hang_up: bool = False  # close each connection after its answer without saying so, as an idle timeout does


def keep_alive_receiver(connections: Connections) -> type[BaseHTTPRequestHandler]:
    """An HTTP/1.1 receiver that answers 204 (or 1 MB on /big) and keeps connections open unless told not to."""

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self.paths: list[str] = []
            connections.opened.append((self.connection.getsockname()[0], self.paths))

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.paths.append(self.path)
            big = self.path == "/big"
            self.send_response(200 if big else 204)
            if big:
                self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            with contextlib.suppress(OSError):  # the sender hangs up after the 64 KB it reads
                self.wfile.write(b"x" * (1 << 20) if big else b"")
            self.close_connection = connections.hang_up

    return Receiver


@pytest.fixture
def kept() -> Iterator[tuple[Connections, int]]:
    """A keep-alive receiver on every local address (127.0.0.2 too) and a free port; what it saw, and the port."""
    connections = Connections()
    server = ThreadingHTTPServer(("0.0.0.0", 0), keep_alive_receiver(connections))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield connections, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_poster_keeps_one_connection_for_its_posts_to_one_receiver(kept):
    connections, port = kept
    poster = Poster(timeout=5)
    attempts = [poster.send(local(port, path), {}, b"{}") for path in ("/a", "/b", "/c")]
    poster.close_idle(everything=True)
    assert [a.status for a in attempts] == [204, 204, 204]
    assert connections.opened == [("127.0.0.1", ["/a", "/b", "/c"])]


def test_a_kept_connection_the_receiver_closed_is_replaced_and_the_post_made_on_the_new_one(kept):
    connections, port = kept
    connections.hang_up = True  # it closes after each answer, though the answer did not say so
    poster = Poster(timeout=5)
    attempts = [poster.send(local(port, path), {}, b"{}") for path in ("/a", "/b", "/c")]
    assert [a.status for a in attempts] == [204, 204, 204]
    # Each POST arrived once, on a connection of its own: none was lost on a closed one.
    assert connections.opened == [("127.0.0.1", ["/a"]), ("127.0.0.1", ["/b"]), ("127.0.0.1", ["/c"])]


def test_each_checked_address_has_its_own_connection(kept):
    """A name that resolves elsewhere at the next attempt (DNS rebinding) gets no POST on the old connection."""
    connections, port = kept
    poster = Poster(timeout=5)
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.1"):
        target = check_target(f"http://hooks.example:{port}/hook", frozenset({"hooks.example"}),
                              resolve=fake_resolver({"hooks.example": [address]}))
        assert poster.send(target, {}, b"{}").ok
    assert connections.opened == [("127.0.0.1", ["/hook", "/hook"]), ("127.0.0.2", ["/hook"])]


def test_a_connection_whose_answer_was_not_read_to_its_end_is_not_kept(kept):
    connections, port = kept
    poster = Poster(timeout=5)
    assert poster.send(local(port, "/big"), {}, b"{}").status == 200  # 1 MB: only 64 KB of it read
    assert poster.send(local(port, "/a"), {}, b"{}").status == 204
    assert [paths for _, paths in connections.opened] == [["/big"], ["/a"]]


def test_send_alone_keeps_nothing(kept):
    connections, port = kept
    assert send(local(port, "/a"), {}, b"{}").ok and send(local(port, "/b"), {}, b"{}").ok
    assert [paths for _, paths in connections.opened] == [["/a"], ["/b"]]


def test_a_tls_context_that_checks_no_names_is_refused():
    context = ssl.create_default_context()
    context.check_hostname = False
    with pytest.raises(ValueError):
        Poster(ssl_context=context)
