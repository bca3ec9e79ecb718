"""Claiming and recording batches of one queue's events, step by step in the test process.

The tests call the delivery steps directly on the test database, with outcomes made up in
place of HTTP attempts, so they can look at every row between two steps.
"""

from datetime import timedelta

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

import delivery
import delivery_record
import delivery_worker
from delivery_attempt import Outcome
from delivery_record import UNFINISHED_ERROR
from models import DELIVERED, FAILED, PENDING_EVENT, DeliveryAttempt, Event, Message, db, utc_now
from tests.conftest import GLOBAL_KEY

RECEIVER = "http://127.0.0.1:9/hook"
DELIVERED_200 = Outcome(delivered=True, retryable=False, status_code=200)
FAILED_503 = Outcome(delivered=False, retryable=True, status_code=503, error="the receiver answered 503")
LEASE_SECONDS = 30


def queue_messages(api, count: int, events=("SEND_MESSAGE",), name: str = "shop1") -> list[str]:
    """Create an instance with a receiver for `events`, send `count` messages and return their key ids."""
    api.create_instance(name, webhook={"url": RECEIVER, "events": list(events)})
    key_ids = []
    for number in range(count):
        response = api.request("POST", f"/message/sendText/{name}", GLOBAL_KEY,
                               json={"number": "5511999990001", "text": f"message {number}"})
        assert response.status_code == 201, response.get_json()
        key_ids.append(response.get_json()["key"]["id"])
    return key_ids


def claim(batch_size: int) -> list[delivery.Batch]:
    """Claim a batch in each due queue, as the worker loop does with nothing to record."""
    return delivery.record_and_claim([], max_queues=10, batch_size=batch_size, lease_seconds=LEASE_SECONDS)


def finish(finished: list[tuple[delivery.Batch, list[Outcome]]], next_batch_size: int = 0) -> list[delivery.Batch]:
    """Record finished batches and, with `next_batch_size`, claim the next ones in the same transaction."""
    return delivery.record_and_claim(finished, max_queues=10 if next_batch_size else 0,
                                     batch_size=next_batch_size, lease_seconds=LEASE_SECONDS)


def event_rows() -> list:
    """Return the outbox rows in order, as plain rows that outlive the session."""
    rows = db.session.execute(select(
        Event.pk, Event.status, Event.attempts, Event.lease_token, Event.last_error, Event.next_attempt_at,
        Event.finished_at,
    ).order_by(Event.pk)).all()
    db.session.rollback()
    return rows


def message_statuses() -> list[str]:
    statuses = db.session.scalars(select(Message.status).order_by(Message.pk)).all()
    db.session.rollback()
    return statuses


def test_claim_leases_queue_in_order(app, api):
    queue_messages(api, 5)

    with app.app_context():
        [batch] = claim(3)
        rows = event_rows()
        second_claim = claim(3)

    assert [claim.pk for claim in batch.claims] == [row.pk for row in rows[:3]]
    assert [claim.attempt for claim in batch.claims] == [1, 1, 1]
    assert {row.lease_token for row in rows[:3]} == {batch.lease_token}
    assert [row.lease_token for row in rows[3:]] == [None, None]
    # A queue with leased events is held by its claim, so nothing else can be claimed from it.
    assert second_claim == []


def test_retry_releases_later_events(app, api):
    queue_messages(api, 3)

    with app.app_context():
        [batch] = claim(3)
        next_batches = finish([(batch, [DELIVERED_200, FAILED_503])], next_batch_size=3)
        delivered, waiting, unsent = event_rows()
        statuses = message_statuses()

    assert next_batches == []
    assert (delivered.status, delivered.attempts) == (DELIVERED, 1)
    assert (waiting.status, waiting.attempts, waiting.last_error) == (PENDING_EVENT, 1, "the receiver answered 503")
    assert waiting.next_attempt_at > delivered.finished_at
    # Never sent, so its claim's attempt is taken back.
    assert (unsent.status, unsent.attempts) == (PENDING_EVENT, 0)
    assert [row.lease_token for row in (delivered, waiting, unsent)] == [None, None, None]
    assert statuses == ["SERVER_ACK", "PENDING", "PENDING"]


