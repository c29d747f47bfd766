"""The page people use."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from shared.config import Settings
from shared.schema import FINAL_STATES, State
from web import deps, owner
from web.schemas import MAX_IDS, MAX_WAIT_SECONDS

bp = Blueprint("pages", __name__)


def page_config(cfg: Settings) -> dict[str, Any]:
    """What the page's script must agree on with the API: the state names, which of them are final, and the
    limits, from their definitions."""
    return {"states": {state.name: state.value for state in State},
            # Sorted: the page is rendered the same way every time (a frozenset has no order of its own).
            "finalStates": sorted(state.value for state in FINAL_STATES),
            "maxUploadBytes": cfg.max_upload_bytes,
            "maxFiles": cfg.max_files_per_request,
            "maxIdsPerPoll": MAX_IDS,
            "maxWaitSeconds": MAX_WAIT_SECONDS}


@bp.get("/")
def index() -> ResponseReturnValue:
    """The page: upload, paste or draw digits, watch each travel, see the answers and the history."""
    cfg = deps.settings()
    owner.current_or_new()  # a first visit gets its owner cookie: its history is its own
    return render_template("index.html", max_upload_mib=cfg.max_upload_bytes // (1024 * 1024),
                           max_files=cfg.max_files_per_request, config=page_config(cfg))
