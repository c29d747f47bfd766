"""Webhooks' building blocks: the target guard (SSRF), the Standard Webhooks signer, the back-off.

A client asks for a webhook with ``webhook=<url>``; once the upload's final state is committed a worker POSTs the
status document there. This module holds the pure pieces, with no database code: the web checks a target at submit,
the sender checks it again before every attempt (DNS may have changed since), signs the body and sends it once
(worker/webhook_post.py); the delivery loop (worker/webhooks.py) keeps the state and retries.

Targets (check_target):
- http or https, a host, no ``user:password@``, at most 2048 characters; otherwise ``bad_webhook``.
- The host is resolved once, and the sender connects to the address that was checked, never resolving the name
  again, so a DNS answer that changes between the check and the connection (rebinding) cannot reach another host.
- A host listed in WEBHOOK_ALLOWED_HOSTS (lower-cased, exactly, or the same IP literal) may resolve to anything.
  Any other host must resolve only to global addresses: loopback, private, link-local (with the cloud metadata
  address 169.254.169.254), multicast, reserved, unspecified, shared (100.64/10), site-local, unique-local
  (fc00::/7), documentation and benchmark ranges, and IPv6 addresses that carry such an IPv4 address (mapped
  ::ffff:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16) are refused with ``webhook_not_allowed``.
- A host that does not resolve is ``bad_webhook`` with ``temporary=True``: at submit the client hears of it at once
  (most often a typo); before an attempt the sender should count it as a failed attempt and retry, because DNS
  failures are often brief.
- Refusals never name the address a host resolved to (that would let a client map internal DNS); the log does.

Back-off (backoff_seconds), after the n-th failed attempt: base x 4^(n-1), capped at 2 h, less up to 10% jitter.
With the default base (WEBHOOK_RETRY_BASE_SECONDS, 5 s) the waits are:
  1: 5 s, 2: 20 s, 3: 80 s, 4: 5.3 min, 5: 21 min, 6: 85 min, 7 and later: 2 h.
  So 8 attempts (7 waits) span about 3.9 hours: a receiver that is down for an afternoon still gets its webhooks.
  (Doubling would give up after 10.6 minutes, before most outages end.)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import ipaddress
import logging
import math
import random
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from standardwebhooks.webhooks import Webhook

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS: tuple[str, ...] = ("start", "completed")
DEFAULT_EVENTS: tuple[str, ...] = ("completed",)
MAX_URL_LENGTH = 2048

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_FACTOR = 4.0
BACKOFF_CAP_SECONDS = 2 * 3600.0
BACKOFF_JITTER = 0.10

_SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 24
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# Characters left as they are when a path is percent-encoded: RFC 3986's reserved ones and '%' (already encoded).
_PATH_SAFE = "!$%&'()*+,/:;=?@[]~"

# Written out, not only ipaddress' is_global: its tables changed between Python releases, and these must not.
_NOT_PUBLIC = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
    "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class WebhookRefused(Exception):
    """A webhook URL, target or event list that is refused: a code for the API and a sentence for a person."""

    def __init__(self, code: str, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # True where trying again later may succeed (a host that did not resolve): the sender retries those.
        self.temporary = temporary


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: the address to connect to, and the host and path to ask for there."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA), IPv6 without brackets
    port: int
    path_and_query: str
    address: str  # the checked IP address: the sender connects here and resolves nothing

    @property
    def host_header(self) -> str:
        """The Host header: the URL's host, with its port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_events(raw: str | None) -> tuple[str, ...]:
    """The events a client subscribes to, from a comma-separated list, in WEBHOOK_EVENTS' order."""
    names = {name.strip().lower() for name in (raw or "").split(",")} - {""}
    if not names:
        return DEFAULT_EVENTS
    unknown = sorted(names - set(WEBHOOK_EVENTS))
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:3])
        raise WebhookRefused("bad_webhook_events",
                             f"Unknown webhook event {shown}: the events are {', '.join(WEBHOOK_EVENTS)}.")
    return tuple(event for event in WEBHOOK_EVENTS if event in names)


def check_target(url: str, allowed_hosts: frozenset[str], resolve: Resolver = socket.getaddrinfo) -> Target:
    """The URL's target if a webhook may go there, else WebhookRefused; resolves the host exactly once."""
    scheme, host, port, path_and_query = _parse_url(url)
    addresses = _resolve(host, port, resolve)
    if not _is_listed(host, allowed_hosts):
        refused = [address for address in addresses if not _is_public(ipaddress.ip_address(address))]
        if refused:
            logger.info("Webhook host %s refused: it resolves to %s", host, ", ".join(refused))
            raise WebhookRefused(
                "webhook_not_allowed",
                f"Webhooks may not go to {host}: it resolves to a loopback, private, link-local or other non-public "
                f"address. Operators may allow an internal receiver by listing {host} in WEBHOOK_ALLOWED_HOSTS.")
    return Target(url=url, scheme=scheme, host=host, port=port, path_and_query=path_and_query, address=addresses[0])


