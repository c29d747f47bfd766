"""Idempotency keys on the real MariaDB: scoped per owner, unique, expiring."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from shared import idempotency

OWNER, OTHER = "a" * 64, "b" * 64


@pytest.fixture
def keys(db_engine):
    """The engine, with the keys table emptied."""
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM idempotency_keys"))
    return db_engine


@pytest.mark.parametrize("key,ok", [("k", True), ("order-17/retry", True), ("x" * 255, True), ("", False),
                                    ("x" * 256, False), ("tab\there", False), ("é", False), ("nl\n", False)])
def test_keys_are_1_to_255_printable_ascii_characters(key, ok):
    assert idempotency.valid_key(key) is ok


def test_the_fingerprint_names_files_in_order_and_fields():
    one = idempotency.fingerprint([("a.png", b"1"), ("b.png", b"2")], [("webhook", None)])
    assert one == idempotency.fingerprint([("a.png", b"1"), ("b.png", b"2")], [("webhook", "")])
    assert one != idempotency.fingerprint([("b.png", b"2"), ("a.png", b"1")], [("webhook", None)])
    assert one != idempotency.fingerprint([("a.png", b"1"), ("b.png", b"3")], [("webhook", None)])
    assert one != idempotency.fingerprint([("a.png", b"1"), ("b.png", b"2")], [("webhook", "https://x.example")])


def _claim(conn, owner: str, key: str, task_ids: list[str], ttl: float = 60, digest: str = "f" * 64):
    """Claim one key, as a group of one request does; what the key names afterwards."""
    return idempotency.claim_all(conn, [idempotency.Claimed(owner, key, digest, task_ids)], ttl)[(owner, key)]


def test_a_live_key_keeps_its_first_record_per_owner_and_an_expired_one_is_taken_over(keys):
    with keys.begin() as conn:
        first = _claim(conn, OWNER, "k1", ["t1", "t2"])
    assert (first.request_sha256, first.task_ids) == ("f" * 64, ["t1", "t2"])
    with keys.begin() as conn:
        assert _claim(conn, OWNER, "k1", ["t9"], digest="e" * 64).task_ids == ["t1", "t2"]  # a repeat replays
        assert _claim(conn, OTHER, "k1", ["t9"]).task_ids == ["t9"]  # another owner's key
        assert _claim(conn, OWNER, "k1", ["t8"], ttl=0).task_ids == ["t8"]  # the old record expired


def test_a_concurrent_duplicate_waits_for_the_first_transaction_then_finds_it(keys):
    first = keys.connect()
    tx = first.begin()
    _claim(first, OWNER, "k1", ["t1"])
    outcome: list[list[str]] = []

    def duplicate() -> None:
        with keys.begin() as conn:
            outcome.append(_claim(conn, OWNER, "k1", ["t2"]).task_ids)

    thread = threading.Thread(target=duplicate)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # blocked on the unique index while the first is uncommitted
    tx.commit()
    first.close()
    thread.join(10)
    assert outcome == [["t1"]]


def test_expired_keys_are_purged_in_bounded_batches(keys):
    with keys.begin() as conn:
        for i in range(5):
            _claim(conn, OWNER, f"k{i}", [])
        assert idempotency.purge_expired(conn, 3600, limit=10) == 0
        assert idempotency.purge_expired(conn, 0, limit=3) == 3
        assert idempotency.purge_expired(conn, 0, limit=3) == 2
        assert idempotency.forget_owner(conn, OWNER) == 0


def test_a_group_claims_its_keys_in_one_statement_and_a_repeat_in_it_finds_the_first(keys):
    with keys.begin() as conn:
        _claim(conn, OWNER, "live", ["t0"])
        _claim(conn, OWNER, "old", ["t9"])
        conn.execute(text("UPDATE idempotency_keys SET created_at = created_at - INTERVAL 2 HOUR "
                          "WHERE idem_key = :old"), {"old": idempotency.stored("old")})
    claims = [idempotency.Claimed(OWNER, "new", "a" * 64, ["t1"]),
              idempotency.Claimed(OWNER, "new", "a" * 64, ["t2"]),  # a repeat in the same group
              idempotency.Claimed(OWNER, "live", "b" * 64, ["t3"]),
              idempotency.Claimed(OWNER, "old", "c" * 64, ["t4"]),
              idempotency.Claimed(OTHER, "new", "d" * 64, ["t5"])]
    with keys.begin() as conn:
        known = idempotency.claim_all(conn, claims, ttl_seconds=3600)
    assert known[(OWNER, "new")].task_ids == ["t1"]  # the first of the group made it; the second replays it
    assert known[(OWNER, "live")].task_ids == ["t0"]  # an earlier request's live key stands
    assert (known[(OWNER, "old")].task_ids, known[(OWNER, "old")].request_sha256) == (["t4"], "c" * 64)  # expired
    assert known[(OTHER, "new")].task_ids == ["t5"]


def test_keys_differing_in_case_or_trailing_space_are_different_keys(keys):
    claims = [idempotency.Claimed(OWNER, key, "a" * 64, [key]) for key in ("abc", "ABC", "abc ")]
    with keys.begin() as conn:
        known = idempotency.claim_all(conn, claims, ttl_seconds=60)
    assert {key: found.task_ids for (_, key), found in known.items()} == {"abc": ["abc"], "ABC": ["ABC"],
                                                                          "abc ": ["abc "]}
