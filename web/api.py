"""The JSON API: POST /predict, GET /tasks/<id>, GET /predictions, GET /system."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage

from shared import deliveries, predictions, statuses
from shared.config import Settings
from shared.errors import REDIS_ERRORS
from shared.imaging import ImageRejected, inspect_image
from shared.kombu_redis import Layout
from shared.limits import ImageLimits
from shared.queue import queue_length
from shared.schema import FINAL_STATES, Prediction
from shared.workers import live_workers
from web import deps, submit
from web.errors import ApiError
from web.ingest import Keyed, KeyInUse, KeyReused, QueueUnavailable
from web.limits import limiter, upload_limit, uploads_unlimited
from web.openapi import documented
from web.owner import current_or_new, is_operator, presented
from web.results import Subscription
from web.schemas import (
    REPLAYED,
    TASK_ID,
    Accepted,
    ErrorDocument,
    Final,
    HistoryPage,
    OwnerHeader,
    PageQuery,
    PredictHeaders,
    PredictQuery,
    Status,
    Statuses,
    SystemInfo,
    TaskQuery,
    TasksQuery,
    upload_form,
)

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp", "WEBP": "image/webp",
        "TIFF": "image/tiff"}
# An image that cannot be read is a bad request; content that is not an image we take is an unsupported type.
REJECTION_STATUS = {"not_an_image": 415, "unsupported_format": 415}


def _read_upload(storage: FileStorage, limits: ImageLimits, max_bytes: int, owner: str | None,
                 hook: submit.Hook | None) -> predictions.NewUpload:
    """Read one multipart file and check it is an image we can take, or raise ApiError."""
    name = (storage.filename or "").replace("\\", "/").rsplit("/", 1)[-1][:255] or None
    label = f"'{name}'" if name else "The file"
    data = storage.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"{label} is larger than {_size(max_bytes)}, the most this service takes.")
    if not data:
        raise ApiError(400, "empty_file", f"{label} is empty.")
    try:
        info = inspect_image(data, limits)
    except ImageRejected as exc:
        raise ApiError(REJECTION_STATUS.get(exc.code, 400), exc.code, f"{label}: {exc}") from exc
    return predictions.NewUpload(data=data, filename=name, content_type=MIME.get(info.format), width=info.width,
                                 height=info.height, owner=owner, webhook_url=hook.url if hook else None,
                                 webhook_events=hook.events if hook else None)


def _size(n: int) -> str:
    """A byte count as people read it."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _status_url(task_id: str) -> str:
    return url_for("api.task_status", task_id=task_id)


REPLAYED_TEXT = "`true` when the answer replays an earlier request with the same Idempotency-Key (nothing new made)"


@bp.post("/predict")
@documented(query=PredictQuery, headers=PredictHeaders, form=upload_form, responses={
    200: (Final, "With `wait`: every upload final within it; their status documents"),
    202: (Accepted, "Recorded and queued (or, replaying an Idempotency-Key, recorded before)"),
    400: (ErrorDocument, "Not a usable image, blank, more than {max_files_per_request} files, a bad `wait`, a bad "
                         "Idempotency-Key or one without an owner token, or a webhook refused (bad_webhook, "
                         "webhook_not_allowed, bad_webhook_events, webhooks_disabled)"),
    409: (ErrorDocument, "The Idempotency-Key's first request is still being recorded; retry"),
    413: (ErrorDocument, "A file over {max_upload_bytes} bytes"),
    415: (ErrorDocument, "Not an image, or not multipart/form-data"),
    422: (ErrorDocument, "The Idempotency-Key was used for another request (other files or webhook fields)"),
    429: (ErrorDocument, "Too many uploads from this address; see Retry-After"),
    503: (ErrorDocument, "Queue or database unavailable")},
    response_headers={200: {REPLAYED: REPLAYED_TEXT}, 202: {REPLAYED: REPLAYED_TEXT}})