def test_recording_claims_queue_next_events(app, api):
    queue_messages(api, 5)

    with app.app_context():
        [first] = claim(2)
        [second] = finish([(first, [DELIVERED_200, DELIVERED_200])], next_batch_size=2)
        rows = event_rows()

    assert [claim.pk for claim in second.claims] == [row.pk for row in rows[2:4]]
    assert second.lease_token != first.lease_token
    assert [row.status for row in rows] == [DELIVERED, DELIVERED, PENDING_EVENT, PENDING_EVENT, PENDING_EVENT]
    assert [row.lease_token for row in rows] == [None, None, second.lease_token, second.lease_token, None]


def test_lost_lease_drops_outcome(app, api):
    queue_messages(api, 2)

    with app.app_context():
        [batch] = claim(2)
        # Another process claimed the first event again after this lease ran out.
        db.session.execute(update(Event).where(Event.pk == batch.claims[0].pk).values(lease_token="another-claim"))
        db.session.commit()
        next_batches = finish([(batch, [DELIVERED_200, DELIVERED_200])], next_batch_size=2)
        first, second = event_rows()
        attempt_events = db.session.scalars(select(DeliveryAttempt.event_pk)).all()
        db.session.rollback()

    # The first event is leased by the other claim, so it holds up the queue.
    assert next_batches == []
    assert (first.status, first.lease_token) == (PENDING_EVENT, "another-claim")
    assert second.status == DELIVERED
    assert attempt_events == [second.pk]


@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-first", "fresh-first"])
def test_stale_and_fresh_claim_in_one_turn(app, api, stale_first):
    queue_messages(api, 1)
    failed_400 = Outcome(delivered=False, retryable=False, status_code=400, error="the receiver answered 400")

    with app.app_context():
        [stale] = claim(1)
        # The lease ran out, and the same process claimed the event again before recording.
        db.session.execute(update(Event).values(lease_until=utc_now() - timedelta(seconds=1)))
        db.session.commit()
        [fresh] = claim(1)
        finished = [(stale, [failed_400]), (fresh, [DELIVERED_200])]
        finish(finished if stale_first else finished[::-1])
        [row] = event_rows()
        attempt_numbers = db.session.scalars(select(DeliveryAttempt.number)).all()
        db.session.rollback()
        statuses = message_statuses()

    # Only the claim that owns the event records its outcome; the stale one is dropped.
    assert row.status == DELIVERED
    assert attempt_numbers == [2]
    assert statuses == ["SERVER_ACK"]


def test_unfinished_head_fails_and_queue_goes_on(app, api):
    key_ids = queue_messages(api, 3)

    with app.app_context():
        max_attempts = app.config["WEBHOOK_RETRY_MAX_ATTEMPTS"]
        head_pk = event_rows()[0].pk
        db.session.execute(update(Event).where(Event.pk == head_pk).values(attempts=max_attempts))
        db.session.commit()
        [batch] = claim(3)
        head = event_rows()[0]
        statuses = message_statuses()

    assert (head.status, head.last_error) == (FAILED, UNFINISHED_ERROR)
    assert len(batch.claims) == 2
    assert head_pk not in {claim.pk for claim in batch.claims}
    assert statuses == ["ERROR", "PENDING", "PENDING"]
    assert len(key_ids) == 3


@pytest.mark.parametrize("subscribed, expected_updates", [
    (("SEND_MESSAGE",), 0),
    (("SEND_MESSAGE", "MESSAGES_UPDATE"), 3),
])
def test_settling_emits_update_when_wanted(app, api, subscribed, expected_updates):
    key_ids = queue_messages(api, 3, events=subscribed)

    with app.app_context():
        [batch] = claim(3)
        finish([(batch, [DELIVERED_200] * 3)])
        updates = db.session.scalars(select(Event.body).where(Event.name == "MESSAGES_UPDATE").order_by(Event.pk)).all()
        db.session.rollback()

    assert len(updates) == expected_updates
    # The updates follow the order in which the messages were delivered.
    for body, key_id in zip(updates, key_ids):
        assert f'"keyId":"{key_id}"'.encode() in body


