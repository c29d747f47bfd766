"""Webhook delivery rows on the real MariaDB: holds, and attempts recorded together or one by one."""

from __future__ import annotations

from sqlalchemy import select, text

from shared import deliveries
from shared.deliveries import Event, Outcome
from shared.schema import WebhookDelivery


def _schedule(engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM webhook_deliveries"))
        deliveries.schedule(conn, [Event(f"00000000-0000-4000-8000-{i:012d}", "completed", "https://x.example/",
                                         {"task_id": str(i)}) for i in range(n)])


def _states(engine) -> list[tuple[str, int, int | None]]:
    with engine.connect() as conn:
        return [(r.state, r.attempts, r.last_status) for r in conn.execute(
            select(WebhookDelivery.state, WebhookDelivery.attempts, WebhookDelivery.last_status)
            .order_by(WebhookDelivery.id))]


def test_successes_are_recorded_together_and_the_rest_one_by_one(db_engine):
    _schedule(db_engine, 4)
    with db_engine.begin() as conn:
        held = deliveries.take_due(conn, 10)
        assert deliveries.take_due(conn, 10) == []  # all held: nobody else takes them
    ok, also_ok, retry, gave_up = sorted(held, key=lambda d: d.task_id)
    with db_engine.begin() as conn:
        recorded = deliveries.record_many(conn, [
            Outcome(ok, 200, None, True, None), Outcome(also_ok, 200, None, True, None),
            Outcome(retry, 500, "HTTP 500", False, 60.0), Outcome(gave_up, None, "timed out", False, None)])
    assert recorded == [True, True, True, True]
    assert _states(db_engine) == [("DELIVERED", 1, 200), ("DELIVERED", 1, 200), ("PENDING", 1, 500),
                                  ("FAILED", 1, None)]


def test_a_hold_taken_over_records_nothing(db_engine):
    _schedule(db_engine, 2)
    with db_engine.begin() as conn:
        stale = deliveries.take_due(conn, 10, lease_seconds=0)  # its hold runs out at once ...
        fresh = deliveries.take_due(conn, 10)  # ... and another sender takes both over
    assert len(stale) == len(fresh) == 2
    with db_engine.begin() as conn:
        assert deliveries.record_many(conn, [Outcome(d, 200, None, True, None) for d in stale]) == [False, False]
        assert deliveries.record_many(conn, [Outcome(d, 204, None, True, None) for d in fresh]) == [True, True]
    assert _states(db_engine) == [("DELIVERED", 1, 204)] * 2


def test_a_hold_takes_events_as_they_are_scheduled_up_to_its_room(db_engine):
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM webhook_deliveries"))
        hold = deliveries.Hold("hold-token", 60.0, room=2)
        deliveries.schedule(conn, [Event(f"00000000-0000-4000-8000-{i:012d}", "completed", "https://x.example/",
                                         {"task_id": str(i)}) for i in range(3)], hold)
        deliveries.schedule(conn, [Event("00000000-0000-4000-8000-000000000009", "completed", "https://x.example/",
                                         {"task_id": "9"})], hold)  # the hold is full: left for a take
    assert [(d.task_id[-1], d.token, d.attempts) for d in hold.held] == [("0", "hold-token", 0),
                                                                          ("1", "hold-token", 0)]
    assert '"task_id":"0"' in hold.held[0].payload
    with db_engine.begin() as conn:
        assert sorted(d.task_id[-1] for d in deliveries.take_due(conn, 10)) == ["2", "9"]  # the held are not due
        assert deliveries.record_many(conn, [Outcome(d, 204, None, True, None) for d in hold.held]) == [True, True]
    assert sorted(_states(db_engine)) == [("DELIVERED", 1, 204)] * 2 + [("PENDING", 0, None)] * 2