@limiter.limit(upload_limit, exempt_when=uploads_unlimited)
def predict() -> ResponseReturnValue:
    """Upload one or several images (multipart field `file`); `?wait=S` answers with the digits.

    Validate, record (before answering) and enqueue uploads: 202 with their task ids, or with `?wait=S` 200 and
    their final status documents once all are final within S seconds. With an `Idempotency-Key`, a retry of the
    same request answers as the first one would now, with the same task ids, and makes nothing new.
    """
    wait = PredictQuery.parse(request.args).wait  # a bad wait is refused before anything is accepted
    cfg = deps.settings()
    key = submit.idempotency_key()
    owner = submit.key_owner() if key is not None else current_or_new()
    hook = submit.webhook(cfg)
    uploads = _read_uploads(cfg, owner, hook)
    ids, names = [upload.task_id for upload in uploads], [upload.filename for upload in uploads]
    waiter = deps.result_waiter()
    # Subscribed before the uploads are queued: no worker can publish a result before we listen.
    with waiter.slot(wait) as may_wait, waiter.subscription(*ids) as heard:
        replayed = _accept(uploads, None if key is None else submit.keyed(owner, key, uploads, hook, cfg))
        if replayed is not None:
            return _replay(replayed, names, wait if may_wait else 0.0)
        g.accepted_uploads = len(ids)
        if may_wait:
            answer = _final_answer(ids, _hold(ids, heard, time.monotonic() + wait, all, {}))
            if answer is not None:
                return answer
    return _accepted(ids, names)


def _accept(uploads: list[predictions.NewUpload], keyed: Keyed | None) -> list[str] | None:
    """Record and enqueue the uploads; None, or the task ids an earlier request with the same key made."""
    try:
        if keyed is None:
            deps.ingest().accept(uploads)
            return None
        answer = deps.ingest().accept_keyed(uploads, keyed)
    except QueueUnavailable as exc:
        raise ApiError(503, "queue_unavailable", "The prediction queue is unavailable; try again shortly.") from exc
    except KeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", "This Idempotency-Key was used for another request (other "
                                                      "files or webhook fields); use a new key for a new request."
                       ) from exc
    except KeyInUse as exc:
        raise ApiError(409, "idempotency_key_in_use", "A request with this Idempotency-Key is still being "
                                                      "recorded; retry in a moment.") from exc
    return answer.task_ids if answer.replayed else None


def _replay(task_ids: list[str], names: list[str | None], wait: float) -> ResponseReturnValue:
    """Answer as the key's first request would now: 202 with its task ids, or 200 if all are final within `wait`."""
    g.replayed_uploads = len(task_ids)
    headers = {REPLAYED: "true"}
    if wait <= 0:
        return _accepted(task_ids, names, headers)
    with deps.result_waiter().subscription(*task_ids) as heard:  # before the read: nothing published is missed
        docs = _statuses(task_ids)
        # Uploads deleted since the first request are not waited for: they will never be final.
        if len(docs) == len(task_ids):
            docs = _hold(task_ids, heard, time.monotonic() + wait, all, docs)
    return _final_answer(task_ids, docs, headers) or _accepted(task_ids, names, headers)


def _final_answer(task_ids: list[str], docs: dict[str, dict[str, Any]], headers: dict[str, str] | None = None
                  ) -> ResponseReturnValue | None:
    """One-request mode's 200 with the final documents, or None if some upload is not final."""
    if not all(docs.get(t, {}).get("state") in FINAL_STATES for t in task_ids):
        return None
    final = [docs[t] for t in task_ids]
    return jsonify(final[0] if len(final) == 1 else {"tasks": final}), 200, headers or {}


def _accepted(task_ids: list[str], names: list[str | None], headers: dict[str, str] | None = None
              ) -> ResponseReturnValue:
    """The 202: the uploads' task ids and where to follow them."""
    if len(task_ids) == 1:
        body: dict[str, Any] = {"task_id": task_ids[0], "status_url": _status_url(task_ids[0])}
        return jsonify(body), 202, {"Location": body["status_url"], **(headers or {})}
    tasks = [{"task_id": t, "status_url": _status_url(t), "filename": name}
             for t, name in zip(task_ids, names, strict=True)]
    many = {"tasks": tasks, "status_url": url_for("api.tasks_status", ids=",".join(task_ids))}
    return jsonify(many), 202, headers or {}