def test_batch_recorded_in_few_statements(app, api):
    queue_messages(api, 10)
    statements = []

    def count(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with app.app_context():
        sqlalchemy_event.listen(db.engine, "before_cursor_execute", count)
        try:
            [batch] = claim(10)
            finish([(batch, [DELIVERED_200] * 10)], next_batch_size=10)
        finally:
            sqlalchemy_event.remove(db.engine, "before_cursor_execute", count)
        delivered = db.session.scalar(select(func.count()).select_from(Event).where(Event.status == DELIVERED))
        db.session.rollback()

    assert delivered == 10
    # One event at a time took about 13 statements each; a batch takes a fixed number.
    assert len(statements) <= 12, statements


def test_claim_skips_queue_waiting_for_retry(app, api):
    queue_messages(api, 2)

    with app.app_context():
        [batch] = claim(2)
        finish([(batch, [FAILED_503])])
        waiting = claim(2)
        db.session.execute(update(Event).where(Event.pk == batch.claims[0].pk)
                           .values(next_attempt_at=utc_now() - timedelta(seconds=1)))
        db.session.commit()
        [retry] = claim(2)

    assert waiting == []
    assert [claim.pk for claim in retry.claims] == [claim.pk for claim in batch.claims]
    assert [claim.attempt for claim in retry.claims] == [2, 1]


def test_turn_spans_several_queues(app, api):
    queue_messages(api, 4, name="shop1")
    queue_messages(api, 4, name="shop2")
    commits = []

    def count(connection):
        commits.append(connection)

    with app.app_context():
        first = claim(2)
        sqlalchemy_event.listen(db.engine, "commit", count)
        try:
            second = finish([(batch, [DELIVERED_200] * 2) for batch in first], next_batch_size=2)
        finally:
            sqlalchemy_event.remove(db.engine, "commit", count)
        rows = event_rows()

    assert len(first) == 2
    # Recording both queues and claiming their next batches took one transaction.
    assert len(commits) == 1
    assert {batch.queue for batch in second} == {batch.queue for batch in first}
    # Both queues' first two events are delivered, and their last two are leased by the new claim.
    assert sorted(row.status for row in rows) == [DELIVERED] * 4 + [PENDING_EVENT] * 4
    leased = {claim.pk for batch in second for claim in batch.claims}
    assert {row.pk for row in rows if row.status == PENDING_EVENT} == leased
    assert {row.lease_token for row in rows if row.pk in leased} == {second[0].lease_token}


def test_failed_turn_keeps_outcomes(app, api, monkeypatch, caplog):
    queue_messages(api, 2, name="shop1")
    queue_messages(api, 2, name="shop2")
    monkeypatch.setattr(delivery_worker, "FAILURE_PAUSE_SECONDS", 0)
    worker = delivery_worker.DeliveryWorker(app)
    with app.app_context():
        worker.finished = [(batch, [DELIVERED_200] * 2) for batch in claim(2)]
    settle = delivery_record.settle_messages
    failures = []

    def settle_failing_once(*args):
        if not failures:
            failures.append(args)
            raise OperationalError("UPDATE messages", {}, Exception("database is locked"))
        return settle(*args)

    monkeypatch.setattr(delivery_record, "settle_messages", settle_failing_once)
    worker.take_turn()
    outcomes_after_failure = len(worker.finished)
    worker.take_turn()
    with app.app_context():
        statuses = [row.status for row in event_rows()]

    assert failures
    # The failed turn kept both queues' outcomes, and the next turn recorded them.
    assert outcomes_after_failure == 2
    assert worker.finished == []
    assert statuses == [DELIVERED] * 4
    [warning] = [record for record in caplog.records if record.name == "delivery_worker"]
    # A database error is one line, without a traceback.
    assert "(Exception: database is locked)" in warning.getMessage()
    assert not warning.exc_info


def counted_claim(batch_size: int) -> tuple[list[delivery.Batch], int]:
    """Claim as `claim` does; return the batches and the number of statements the claim ran."""
    statements = []

    def count(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sqlalchemy_event.listen(db.engine, "before_cursor_execute", count)
    try:
        batches = claim(batch_size)
    finally:
        sqlalchemy_event.remove(db.engine, "before_cursor_execute", count)
    return batches, len(statements)


def test_claim_statements_independent_of_queues(app, api):
    queue_messages(api, 2, name="shop1")
    with app.app_context():
        one_queue, one_queue_statements = counted_claim(2)
        finish([(one_queue[0], [DELIVERED_200] * 2)])
    for name in ("shop2", "shop3", "shop4"):
        queue_messages(api, 2, name=name)
    with app.app_context():
        three_queues, three_queue_statements = counted_claim(2)

    assert len(one_queue) == 1
    assert len(three_queues) == 3
    # One read serves every queue of a claim, so more queues take no more statements.
    assert three_queue_statements == one_queue_statements
