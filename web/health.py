"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from web import deps
from web.openapi import documented
from web.schemas import Health, Readiness

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(responses={200: (Health, "The process serves")})
def healthz() -> ResponseReturnValue:
    """The process is alive and serving."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@documented(responses={200: (Readiness, "Redis and the database answer"),
                       503: (Readiness, "Redis or the database does not answer; the checks name which")})
def readyz() -> ResponseReturnValue:
    """Ready when both Redis and the database answer; 503 otherwise, naming what is down."""
    checks: dict[str, str] = {}
    try:
        deps.redis_client().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason goes to the log
        log.warning("readiness: redis: %s", exc)
        checks["redis"] = "unavailable"
    try:
        with deps.engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database: %s", exc)
        checks["database"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
