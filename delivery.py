"""Outbox delivery in the database: claim due events in batches, record their outcomes.

A queue (one receiver and instance) is delivered in order, one batch at a time. A claim
leases the queue's oldest pending events, up to a batch size, and only when the oldest one
is due and not leased, so a slow receiver holds up nothing but its own queue. A lease
expires: when a process dies mid-batch, another process claims the unrecorded events again
and sends them with the same `X-Webhook-Id`. Recording a batch's outcomes and claiming the
queue's next events share one transaction. The HTTP attempt is in `delivery_attempt.py`,
the outcome rows in `delivery_record.py`, and the threads in `delivery_worker.py`.
"""

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import aliased

import database
import delivery_record
import metrics
from delivery_attempt import Claim, Outcome
from models import PENDING_EVENT, Event, db, utc_now

logger = logging.getLogger(__name__)

# The columns a claim copies out of each event row.
CLAIMED_COLUMNS = (
    Event.pk, Event.public_id, Event.queue, Event.name, Event.instance_name, Event.url, Event.headers,
    Event.secret, Event.body, Event.message_pk, Event.attempts,
)


@dataclass(frozen=True)
class Batch:
    """Consecutive events of one queue, leased together and sent in order by one thread."""

    claims: list[Claim]
    lease_token: str
    # time.monotonic() at the claim, when the lease started.
    claimed_at: float

    @property
    def queue(self) -> str:
        return self.claims[0].queue


def claimable(now: datetime):
    """Return the conditions of a pending event that is due and not leased at `now`."""
    return (
        Event.status == PENDING_EVENT,
        Event.next_attempt_at <= now,
        or_(Event.lease_until.is_(None), Event.lease_until <= now),
    )


def queue_heads(now: datetime):
    """Return a query of the claimable events that have no earlier pending event in their queue."""
    earlier = aliased(Event)
    has_earlier = exists().where(
        earlier.queue == Event.queue,
        earlier.status == PENDING_EVENT,
        or_(earlier.due_at < Event.due_at, and_(earlier.due_at == Event.due_at, earlier.pk < Event.pk)),
    )
    return select(Event.queue).where(*claimable(now), ~has_earlier).order_by(Event.due_at, Event.pk)


def any_event_due(now: datetime) -> bool:
    """Return whether some queue could be claimed, in a read-only transaction that ends here.

    An idle worker polls with this check alone, so on SQLite it takes no write lock (BEGIN
    IMMEDIATE) and does not hold up requests that write. It looks for queue heads, so due
    events behind a leased head do not start a write transaction that would claim nothing.
    """
    found = db.session.scalar(queue_heads(now).limit(1))
    db.session.rollback()
    return found is not None


def claim_batches(max_queues: int, batch_size: int, lease_seconds: float) -> list[Batch]:
    """Lease a batch of up to `batch_size` events in each of up to `max_queues` queues."""
    now = utc_now()
    if not any_event_due(now):
        return []

    query = queue_heads(now).limit(max_queues)
    database.begin_write()
    if db.engine.dialect.name == "postgresql":
        # Two processes claiming at once skip each other's rows instead of waiting on them.
        query = query.with_for_update(skip_locked=True, of=Event)
    queues = db.session.scalars(query).all()

    lease_token = str(uuid.uuid4())
    lease_until = now + timedelta(seconds=lease_seconds)
    batches = []
    abandoned = []
    for queue in queues:
        claims, gave_up = claim_queue(queue, now, lease_token, lease_until, batch_size)
        abandoned += gave_up
        if claims:
            batches.append(Batch(claims, lease_token, time.monotonic()))
    db.session.commit()
    report_abandoned(abandoned)
    return batches


def claim_queue(queue: str, now: datetime, lease_token: str, lease_until: datetime,
                batch_size: int) -> tuple[list[Claim], list[str]]:
    """Lease the queue's oldest pending events, in order, while they are claimable.

    The caller's write transaction must already hold the queue: its head is locked, or it
    has just recorded the queue's previous batch. Returns the claims, and the public ids of
    events that failed for good instead because no attempt of theirs ever finished.
    """
    max_attempts = current_app.config["WEBHOOK_RETRY_MAX_ATTEMPTS"]
    query = (
        select(*CLAIMED_COLUMNS, and_(*claimable(now)).label("is_claimable"))
        .where(Event.status == PENDING_EVENT, Event.queue == queue)
        .order_by(Event.due_at, Event.pk)
        .limit(batch_size)
    )
    if db.engine.dialect.name == "postgresql":
        query = query.with_for_update(of=Event)

    claims = []
    abandoned = []
    for row in db.session.execute(query):
        if not row.is_claimable:
            break  # not due yet or leased, so the later events wait behind it
        if row.attempts >= max_attempts:
            abandoned.append(row)
            continue
        claims.append(Claim(
            pk=row.pk, public_id=row.public_id, queue=row.queue, name=row.name, instance_name=row.instance_name,
            url=row.url, headers=dict(row.headers or {}), secret=row.secret, body=bytes(row.body),
            message_pk=row.message_pk, attempt=row.attempts + 1, lease_token=lease_token,
        ))
    if abandoned:
        delivery_record.abandon_unfinished(abandoned, now)
    if claims:
        db.session.execute(
            update(Event).where(Event.pk.in_([claim.pk for claim in claims]))
            .values(attempts=Event.attempts + 1, lease_until=lease_until, lease_token=lease_token)
            .execution_options(synchronize_session=False)
        )
    return claims, [row.public_id for row in abandoned]


def finish_batch(batch: Batch, outcomes: list[Outcome], next_batch_size: int = 0,
                 lease_seconds: float = 0.0) -> Batch | None:
    """Record the outcomes of the batch's first events and release the rest, in one transaction.

    `outcomes[i]` belongs to `batch.claims[i]`; the claims after the last outcome were not
    sent. With `next_batch_size`, the same transaction leases the queue's next events and
    returns them, unless an event now waits for a retry or the lease was lost.
    """
    database.begin_write()
    now = utc_now()
    recorded = delivery_record.record_outcomes(batch.claims, outcomes, batch.lease_token, now)

    next_batch = None
    abandoned = []
    if next_batch_size and recorded.queue_moves_on:
        lease_token = str(uuid.uuid4())
        claims, abandoned = claim_queue(batch.queue, now, lease_token, now + timedelta(seconds=lease_seconds),
                                        next_batch_size)
        if claims:
            next_batch = Batch(claims, lease_token, time.monotonic())
    db.session.commit()

    recorded.report()
    report_abandoned(abandoned)
    return next_batch


def report_abandoned(public_ids: list[str]) -> None:
    for public_id in public_ids:
        logger.warning("Delivery %s failed for good: none of its attempts finished", public_id)
        metrics.count_delivery_attempt(metrics.ATTEMPT_GAVE_UP)
