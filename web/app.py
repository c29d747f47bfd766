"""The application factory: the web app and its dependencies, built once per process."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import Flask

from shared.config import REPO_ROOT, Settings, get_settings
from shared.db import make_service_engine, make_session_factory
from shared.logs import configure_logging
from shared.queue import make_celery
from web import owner
from web.deps import EXTENSION, Deps
from web.ingest import Ingest
from web.results import ResultWaiter

log = logging.getLogger(__name__)

WEB_LOCK_WAIT_SECONDS = 10
# A broker hiccup is retried once before the upload is refused with a 503, and each try is bounded: a Redis cut
# off (no reset) costs an upload at most 2 x (1 s to connect + 1 s for a reply) + 0.2 s, never a hang.
ENQUEUE_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5}
BROKER_SOCKET_TIMEOUT = 1.0


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> Flask:
    """Application factory: dependencies are passed in (tests) or built from the environment."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__, template_folder=str(REPO_ROOT / "templates"), static_folder="static")
    # Werkzeug refuses larger bodies with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_request_bytes
    app.config["MAX_FORM_PARTS"] = settings.max_files_per_request + 16
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's default provider has it; the base type not

    # Neither of these connects now: the engine's pool and Celery's producer connect on first use.
    # Status reads of unfinished uploads and the ingest's INSERTs go to MySQL: enough connections for a gevent
    # process's concurrent reads (a new one costs a TLS handshake attempt, an overflow one is closed after use).
    # A repeat of an Idempotency-Key waits on the first request's row lock: 10 s, not MySQL's 50, before its 409
    # (the web's own transactions hold locks for milliseconds).
    engine = make_service_engine(settings, lock_wait_seconds=WEB_LOCK_WAIT_SECONDS, pool_size=16, max_overflow=16)
    producer = celery or make_celery(settings.redis_url, settings.queue_name, main="digits-web",
                                     socket_timeout=BROKER_SOCKET_TIMEOUT)
    app.extensions[EXTENSION] = Deps(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        celery=producer,
        redis=redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5),
        # Its listener thread starts on the first long poll, inside the serving process.
        results=ResultWaiter(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2),
                             max_waiting=settings.max_long_polls),
        # Its thread starts on the first upload, inside the serving process.
        ingest=Ingest(engine, producer, settings.queue_name, ENQUEUE_RETRY_POLICY,
                      max_wait=settings.ingest_max_wait_ms / 1000),
        operators=owner.operator_credentials(settings.admin_basic_auth),
        owners=owner.OwnerKeys(owner.owner_secret(settings.owner_token_secret), engine),
    )

    from web import api, errors, headers, health, limits, metrics, openapi, pages, tasks
    from web.deps import close_session

    app.teardown_appcontext(close_session)
    errors.register(app)
    headers.register(app)
    owner.register(app)
    limits.register(app, settings)
    metrics.register(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    return app
