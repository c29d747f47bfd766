"""What POST /predict takes besides its files: an Idempotency-Key, scoped to the owner token, and a webhook.

Both are checked before anything is recorded, so a refused request leaves nothing behind. A webhook's URL is
resolved here once (shared/webhooks.check_target): a blocking call, which gevent's monkey-patching makes
cooperative under gunicorn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import request

from shared import idempotency
from shared.config import Settings
from shared.predictions import NewUpload
from shared.webhooks import WebhookRefused, check_target, parse_events
from web.errors import ApiError
from web.ingest import Keyed
from web.owner import HEADER, presented
from web.schemas import IDEMPOTENCY_KEY


@dataclass(frozen=True)
class Hook:
    """A webhook the request asks for: its checked URL and its events, normalised (e.g. "start,completed")."""

    url: str
    events: str


def idempotency_key() -> str | None:
    """The request's Idempotency-Key, None without one; 400 if it cannot be a key."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not idempotency.valid_key(key):
        raise ApiError(400, "bad_idempotency_key", f"{IDEMPOTENCY_KEY} must be 1 to {idempotency.MAX_KEY_LENGTH} "
                                                   "printable ASCII characters, e.g. a UUID.")
    return key


def key_owner() -> str:
    """The owner key of a request that brings an Idempotency-Key; 400 if it presents no owner token."""
    owner = presented()
    if owner is None:
        raise ApiError(400, "owner_token_required", (
            f"An {IDEMPOTENCY_KEY} belongs to an owner token: send your token in the {HEADER} header (or the "
            "page's cookie) with it. Without one each request would get a new token, so a retry could never be "
            "recognised as the same request."))
    return owner


def webhook(cfg: Settings) -> Hook | None:
    """The webhook the form asks for (fields `webhook`, `webhook_events`), checked; None if it asks for none."""
    url = request.form.get("webhook") or None
    events = request.form.get("webhook_events") or None
    if url is None:
        if events is not None:
            raise ApiError(400, "bad_webhook_events", "webhook_events was given without a webhook URL.")
        return None
    if not cfg.webhook_secret:
        raise ApiError(400, "webhooks_disabled", "This service sends no webhooks (no WEBHOOK_SECRET is configured); "
                                                 "poll GET /tasks/<id>?wait= for the answer instead.")
    try:
        names = parse_events(events)
        check_target(url, cfg.allowed_webhook_hosts)
    except WebhookRefused as exc:
        raise ApiError(400, exc.code, exc.message) from exc
    return Hook(url, ",".join(names))


def keyed(owner: str, key: str, uploads: Sequence[NewUpload], hook: Hook | None, cfg: Settings) -> Keyed:
    """The key with the fingerprint of what the request asks for: its files in order and its webhook fields.

    `?wait=` is not part of it: how long a client waits for the answer does not change the request.
    """
    fields = [("webhook", hook.url if hook else None), ("webhook_events", hook.events if hook else None)]
    fingerprint = idempotency.fingerprint([(u.filename, u.data) for u in uploads], fields)
    return Keyed(owner, key, fingerprint, cfg.idempotency_ttl_seconds)
