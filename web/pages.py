"""The page people use."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from web import db

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    """Upload page: pick or drop an image, watch it travel, see the digit."""
    cfg = db.settings()
    return render_template("index.html", max_upload_mib=cfg.max_upload_bytes // (1024 * 1024))