def _read_uploads(cfg: Settings, owner: str | None, hook: submit.Hook | None) -> list[predictions.NewUpload]:
    """The request's files, each checked to be an image we can take, or an ApiError."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       "Send the image as multipart/form-data in a field named 'file'.")
    files = request.files.getlist("file")
    if not files:
        raise ApiError(400, "missing_file", "No file: send the image in a multipart field named 'file'.")
    if len(files) > cfg.max_files_per_request:
        raise ApiError(400, "too_many_files", f"At most {cfg.max_files_per_request} files per request.")
    return [_read_upload(f, cfg.image_limits, cfg.max_upload_bytes, owner, hook) for f in files]


def _statuses(task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Status documents by id (final ones from the Redis cache, the rest from MySQL); unknown ids left out."""
    # A connection per read, so a long poll never keeps reading one stale snapshot of the table.
    with deps.engine().connect() as conn:
        return statuses.read(conn, deps.redis_client(), task_ids, deps.settings().result_ttl_seconds)


def _wait_for(task_ids: list[str], wait: float, until: str) -> list[dict[str, Any]]:
    """The documents of known ids, held up to `wait` seconds until all are final (or, with until=any, until
    one is: a client lists the ones it has no answer for); 404 if any id is unknown."""
    waiter = deps.result_waiter()
    with waiter.slot(wait) as may_wait:
        if not may_wait:  # no wait asked, or every long-poll slot of this process is taken: answer now
            return _known(task_ids)
        # Subscribe first, then read: a result stored in between is still heard.
        with waiter.subscription(*task_ids) as heard:
            docs = _hold(task_ids, heard, time.monotonic() + wait, any if until == "any" else all,
                         {doc["task_id"]: doc for doc in _known(task_ids)})
    return [docs[t] for t in task_ids]


# Re-reading the stored state when nothing was heard: first after a second, then less often. A result that was
# committed but never published (its worker died in between) is still found within seconds, and a process
# holding hundreds of waits does not read MySQL hundreds of times a second.
REREAD_FIRST_S, REREAD_MAX_S = 1.0, 4.0


