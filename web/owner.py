"""Whose uploads these are: an owner token per visitor (a cookie, or a header for API clients), and operators.

The page's visitor gets a random token in an HttpOnly, SameSite cookie; an API client may send its own in
the X-Owner-Token header. Rows store only the token's SHA-256, so the table never holds a usable secret.
Operators list every upload with ADMIN_BASIC_AUTH's credentials; unset, nobody can.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from flask import Flask, Response, g, request

from shared.credentials import CredentialsRefused, check_basic_auth
from web.errors import ApiError

log = logging.getLogger(__name__)

COOKIE = "digits_owner"
HEADER = "X-Owner-Token"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
COOKIE_MAX_AGE = 365 * 24 * 3600  # a visitor's history outlives a browser restart


def _valid(token: str | None) -> str | None:
    return token if token is not None and TOKEN.match(token) else None


def owner_key(token: str) -> str:
    """What is stored with an upload: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def presented() -> str | None:
    """The owner key of the token this request brings (header first, then cookie), or None."""
    token = _valid(request.headers.get(HEADER)) or _valid(request.cookies.get(COOKIE))
    return owner_key(token) if token else None


def current_or_new() -> str:
    """The request's owner key; a visitor without a token gets one now (its cookie leaves with the response)."""
    key = presented()
    if key is None:
        g.new_owner_token = secrets.token_urlsafe(24)
        key = owner_key(g.new_owner_token)
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


def register(app: Flask) -> None:
    """Send the cookie of a token issued during the request."""

    @app.after_request
    def _set_cookie(response: Response) -> Response:
        token = g.pop("new_owner_token", None)
        if token is not None:
            response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                                secure=request.is_secure, path="/")
        return response
