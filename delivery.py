"""Outbox delivery in the database: claim due events in batches, record their outcomes.

A queue (one receiver and instance) is delivered in order, one batch at a time. A claim
leases the queue's oldest pending events, up to a batch size, and only when the oldest one
is due and not leased, so a slow receiver holds up nothing but its own queue. A lease
expires: when a process dies mid-batch, another process claims the unrecorded events again
and sends them with the same `X-Webhook-Id`. Recording the outcomes of every batch that
finished since the last claim and claiming the next batches share one transaction. The
HTTP attempt is in `delivery_attempt.py`, the outcome rows in `delivery_record.py`, and the
threads in `delivery_worker.py`.
"""

import functools
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Select, and_, bindparam, func, or_, select, union_all, update

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


# The statements of a claim are built once, with the moment of the claim as the parameter
# `now`. Building them for every claim took about a tenth of the delivery CPU in a profile.
_NOW = bindparam("now", type_=Event.next_attempt_at.type)
# A pending event that is due and not leased at `now`.
_CLAIMABLE = and_(
    Event.status == PENDING_EVENT,
    Event.next_attempt_at <= _NOW,
    or_(Event.lease_until.is_(None), Event.lease_until <= _NOW),
)
# Each queue's first pending event, by (due_at, pk). Numbering the pending events in index
# order reads each once. The earlier form, "no earlier pending event in the same queue", ran on
# PostgreSQL as a hash anti join that compared every pair of a queue's events: 1.2 s for a
# backlog of 5,000 events in one queue.
_positions = (
    select(Event.pk, func.row_number().over(partition_by=Event.queue, order_by=(Event.due_at, Event.pk))
           .label("position"))
    .where(Event.status == PENDING_EVENT)
    .subquery()
)
# The queues whose first pending event is claimable, in the order of those events.
_QUEUE_HEADS = (
    select(Event.queue)
    .where(_CLAIMABLE, Event.pk.in_(select(_positions.c.pk).where(_positions.c.position == 1)))
    .order_by(Event.due_at, Event.pk)
)
_ANY_QUEUE_HEAD = _QUEUE_HEADS.limit(1)
_DUE_QUEUES = _QUEUE_HEADS.limit(bindparam("max_queues"))
# On PostgreSQL, two processes claiming at once skip each other's rows instead of waiting on them.
_DUE_QUEUES_LOCKED = _DUE_QUEUES.with_for_update(skip_locked=True, of=Event)


@functools.cache
def queue_events_query(queue_count: int, locked: bool) -> Select:
    """Return the statement that reads the oldest pending events of `queue_count` queues.

    It reads up to `batch_size` events of each queue `queue_0`, `queue_1` and so on, ordered by
    queue and in each queue by due time, each with whether it can be claimed at `now`. Each
    queue is read through the pending-events index with its own limit, so a long backlog costs
    no more than a short one. One statement serves every queue of a turn. With one per queue,
    the reads took about 15% of the delivery process's CPU in a profile under sustained load.
    """
    oldest = [
        select(Event.pk)
        .where(Event.status == PENDING_EVENT, Event.queue == bindparam(f"queue_{index}"))
        .order_by(Event.due_at, Event.pk)
        .limit(bindparam("batch_size"))
        .subquery()
        for index in range(queue_count)
    ]
    pks = union_all(*[select(queue.c.pk) for queue in oldest])
    query = (
        select(*CLAIMED_COLUMNS, _CLAIMABLE.label("is_claimable"))
        .where(Event.status == PENDING_EVENT, Event.pk.in_(pks))
        .order_by(Event.queue, Event.due_at, Event.pk)
    )
    return query.with_for_update(of=Event) if locked else query


_LEASE = (
    update(Event.__table__)
    .where(Event.__table__.c.pk.in_(bindparam("pks", expanding=True)))
    .values(attempts=Event.__table__.c.attempts + 1, lease_until=bindparam("new_lease_until"),
            lease_token=bindparam("new_lease_token"))
)


