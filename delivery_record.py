"""The rows a delivery attempt leaves: attempts, event states and back-off, settled messages.

Every function here writes in the caller's transaction, a batch of events at a time, with
one statement per kind of change rather than one per event. The statements are Core
statements built once, because the rows they change are never read back as objects. In a
profile, the ORM's bulk update of the events alone took about a tenth of the delivery CPU.
"""

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.orm import joinedload

import metrics
from delivery_attempt import Claim, Outcome
from events import MESSAGES_UPDATE, emit
from models import (
    DELIVERED, ERROR, FAILED, PENDING, PENDING_EVENT, SERVER_ACK, DeliveryAttempt, Event, Instance, Message, Webhook,
    db,
)

logger = logging.getLogger(__name__)

_events = Event.__table__
_messages = Message.__table__
_INSERT_ATTEMPTS = insert(DeliveryAttempt.__table__)
# Events that a claim still owns: their lease token is the claim's. For the others the lease
# ran out and another claim owns them.
_OWNED = and_(_events.c.pk.in_(bindparam("pks", expanding=True)),
              _events.c.lease_token == bindparam("claim_lease_token"))
# The same outcome of attempts at several events, written where the claim still owns them.
# `next_attempt_at` changes only when a retry is due. Events that end alike share one
# statement. With one per event, these updates took about 13% of the delivery process's CPU
# in a profile on PostgreSQL.
_RECORD_OUTCOME = (
    update(_events).where(_OWNED)
    .values(status=bindparam("new_status"), finished_at=bindparam("new_finished_at"),
            next_attempt_at=func.coalesce(bindparam("new_next_attempt_at", type_=_events.c.next_attempt_at.type),
                                          _events.c.next_attempt_at),
            last_error=bindparam("new_last_error"), lease_until=None, lease_token=None)
    .returning(_events.c.pk)
)
# Claimed events that were not sent: the lease ends and the attempt each counted is taken back.
_RELEASE = update(_events).where(_OWNED).values(attempts=_events.c.attempts - 1, lease_until=None, lease_token=None)
# Pending messages take their final status, and their columns come back for MESSAGES_UPDATE.
_SETTLE = (
    update(_messages)
    .where(_messages.c.pk.in_(bindparam("pks", expanding=True)), _messages.c.status == PENDING)
    .values(status=bindparam("new_status"))
    .returning(_messages.c.pk, _messages.c.instance_pk, _messages.c.key_id, _messages.c.remote_jid,
               _messages.c.from_me)
)

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


def record_outcomes(batches: list[tuple[list[Claim], list[Outcome]]], now: datetime) -> Recorded:
    """Store the outcomes of each batch's first claims and release its unsent claims after them.

    In each `(claims, outcomes)` pair, `outcomes[i]` belongs to `claims[i]`. Only events that
    still carry their claim's lease token are written. For the others the lease ran out and
    another claim owns them, so their outcome is dropped.
    """
    config = current_app.config
    recorded = Recorded()
    # The pks of the events whose outcome writes the same values, with the same lease token.
    changes: dict[tuple, list[int]] = defaultdict(list)
    released: dict[str, list[int]] = defaultdict(list)
    outcomes_by_claim = []
    for claims, outcomes in batches:
        for claim, outcome in zip(claims, outcomes):
            # The message's final status, for an event that ends here.
            message_status = None
            status, finished_at, next_attempt_at = PENDING_EVENT, None, None
            if outcome.delivered:
                status, finished_at, message_status = DELIVERED, now, SERVER_ACK
                result = metrics.ATTEMPT_DELIVERED
            elif will_retry(claim, outcome, config):
                next_attempt_at = now + timedelta(seconds=retry_delay(claim.attempt, outcome.retry_after, config))
                result = metrics.ATTEMPT_WILL_RETRY
            else:
                status, finished_at, message_status = FAILED, now, ERROR
                result = metrics.ATTEMPT_GAVE_UP
            changes[claim.lease_token, status, finished_at, next_attempt_at, outcome.error].append(claim.pk)
            outcomes_by_claim.append((claim, outcome, result, next_attempt_at, message_status))
        for claim in claims[len(outcomes):]:
            released[claim.lease_token].append(claim.pk)

    # (lease token, pk) of each event written. The same event can come twice, under an old claim
    # whose lease ran out and under the claim that took it again.
    written = set()
    for (lease_token, status, finished_at, next_attempt_at, error), pks in changes.items():
        written.update((lease_token, pk) for pk in db.session.scalars(_RECORD_OUTCOME, {
            "pks": pks, "claim_lease_token": lease_token, "new_status": status, "new_finished_at": finished_at,
            "new_next_attempt_at": next_attempt_at, "new_last_error": error,
        }))
    for lease_token, pks in released.items():
        db.session.execute(_RELEASE, {"pks": pks, "claim_lease_token": lease_token})

    attempts = []
    settled = {SERVER_ACK: [], ERROR: []}
    for claim, outcome, result, next_attempt_at, message_status in outcomes_by_claim:
        if (claim.lease_token, claim.pk) not in written:
            recorded.lost.append(claim)
            continue
        attempts.append({"event_pk": claim.pk, "number": claim.attempt, "attempted_at": now,
                         "status_code": outcome.status_code, "error": outcome.error,
                         "next_attempt_at": next_attempt_at})
        if message_status is not None:
            settled[message_status].append(claim.message_pk)
        recorded.results.append((claim, outcome, result, next_attempt_at))
    if attempts:
        db.session.execute(_INSERT_ATTEMPTS, attempts)
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
    settled = {row.pk: row for row in db.session.execute(_SETTLE, {"pks": message_pks, "new_status": status})}
    instance_pks = {row.instance_pk for row in settled.values()}
    if not instance_pks:
        return
    if not current_app.config["WEBHOOK_GLOBAL_ENABLED"]:
        # Without the global receiver, only instances whose webhook wants the event are loaded.
        webhooks = db.session.scalars(select(Webhook).where(Webhook.instance_pk.in_(instance_pks)))
        instance_pks = {webhook.instance_pk for webhook in webhooks if webhook.wants(MESSAGES_UPDATE)}
        if not instance_pks:
            return
    instances = {instance.pk: instance for instance in db.session.scalars(
        select(Instance).options(joinedload(Instance.webhook)).where(Instance.pk.in_(instance_pks)))}
    for pk in message_pks:
        row = settled.get(pk)
        instance = instances.get(row.instance_pk) if row is not None else None
        if instance is None:
            continue
        emit(instance, MESSAGES_UPDATE, {
            "keyId": row.key_id, "remoteJid": row.remote_jid, "fromMe": row.from_me,
            "status": status, "instanceId": instance.public_id,
        })
