"""The page people use."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from web import db, owner

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    """The page: upload, paste or draw digits, watch each travel, see the answers and the history."""
    cfg = db.settings()
    owner.current_or_new()  # a first visit gets its owner cookie: its history is its own
    return render_template("index.html", max_upload_mib=cfg.max_upload_bytes // (1024 * 1024),
                           max_files=cfg.max_files_per_request)
