"""Owner keys: what an upload's row keeps of its owner's token, an HMAC under the service's secret.

A row never holds a usable token: a copy of the table (a backup, a leak) without OWNER_TOKEN_SECRET cannot be
turned back into tokens, even short ones an API client chose itself, because each guess needs the secret.
Rows written before the secret existed keep the token's plain SHA-256 (the "legacy" key); the web moves an
owner's rows to the new key the first time that owner's token is presented again (`adopt_legacy`).
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import Connection, update

from shared.schema import IdempotencyKey, Prediction


def owner_key(token: str, secret: str) -> str:
    """What is stored with an upload: HMAC-SHA256 of the token under the service's secret, hex (64 characters)."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def legacy_key(token: str) -> str:
    """What rows written before owner keys were HMACs keep: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def adopt_legacy(conn: Connection, token: str, secret: str) -> int:
    """Move this token's legacy rows (uploads, idempotency keys) to its HMAC key; how many uploads moved.

    Both statements find nothing on the owner index once an owner has been moved, so a repeat costs two
    index probes; a concurrent repeat in another web process waits on the same rows and then finds none.
    """
    old, new = legacy_key(token), owner_key(token, secret)
    moved = conn.execute(update(Prediction).where(Prediction.owner == old).values(owner=new)).rowcount
    conn.execute(update(IdempotencyKey).where(IdempotencyKey.owner == old).values(owner=new))
    return int(moved)
