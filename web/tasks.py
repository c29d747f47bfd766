"""Cancel and delete: POST /tasks/<id>/cancel, DELETE /tasks/<id>, DELETE /predictions (erasure on request).

An upload is its owner's (the token it was uploaded with) or, with ADMIN_BASIC_AUTH's credentials, any operator's
to cancel or delete; to anyone else it does not exist (404), so ids cannot be probed. The state change is
shared/predictions.py's (cancel) and the rows' removal shared/retention.py's; this module only adds the cache:
a cancel publishes the final document so long polls wake, a delete leaves tombstones in Redis so no reader can
put a copy of the removed document back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection

from shared import idempotency, predictions, retention, statuses
from shared.errors import REDIS_ERRORS
from web import deps
from web.errors import ApiError
from web.metrics import CANCELED, DELETED
from web.openapi import documented
from web.owner import is_operator, presented
from web.schemas import TASK_ID, AlreadyFinal, ErrorDocument, OwnerHeader, Status

log = logging.getLogger(__name__)
bp = Blueprint("tasks", __name__)

PATH = {"task_id": "The id POST /predict answered"}
NOT_FOUND = (404, "not_found", "No such task.")
OPERATORS = "operators (ADMIN_BASIC_AUTH's credentials as Basic auth) may act on any upload"


def _scope(task_id: str) -> str | None:
    """Whose uploads the caller may act on: an owner key, or None for an operator (anyone's); 404 if nobody's."""
    if not TASK_ID.match(task_id):
        raise ApiError(*NOT_FOUND)
    if is_operator(deps.operator_credentials()):
        return None
    owner = presented()
    if owner is None:  # without a token nothing is the caller's
        raise ApiError(*NOT_FOUND)
    return owner


@bp.post("/tasks/<task_id>/cancel")
@documented(headers=OwnerHeader, path_parameters=PATH, responses={
    200: (Status, "Canceled: its status document (state CANCELED)"),
    401: (ErrorDocument, "Operator credentials that are not valid"),
    404: (ErrorDocument, "No such task, or not the caller's"),
    409: (AlreadyFinal, "Already final: the error, and the upload's status document as `task`"),
    503: (ErrorDocument, "Database unavailable")})
def cancel_task(task_id: str) -> ResponseReturnValue:
    """Cancel an unfinished upload of the caller's: it is never read, and its state stays CANCELED.

    The upload's owner token (X-Owner-Token or the page's cookie) may cancel it; so may operators.
    """
    owner = _scope(task_id)
    with deps.engine().begin() as conn:
        found = predictions.cancel(conn, task_id, owner)
    if found is None:
        raise ApiError(*NOT_FOUND)
    if not found.changed:
        error = {"code": "already_final", "message": f"The task is already {found.document['state']}."}
        return jsonify({"error": error, "task": found.document}), 409
    CANCELED.labels(by="owner" if owner else "operator").inc()
    try:  # published so that long polls wake now; the database holds the truth either way
        statuses.cache_final(deps.redis_client(), [found.document], deps.settings().result_ttl_seconds)
    except REDIS_ERRORS as exc:
        log.warning("could not publish the canceled task %s: %s", task_id, exc)
    return jsonify(found.document), 200


def _delete(owner: str | None, pick: Callable[[Connection], list[str]]) -> tuple[int, list[str]]:
    """Delete the uploads `pick` names that are the owner's (None: anyone's), with tombstones in Redis; how many
    were picked, and the ids deleted.

    The tombstones are written inside the transaction: if Redis is away nothing is deleted (503, retry), and a
    reader that fetched the row before the commit can no longer cache it (the cache only ever sets if absent).
    """
    with deps.engine().begin() as conn:
        picked = pick(conn)
        gone = retention.delete_uploads(conn, picked, owner) if picked else []
        try:
            statuses.forget(deps.redis_client(), gone, deps.settings().result_ttl_seconds)
        except REDIS_ERRORS as exc:
            log.warning("cannot delete while Redis is away: %s", exc)
            raise ApiError(503, "cache_unavailable", "The status cache is unavailable; try again shortly.") from exc
    return len(picked), gone


@bp.delete("/tasks/<task_id>")
@documented(headers=OwnerHeader, path_parameters=PATH, responses={
    204: (None, "Deleted: the row, its image, its cached status and its history entry are gone"),
    401: (ErrorDocument, "Operator credentials that are not valid"),
    404: (ErrorDocument, "No such task, or not the caller's"),
    503: (ErrorDocument, "Database or cache unavailable")})
def delete_task(task_id: str) -> ResponseReturnValue:
    """Delete an upload of the caller's, whatever its state (an unfinished one is never read).

    Afterwards GET /tasks/<id> answers 404 and the upload is gone from the history. The upload's owner token may
    delete it; so may operators.
    """
    owner = _scope(task_id)
    if not _delete(owner, lambda _conn: [task_id])[1]:
        raise ApiError(*NOT_FOUND)
    DELETED.labels(by="owner" if owner else "operator").inc()
    return "", 204


@bp.delete("/predictions")
@documented(headers=OwnerHeader, responses={
    204: (None, "Every upload of the caller's owner token is gone (also when there was none)"),
    503: (ErrorDocument, "Database or cache unavailable")})
def delete_predictions() -> ResponseReturnValue:
    """Erase all of the caller's uploads and Idempotency-Keys (by owner token; operators too erase only their own).

    Batch by batch, each in a short transaction of its own, so other uploads are never held up for long.
    """
    owner = presented()
    if owner is None:
        return "", 204
    while True:
        picked, gone = _delete(owner, lambda conn: retention.owned(conn, owner))
        DELETED.labels(by="erasure").inc(len(gone))
        if picked < retention.BATCH:  # the last batch: no more of the owner's uploads
            break
    with deps.engine().begin() as conn:
        idempotency.forget_owner(conn, owner)
    return "", 204
