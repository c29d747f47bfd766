"""Webhooks' building blocks: the target guard, the Standard Webhooks signature, the sender against a real receiver."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.webhooks import (
    WEBHOOK_EVENTS,
    Target,
    WebhookRefused,
    backoff_seconds,
    check_target,
    parse_events,
    sign,
    valid_secret,
)
from worker.webhook_post import send  # the POST itself is the worker's; its tests stay beside the guard's

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
LOCAL = frozenset({"127.0.0.1"})


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[..., list[tuple]]:
    """A getaddrinfo stand-in that answers from a table (and raises like getaddrinfo for other names)."""

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]]

    return resolve


def never_resolve(*args: object, **kwargs: object) -> list[tuple]:
    raise AssertionError("a malformed URL must be refused before any DNS lookup")


# --- events ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "events"), [
    (None, ("completed",)), ("", ("completed",)), ("completed,start", ("start", "completed")),
    (" Start ", ("start",)), ("start,start,", ("start",)), ("completed", ("completed",)),
])
def test_events_default_to_completed_and_keep_one_order(raw, events):
    assert parse_events(raw) == events
    assert set(events) <= set(WEBHOOK_EVENTS)


def test_an_unknown_event_is_refused_with_the_names_that_exist():
    with pytest.raises(WebhookRefused) as refused:
        parse_events("start,finished")
    assert refused.value.code == "bad_webhook_events"
    assert "finished" in refused.value.message and "completed" in refused.value.message


# --- the target guard -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.10/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/",
    "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/", "http://[fc00::1]/",
    "http://[fd12:3456::1]/", "http://[fe80::1]/", "http://[fec0::1]/", "http://224.0.0.1/", "http://240.0.0.1/",
    "https://198.18.0.1/", "http://2130706433/",
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(WebhookRefused) as refused:
        check_target(url, frozenset())
    assert refused.value.code == "webhook_not_allowed"
    assert "WEBHOOK_ALLOWED_HOSTS" in refused.value.message


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "http://user:pass@example.com/hook", "http://user@example.com/", "http:///hook",
    "example.com/hook", "javascript:alert(1)", "file:///etc/passwd", "http://example.com:99999/",
    "http://example.com:0/", "http://exa mple.com/", "http://example.com/\nX-Injected: 1", "http://" + "a" * 2050,
    "http://ex%41mple.com/", "http://a..b/",
])
def test_malformed_urls_are_refused_before_any_lookup(url):
    with pytest.raises(WebhookRefused) as refused:
        check_target(url, frozenset(), resolve=never_resolve)
    assert refused.value.code == "bad_webhook"


def test_a_name_that_resolves_to_the_metadata_address_is_refused_and_named():
    with pytest.raises(WebhookRefused) as refused:
        check_target("http://metadata.example/x", frozenset(),
                     resolve=fake_resolver({"metadata.example": ["169.254.169.254"]}))
    assert refused.value.code == "webhook_not_allowed"
    assert "metadata.example" in refused.value.message
    assert "169.254" not in refused.value.message  # a client learns nothing of internal DNS


def test_every_address_of_a_name_must_be_public():
    resolve = fake_resolver({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(WebhookRefused):
        check_target("https://mixed.example/", frozenset(), resolve=resolve)


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "2002:a9fe:a9fe::1", "2001:db8::1",
                                     "ff02::1", "::"])
def test_ipv6_forms_of_internal_addresses_are_refused(address):
    with pytest.raises(WebhookRefused):
        check_target("http://v6.example/", frozenset(), resolve=fake_resolver({"v6.example": [address]}))


def test_a_public_name_is_accepted_after_one_lookup():
    calls: list[str] = []
    target = check_target("https://Hooks.Example:8443/a/b?x=1&y=%20#frag", frozenset(),
                          resolve=fake_resolver({"hooks.example": ["93.184.216.34", "2606:2800:220:1::1"]}, calls))
    assert calls == ["hooks.example"]
    assert target == Target(url="https://Hooks.Example:8443/a/b?x=1&y=%20#frag", scheme="https", host="hooks.example",
                            port=8443, path_and_query="/a/b?x=1&y=%20", address="93.184.216.34")
    assert target.host_header == "hooks.example:8443"


@pytest.mark.parametrize("address", ["2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822",
                                     "::ffff:93.184.216.34"])
def test_public_ipv6_addresses_are_accepted(address):
    target = check_target("http://v6.example", frozenset(), resolve=fake_resolver({"v6.example": [address]}))
    assert target.address == address and target.port == 80 and target.path_and_query == "/"
    assert target.host_header == "v6.example"


def test_international_names_are_looked_up_and_sent_in_ascii():
    calls: list[str] = []
    target = check_target("http://bücher.example/päth", frozenset(),
                          resolve=fake_resolver({"xn--bcher-kva.example": ["93.184.216.34"]}, calls))
    assert calls == ["xn--bcher-kva.example"]
    assert target.host == "xn--bcher-kva.example" and target.path_and_query == "/p%C3%A4th"


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://127.0.0.1:9000/hook", {"127.0.0.1"}), ("http://[::1]/hook", {"[0:0::1]"}),
    ("http://Internal.Example/hook", {"internal.example"}), ("http://internal.example./hook", {"INTERNAL.EXAMPLE"}),
])
def test_an_operator_may_allow_an_internal_host(url, allowed):
    resolve = fake_resolver({"127.0.0.1": ["127.0.0.1"], "::1": ["::1"], "internal.example": ["10.0.0.5"],
                             "internal.example.": ["10.0.0.5"]})
    assert check_target(url, frozenset(allowed), resolve=resolve).address in {"127.0.0.1", "::1", "10.0.0.5"}


def test_allowing_one_host_allows_no_other():
    resolve = fake_resolver({"other.example": ["10.0.0.5"]})
    with pytest.raises(WebhookRefused):
        check_target("http://other.example/", frozenset({"internal.example", "10.0.0.6"}), resolve=resolve)


def test_a_name_that_does_not_resolve_is_a_bad_webhook_worth_retrying():
    with pytest.raises(WebhookRefused) as refused:
        check_target("http://nowhere.example/", frozenset(), resolve=fake_resolver({}))
    assert refused.value.code == "bad_webhook" and refused.value.temporary
    assert "nowhere.example" in refused.value.message


# --- signatures -----------------------------------------------------------------------------------------------------

def test_a_signature_verifies_with_the_standard_webhooks_library():
    body = json.dumps({"task_id": "t1", "status": "SUCCESS", "prediction": 7})
    headers = sign(SECRET, "msg_t1_completed", dt.datetime.now(dt.UTC), body)

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-timestamp"].isdigit()
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("7", "1"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


def test_the_timestamp_is_the_instant_whatever_the_time_zone():
    instant = dt.datetime(2026, 5, 1, 12, 0, 30, tzinfo=dt.UTC)
    in_paris = instant.astimezone(dt.timezone(dt.timedelta(hours=2)))
    naive_utc = instant.replace(tzinfo=None)
    expected = sign(SECRET, "m", instant, "{}")
    assert expected["webhook-timestamp"] == str(int(instant.timestamp()))
    assert sign(SECRET, "m", in_paris, "{}") == expected == sign(SECRET, "m", naive_utc, "{}")


@pytest.mark.parametrize(("secret", "valid"), [
    (SECRET, True), (SECRET.rstrip("="), True), ("whsec_" + base64.b64encode(b"k" * 24).decode(), True),
    ("whsec_" + base64.b64encode(b"k" * 16).decode(), False), (SECRET[len("whsec_"):], False),
    ("whsec_!!!not-base64!!!", False), ("whsec_", False), ("", False),
])
def test_secrets_are_whsec_and_base64_of_24_bytes_or_more(secret, valid):
    assert valid_secret(secret) is valid


def test_signing_with_an_invalid_secret_is_refused():
    with pytest.raises(ValueError):
        sign("not-a-secret", "m", dt.datetime.now(dt.UTC), "{}")


# --- the sender, against a real receiver on 127.0.0.1 ---------------------------------------------------------------

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


# --- back-off -------------------------------------------------------------------------------------------------------

def test_backoff_grows_to_a_cap_with_a_little_jitter():
    bases = [min(5 * 4 ** (n - 1), 7200) for n in range(1, 13)]
    for n, base in enumerate(bases, start=1):
        for _ in range(20):
            assert 0.9 * base <= backoff_seconds(n) <= base
    assert bases[:7] == [5, 20, 80, 320, 1280, 5120, 7200]
    assert backoff_seconds(10_000) <= 7200
    assert 3 * 3600 < sum(backoff_seconds(n) for n in range(1, 8)) <= 4 * 3600  # 8 attempts span hours
    with pytest.raises(ValueError):
        backoff_seconds(0)


def test_a_shorter_base_shortens_every_wait_but_not_the_cap():
    assert 0.09 <= backoff_seconds(1, base_seconds=0.1) <= 0.1
    assert 1.44 <= backoff_seconds(3, base_seconds=0.1) <= 1.6
    assert 0.9 * 7200 <= backoff_seconds(12, base_seconds=60) <= 7200
    assert backoff_seconds(4, base_seconds=0) == 0


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
