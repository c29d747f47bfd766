"""Rate limiting of uploads per client, shared by all web processes through Redis."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings
from web import deps

# No storage yet: init_app points it at the app's Redis (nothing connects at import).
limiter = Limiter(key_func=get_remote_address)


def upload_limit() -> str:
    """The configured limit for POST /predict (read per request, so each app may differ)."""
    return deps.settings().rate_limit


def uploads_unlimited() -> bool:
    """No limit when RATE_LIMIT is empty (benchmarks, fault tests)."""
    return not upload_limit()


def register(app: Flask, settings: Settings) -> None:
    """Count uploads per client address in Redis; behind proxies, trust their X-Forwarded-For."""
    if settings.trusted_proxies:
        # X-Forwarded-Proto too: behind a TLS-terminating ingress the owner cookie must still be Secure.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,  # type: ignore[method-assign]
                                x_proto=settings.trusted_proxies)
    app.config.update(
        # No limit configured: the limiter stays out of the request path entirely.
        RATELIMIT_ENABLED=bool(settings.rate_limit),
        RATELIMIT_STORAGE_URI=settings.redis_url,
        RATELIMIT_KEY_PREFIX=f"digits-limits:{settings.queue_name}",
        RATELIMIT_HEADERS_ENABLED=True,
        # Redis away: let uploads through to the enqueue, which then answers 503 on its own.
        RATELIMIT_SWALLOW_ERRORS=True,
    )
    limiter.init_app(app)