def any_event_due(now: datetime) -> bool:
    """Return whether some queue could be claimed, in a read-only transaction that ends here.

    An idle worker polls with this check alone, so on SQLite it takes no write lock (BEGIN
    IMMEDIATE) and does not hold up requests that write. It looks for queue heads, so due
    events behind a leased head do not start a write transaction that would claim nothing.
    """
    found = db.session.scalar(_ANY_QUEUE_HEAD, {"now": now})
    db.session.rollback()
    return found is not None


def record_and_claim(finished: list[tuple[Batch, list[Outcome]]], max_queues: int, batch_size: int,
                     lease_seconds: float) -> list[Batch]:
    """Record the outcomes of finished batches and lease new batches, in one transaction.

    `finished` pairs each batch with the outcomes of its first events. The claims after the
    last outcome were not sent, and they are released. Then a batch of up to `batch_size` events
    is leased in each of up to `max_queues` queues, the queues just recorded included when
    nothing in them waits for a retry. Returns the new batches.
    """
    now = utc_now()
    if not finished and (max_queues <= 0 or not any_event_due(now)):
        return []

    database.begin_write()
    recorded = delivery_record.record_outcomes([(batch.claims, outcomes) for batch, outcomes in finished], now)
    batches, abandoned = claim_due_queues(now, max_queues, batch_size, lease_seconds) if max_queues > 0 else ([], [])
    db.session.commit()

    recorded.report()
    report_abandoned(abandoned)
    return batches


def claim_due_queues(now: datetime, max_queues: int, batch_size: int,
                     lease_seconds: float) -> tuple[list[Batch], list[str]]:
    """Lease a batch in each of up to `max_queues` queues whose head is due, in the open write transaction.

    Returns the batches, and the public ids of events that failed for good instead because
    no attempt of theirs ever finished. Every batch shares one lease token, set by one UPDATE.
    """
    locked = db.engine.dialect.name == "postgresql"
    queues = db.session.scalars(_DUE_QUEUES_LOCKED if locked else _DUE_QUEUES,
                                {"now": now, "max_queues": max_queues}).all()
    if not queues:
        return [], []
    parameters = {f"queue_{index}": queue for index, queue in enumerate(queues)}
    rows_by_queue = defaultdict(list)
    for row in db.session.execute(queue_events_query(len(queues), locked),
                                  {"now": now, "batch_size": batch_size, **parameters}):
        rows_by_queue[row.queue].append(row)

    lease_token = str(uuid.uuid4())
    batches = []
    abandoned = []
    for queue in queues:
        claims, gave_up = queue_claims(rows_by_queue[queue], lease_token)
        abandoned += gave_up
        if claims:
            batches.append(Batch(claims, lease_token, time.monotonic()))
    if abandoned:
        delivery_record.abandon_unfinished(abandoned, now)
    if batches:
        db.session.execute(_LEASE, {
            "pks": [claim.pk for batch in batches for claim in batch.claims],
            "new_lease_until": now + timedelta(seconds=lease_seconds), "new_lease_token": lease_token,
        })
    return batches, [row.public_id for row in abandoned]


def queue_claims(rows: list, lease_token: str) -> tuple[list[Claim], list]:
    """Take one queue's oldest pending events, given in order as `rows`, while they are claimable.

    The caller's write transaction must already hold the queue: its head is locked. Returns
    the claims, and the rows of events whose every attempt was claimed and never finished.
    The caller leases the claims and fails those events.
    """
    max_attempts = current_app.config["WEBHOOK_RETRY_MAX_ATTEMPTS"]
    claims = []
    abandoned = []
    for row in rows:
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
    return claims, abandoned


def report_abandoned(public_ids: list[str]) -> None:
    for public_id in public_ids:
        logger.warning("Delivery %s failed for good: none of its attempts finished", public_id)
        metrics.count_delivery_attempt(metrics.ATTEMPT_GAVE_UP)