def _hold(task_ids: list[str], heard: Subscription, deadline: float, settled: Callable[[Iterable[bool]], bool],
          docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest documents of the ids, once `settled` holds for their finality or the deadline passes."""
    reread = REREAD_FIRST_S
    while True:
        docs |= heard.docs  # final documents as the workers published them: no read needed
        remaining = deadline - time.monotonic()
        if settled(docs.get(t, {}).get("state") in FINAL_STATES for t in task_ids) or remaining <= 0:
            return docs
        if not heard.wait(min(remaining, reread)):
            # Nothing heard for a while: pub/sub may be reconnecting, or a worker died between its commit and
            # its publication; the stored state is the truth.
            docs |= {doc["task_id"]: doc for doc in _known(task_ids)}
            reread = min(2 * reread, REREAD_MAX_S)


def _known(task_ids: list[str]) -> list[dict[str, Any]]:
    """The documents of the ids, in order; 404 if any id is unknown."""
    docs = _statuses(task_ids)
    unknown = [t for t in task_ids if t not in docs]
    if unknown:
        raise ApiError(404, "not_found", f"No such task: {', '.join(unknown)}.")
    return [docs[t] for t in task_ids]


@bp.get("/tasks/<task_id>")
@documented(query=TaskQuery, path_parameters={"task_id": "The id POST /predict answered; anything else is a 404"},
            responses={200: (Status, "Its status document"),
                       400: (ErrorDocument, "A `wait` that is not a number of seconds from 0 to {max_wait_seconds:g}, "
                                            "or a bad `until`"),
                       404: (ErrorDocument, "No such task"),
                       503: (ErrorDocument, "Database unavailable")})
def task_status(task_id: str) -> ResponseReturnValue:
    """The state of one upload; `?wait=S` holds the answer up to S seconds until it is final (long poll)."""
    if not TASK_ID.match(task_id):
        raise ApiError(404, "not_found", "No such task.")
    query = TaskQuery.parse(request.args)
    return jsonify(_wait_for([task_id], query.wait, query.until)[0])


@bp.get("/tasks")
@documented(query=TasksQuery, responses={
    200: (Statuses, "Their status documents, in the order asked"),
    400: (ErrorDocument, "No ids, more than {max_ids}, or a bad `wait` or `until`"),
    404: (ErrorDocument, "An unknown id"),
    # gunicorn's, before the app sees the request: many more ids than allowed make the request line too long.
    414: (None, "A request line longer than the server reads (gunicorn's limit_request_line)"),
    503: (ErrorDocument, "Database unavailable")})
def tasks_status() -> ResponseReturnValue:
    """The states of several uploads (`?ids=a,b,c`); `?wait=S` holds until all are final, or with `&until=any`
    until one of them becomes final."""
    query = TasksQuery.parse(request.args)
    return jsonify({"tasks": _wait_for(query.ids, query.wait, query.until)})


@bp.get("/predictions")
@documented(query=PageQuery, headers=OwnerHeader, responses={
    200: (HistoryPage, "A page of history"),
    400: (ErrorDocument, "Bad page parameters"),
    401: (ErrorDocument, "Operator credentials that are not valid"),
    414: (None, "A request line longer than the server reads (gunicorn's limit_request_line)"),
    503: (ErrorDocument, "Database unavailable")})
# Guessing the operators' password: ten wrong tries a minute per address (right ones are not counted).
@limiter.limit("10/minute", deduct_when=lambda response: response.status_code == 401)
def predictions_page() -> ResponseReturnValue:
    """The caller's own predictions (by owner token; operators with basic auth: everyone's), newest first."""
    query = PageQuery.parse(request.args)
    page, per_page = query.page, query.per_page
    everyone = is_operator(deps.operator_credentials())
    owner = None if everyone else presented()
    if not everyone and owner is None:
        return jsonify({"items": [], "page": page, "per_page": per_page, "total": 0})
    mine = [] if everyone else [Prediction.owner == owner]
    session = deps.session()
    total = session.scalar(select(func.count()).select_from(Prediction).where(*mine)) or 0
    rows = session.scalars(
        select(Prediction).where(*mine).order_by(Prediction.id.desc()).offset((page - 1) * per_page).limit(per_page)
    ).all()
    # The webhooks' deliveries, as GET /tasks reports them (one query for the page).
    hooked = deliveries.reports(session.connection(), [row.task_id for row in rows if row.webhook_url])
    items = [row.status_document(hooked.get(row.task_id)) | {"filename": row.filename} for row in rows]
    return jsonify({"items": items, "page": page, "per_page": per_page, "total": total})


@bp.get("/system")
@documented(responses={200: (SystemInfo, "What serves uploads now"), 503: (ErrorDocument, "Queue unavailable")})
def system() -> ResponseReturnValue:
    """What serves uploads now: live worker processes, their model versions, the queue's length, the limits."""
    cfg = deps.settings()
    try:
        client = deps.redis_client()
        workers = live_workers(client, cfg.queue_name)
        waiting = queue_length(client, cfg.queue_name, Layout.of(deps.celery().conf.broker_transport_options))
    except REDIS_ERRORS as exc:
        log.warning("system status: Redis unavailable: %s", exc)
        raise ApiError(503, "queue_unavailable", "The prediction queue is unavailable; try again shortly.") from exc
    return jsonify({
        "workers": len(workers),
        # Several during a rolling update; the page shows them all.
        "model_versions": sorted({w["model_version"] for w in workers if w.get("model_version")}),
        "devices": sorted({w["device"] for w in workers if w.get("device")}),
        "queue_length": waiting,
        "max_upload_bytes": cfg.max_upload_bytes,
        "max_files_per_request": cfg.max_files_per_request,
    })
