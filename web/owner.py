"""Whose uploads these are: an owner token per visitor (a cookie, or a header for API clients), and operators.

The page's visitor gets a random token in an HttpOnly, SameSite cookie; an API client may send its own in
the X-Owner-Token header. Rows store only the token's HMAC under OWNER_TOKEN_SECRET (shared/owners.py), so the
table never holds a usable secret. Operators list every upload with ADMIN_BASIC_AUTH's credentials; unset, nobody
can.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading

from flask import Flask, Response, g, request
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from shared import owners
from shared.credentials import CredentialsRefused, check_basic_auth, check_secret
from web import deps
from web.errors import ApiError

log = logging.getLogger(__name__)

COOKIE = "digits_owner"
HEADER = "X-Owner-Token"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
COOKIE_MAX_AGE = 365 * 24 * 3600  # a visitor's history outlives a browser restart


def _valid(token: str | None) -> str | None:
    return token if token is not None and TOKEN.match(token) else None


class OwnerKeys:
    """A web process's owner keys: the HMAC of each presented token, its legacy rows adopted on first sight."""

    # Owners whose legacy rows this process has already moved: bounded, and forgetting one costs a repeat only.
    REMEMBERED = 50_000

    def __init__(self, secret: str, engine: Engine) -> None:
        self._secret = secret
        self._engine = engine
        self._adopted: set[str] = set()
        self._lock = threading.Lock()

    def new(self, token: str) -> str:
        """The key of a token this process just made: it has no legacy rows to adopt."""
        key = owners.owner_key(token, self._secret)
        self._remember(key)
        return key

    def presented(self, token: str) -> str:
        """The key of a token a client brought, after moving any rows it owned under its legacy key."""
        key = owners.owner_key(token, self._secret)
        with self._lock:
            seen = key in self._adopted
        if not seen:
            try:
                with self._engine.begin() as conn:
                    moved = owners.adopt_legacy(conn, token, self._secret)
            except DBAPIError as exc:  # this request goes on with the new key; the next one tries again
                log.warning("could not adopt an owner's legacy rows now: %s", type(exc).__name__)
                return key
            if moved:
                log.info("moved %d uploads of one owner to its HMAC key", moved)
            self._remember(key)
        return key

    def _remember(self, key: str) -> None:
        with self._lock:
            if len(self._adopted) >= self.REMEMBERED:
                self._adopted.clear()
            self._adopted.add(key)


def presented() -> str | None:
    """The owner key of the token this request brings (header first, then cookie), or None."""
    token = _valid(request.headers.get(HEADER)) or _valid(request.cookies.get(COOKIE))
    return deps.owner_keys().presented(token) if token else None


def current_or_new() -> str:
    """The request's owner key; a visitor without a token gets one now (its cookie leaves with the response)."""
    key = presented()
    if key is None:
        g.new_owner_token = secrets.token_urlsafe(24)
        key = deps.owner_keys().new(g.new_owner_token)
    return key


def is_operator(admin_basic_auth: str | None) -> bool:
    """Whether the request carries the operators' Basic credentials; wrong ones are a 401, never a fallback.

    Without operator credentials configured, or with another scheme (a proxy's Bearer token, say), the
    request is an ordinary visitor's.
    """
    auth = request.authorization
    if not admin_basic_auth or auth is None or auth.type != "basic":
        return False
    given = f"{auth.username or ''}:{auth.password or ''}"
    if not hmac.compare_digest(given.encode(), admin_basic_auth.encode()):
        raise ApiError(401, "unauthorized", "These operator credentials are not valid.")
    return True


def operator_credentials(admin_basic_auth: str | None) -> str | None:
    """ADMIN_BASIC_AUTH if it is fit for use; a weak or example password disables operator listing (logged)."""
    if not admin_basic_auth:
        return None
    try:
        return check_basic_auth(admin_basic_auth, local_mode=False, variable="ADMIN_BASIC_AUTH", hint="")
    except CredentialsRefused as exc:
        log.error("operators cannot list uploads: %s", exc)
        return None


def owner_secret(value: str | None) -> str:
    """OWNER_TOKEN_SECRET, checked: the web refuses to start without a strong one (it keys every owner's rows)."""
    try:
        return check_secret(value, "OWNER_TOKEN_SECRET")
    except CredentialsRefused as exc:
        raise SystemExit(f"{exc} (`make run` makes one in DATA_DIR/owner_token_secret)") from None


def register(app: Flask) -> None:
    """Send the cookie of a token issued during the request."""

    @app.after_request
    def _set_cookie(response: Response) -> Response:
        token = g.pop("new_owner_token", None)
        if token is not None:
            response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                                secure=request.is_secure, path="/")
        return response
