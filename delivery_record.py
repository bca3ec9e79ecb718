"""The rows a delivery attempt leaves: attempts, event states and back-off, settled messages.

Every function here writes in the caller's transaction, a batch of events at a time, with
one statement per kind of change rather than one per event.
"""

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import insert, select, update
from sqlalchemy.orm import joinedload

import metrics
from delivery_attempt import Claim, Outcome
from events import MESSAGES_UPDATE, emit
from models import DELIVERED, ERROR, FAILED, PENDING, SERVER_ACK, DeliveryAttempt, Event, Instance, Message, db

logger = logging.getLogger(__name__)

UNFINISHED_ERROR = "no attempt finished; the sending process stopped each time"


def retry_delay(attempts: int, retry_after: float | None, config: dict) -> float:
    """Exponential back-off with jitter, at least what the receiver asked for, at most the maximum."""
    ceiling = config["WEBHOOK_RETRY_MAX_DELAY_SECONDS"]
    delay = min(ceiling, config["WEBHOOK_RETRY_INITIAL_DELAY_SECONDS"] * 2 ** (attempts - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, ceiling))
    return delay


def will_retry(claim: Claim, outcome: Outcome, config: dict) -> bool:
    """Return whether the event stays pending for another attempt, holding up its queue."""
    return not outcome.delivered and outcome.retryable and claim.attempt < config["WEBHOOK_RETRY_MAX_ATTEMPTS"]


@dataclass
class Recorded:
    """The outcomes `record_outcomes` stored, for the log lines and counters written after the commit."""

    results: list[tuple[Claim, Outcome, str, datetime | None]] = field(default_factory=list)
    lost: list[Claim] = field(default_factory=list)
    waits_for_retry: bool = False

    @property
    def queue_moves_on(self) -> bool:
        """Whether the queue's next events may be sent: no event waits and no lease was lost."""
        return not self.waits_for_retry and not self.lost

    def report(self) -> None:
        max_attempts = current_app.config["WEBHOOK_RETRY_MAX_ATTEMPTS"]
        for claim in self.lost:
            logger.warning("Delivery %s finished after its lease ran out; another attempt owns it", claim.public_id)
        for claim, outcome, result, next_attempt_at in self.results:
            if result == metrics.ATTEMPT_WILL_RETRY:
                logger.info("Delivery %s of %s failed (%s); attempt %d of %d is due at %s", claim.public_id,
                            claim.name, outcome.error, claim.attempt + 1, max_attempts, next_attempt_at.isoformat())
            elif result == metrics.ATTEMPT_GAVE_UP:
                logger.warning("Delivery %s of %s for instance %s failed for good after %d attempts: %s",
                               claim.public_id, claim.name, claim.instance_name, claim.attempt, outcome.error)
            metrics.count_delivery_attempt(result)


def record_outcomes(claims: list[Claim], outcomes: list[Outcome], lease_token: str, now: datetime) -> Recorded:
    """Store the outcomes of `claims[:len(outcomes)]` and release the unsent claims after them.

    Only events that still carry `lease_token` are written. For the others the lease ran out
    and another claim owns them, so their outcome is dropped.
    """
    config = current_app.config
    query = select(Event.pk).where(Event.pk.in_([claim.pk for claim in claims]), Event.lease_token == lease_token)
    if db.engine.dialect.name == "postgresql":
        query = query.with_for_update(of=Event)
    owned = set(db.session.scalars(query))

    recorded = Recorded()
    attempts = []
    changes = []
    settled = {SERVER_ACK: [], ERROR: []}
    for claim, outcome in zip(claims, outcomes):
        if claim.pk not in owned:
            recorded.lost.append(claim)
            continue
        change = {"pk": claim.pk, "lease_until": None, "lease_token": None, "last_error": outcome.error}
        next_attempt_at = None
        if outcome.delivered:
            change.update(status=DELIVERED, finished_at=now)
            settled[SERVER_ACK].append(claim.message_pk)
            result = metrics.ATTEMPT_DELIVERED
        elif will_retry(claim, outcome, config):
            next_attempt_at = now + timedelta(seconds=retry_delay(claim.attempt, outcome.retry_after, config))
            change.update(next_attempt_at=next_attempt_at)
            recorded.waits_for_retry = True
            result = metrics.ATTEMPT_WILL_RETRY
        else:
            change.update(status=FAILED, finished_at=now)
            settled[ERROR].append(claim.message_pk)
            result = metrics.ATTEMPT_GAVE_UP
        changes.append(change)
        attempts.append({"event_pk": claim.pk, "number": claim.attempt, "attempted_at": now,
                         "status_code": outcome.status_code, "error": outcome.error, "next_attempt_at": next_attempt_at})
        recorded.results.append((claim, outcome, result, next_attempt_at))

    for claim in claims[len(outcomes):]:
        if claim.pk in owned:
            # Never sent: the attempt counted by the claim is taken back.
            changes.append({"pk": claim.pk, "attempts": claim.attempt - 1, "lease_until": None, "lease_token": None})

    if attempts:
        db.session.execute(insert(DeliveryAttempt), attempts)
    if changes:
        db.session.execute(update(Event), changes)
    settle_messages(settled[SERVER_ACK], SERVER_ACK)
    settle_messages(settled[ERROR], ERROR)
    return recorded


def abandon_unfinished(rows, now: datetime) -> None:
    """Fail events whose every attempt was claimed but never recorded.

    The sending process died each time, so claiming them again would hold up the rest of
    their queue for ever. `rows` need the `pk`, `attempts` and `message_pk` columns.
    """
    db.session.execute(insert(DeliveryAttempt), [
        {"event_pk": row.pk, "number": row.attempts, "attempted_at": now, "error": UNFINISHED_ERROR} for row in rows
    ])
    db.session.execute(update(Event), [
        {"pk": row.pk, "status": FAILED, "finished_at": now, "last_error": UNFINISHED_ERROR} for row in rows
    ])
    settle_messages([row.message_pk for row in rows], ERROR)


def settle_messages(message_pks: list[int | None], status: str) -> None:
    """Move pending outgoing messages to their final status, emitting MESSAGES_UPDATE for each.

    Messages deleted with their instance, or already settled, are skipped. The events are
    emitted in the order of `message_pks`, to the receivers configured at this moment.
    """
    message_pks = [pk for pk in message_pks if pk is not None]
    if not message_pks:
        return
    query = (
        select(Message.pk, Message.key_id, Message.remote_jid, Message.from_me, Instance)
        .join(Instance, Message.instance_pk == Instance.pk)
        .options(joinedload(Instance.webhook))
        .where(Message.pk.in_(message_pks), Message.status == PENDING)
    )
    if db.engine.dialect.name == "postgresql":
        query = query.with_for_update(of=Message)
    pending = {row.pk: row for row in db.session.execute(query)}
    if not pending:
        return
    db.session.execute(
        update(Message).where(Message.pk.in_(list(pending))).values(status=status)
        .execution_options(synchronize_session=False)
    )
    for pk in message_pks:
        row = pending.get(pk)
        if row is None:
            continue
        emit(row.Instance, MESSAGES_UPDATE, {
            "keyId": row.key_id, "remoteJid": row.remote_jid, "fromMe": row.from_me,
            "status": status, "instanceId": row.Instance.public_id,
        })