def _bad(message: str) -> WebhookRefused:
    """A refusal of the URL itself."""
    return WebhookRefused("bad_webhook", message)


def _parse_url(url: str) -> tuple[str, str, int, str]:
    """The scheme, host, port and request target of a webhook URL, or bad_webhook."""
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    # urlsplit silently drops tabs and newlines; a URL with them is more likely an attack than a typo.
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _bad("The webhook URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad("The webhook URL is not a valid URL: check its host and port.") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _bad("The webhook URL must start with http:// or https://.")
    if "@" in parts.netloc:
        raise _bad("The webhook URL may not carry a user name or password (user:password@).")
    if port == 0:
        raise _bad("The webhook URL's port may not be 0.")
    host = _normalise_host(parts.hostname or "")
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    # http.client sends the request line as ASCII: non-ASCII characters are percent-encoded as browsers do.
    return scheme, host, port or _DEFAULT_PORTS[scheme], quote(target, safe=_PATH_SAFE)


def _normalise_host(host: str) -> str:
    """The host in lower-case ASCII (IDNA for international names), or bad_webhook."""
    if not host:
        raise _bad("The webhook URL has no host.")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass  # a name, not an address literal
    try:
        name = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise _bad("The webhook URL's host is not a valid host name.") from None
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise _bad("The webhook URL's host is not a valid host name.")
    return name


def _resolve(host: str, port: int, resolve: Resolver) -> list[str]:
    """The host's TCP addresses, in the resolver's order, each once."""
    with contextlib.suppress(ValueError):  # an address written out is its own answer: no lookup needed
        return [str(ipaddress.ip_address(host))]
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError; too-long labels raise UnicodeError
        logger.info("Webhook host %s did not resolve: %s", host, exc)
        infos = []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookRefused("bad_webhook", f"The webhook host {host} does not resolve to an address.",
                             temporary=True)
    return addresses


def _comparable(host: str) -> str:
    """A host as WEBHOOK_ALLOWED_HOSTS compares it: lower-case, no brackets or final dot, canonical if an IP."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _is_listed(host: str, allowed_hosts: frozenset[str]) -> bool:
    """Whether an operator allowed this host to resolve anywhere."""
    return _comparable(host) in {_comparable(allowed) for allowed in allowed_hosts if allowed.strip()}


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is a global unicast one that a webhook may reach without an operator's say-so."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # The packets end at the IPv4 address (mapped, translated or tunnelled): that one decides.
            return _is_public(embedded)
    if any(ip in network for network in _NOT_PUBLIC):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def valid_secret(secret: str) -> bool:
    """Whether a signing secret is Standard Webhooks' form: whsec_ and base64 of at least 24 bytes."""
    if not secret.startswith(_SECRET_PREFIX):
        return False
    encoded = secret[len(_SECRET_PREFIX):]
    try:
        # Strict, unlike the library (which skips stray characters): a mangled secret is refused, not shortened.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(key) >= _MIN_SECRET_BYTES


@functools.lru_cache(maxsize=4)
def _signer(secret: str) -> Webhook:
    """The library's signer for a valid secret, checked and decoded once (a worker signs hundreds a second)."""
    if not valid_secret(secret):
        raise ValueError("webhook secret must be whsec_ followed by base64 of at least 24 bytes")
    return Webhook(secret)


def sign(secret: str, message_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one message; send body.encode() exactly, and keep message_id on retries."""
    signer = _signer(secret)
    # The library stamps the timezone UTC over whatever it is given: hand it UTC (a naive time is taken as UTC).
    moment = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(math.floor(moment.timestamp())),
        "webhook-signature": signer.sign(message_id, moment, body),
    }


def backoff_seconds(attempt: int, base_seconds: float = BACKOFF_BASE_SECONDS) -> float:
    """Seconds to wait after the attempt-th failed attempt (1 = the first): see the schedule above."""
    if attempt < 1:
        raise ValueError("attempt counts failed attempts from 1")
    if base_seconds < 0:
        raise ValueError("the back-off's base may not be negative")
    # The exponent stops growing once the cap is reached, so a huge attempt number cannot overflow a float.
    base = min(base_seconds * BACKOFF_FACTOR ** min(attempt - 1, 32), BACKOFF_CAP_SECONDS)
    # Jitter, taken off so the cap holds: webhooks that failed together (a receiver's outage) come back apart.
    return base * (1.0 - BACKOFF_JITTER * random.random())
