"""Whose uploads these are: an owner token per visitor (a cookie, or a header for API clients), and operators.

The page's visitor gets a random token in an HttpOnly, SameSite cookie; an API client may send its own in
the X-Owner-Token header. Rows store only the token's SHA-256, so the table never holds a usable secret.
Operators list every upload with ADMIN_BASIC_AUTH's credentials; unset, nobody can.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

from flask import Flask, Response, g, request

from web.errors import ApiError

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
    """Whether the request carries the operators' credentials; wrong credentials are a 401, never a fallback."""
    header = request.headers.get("Authorization")
    if header is None:
        return False
    scheme, _, encoded = header.partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True).decode() if scheme.lower() == "basic" else ""
    except (binascii.Error, UnicodeDecodeError):
        given = ""
    if not admin_basic_auth or not hmac.compare_digest(given.encode(), admin_basic_auth.encode()):
        raise ApiError(401, "unauthorized", "These operator credentials are not valid.")
    return True


def register(app: Flask) -> None:
    """Send the cookie of a token issued during the request."""

    @app.after_request
    def _set_cookie(response: Response) -> Response:
        token = g.pop("new_owner_token", None)
        if token is not None:
            response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                                secure=request.is_secure, path="/")
        return response
