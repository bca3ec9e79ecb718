"""Outbox delivery: claim due events, sign and post them, record each attempt, retry or give up.

Only the oldest pending event of a queue (one queue per receiver and instance) can be
claimed, so a queue's events arrive in order while a slow receiver holds up nothing but its
own queue. A claim is a lease: when a process dies mid-delivery, the lease runs out and
another process makes the delivery again, with the same `X-Webhook-Id`. The threads that run
these steps are in `delivery_worker.py`.
"""

import hashlib
import hmac
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

import requests
from flask import current_app
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import aliased

import database
import webhook_http
import metrics
from config import VERSION
from events import MESSAGES_UPDATE, emit, without_credentials
from models import DELIVERED, ERROR, FAILED, PENDING, PENDING_EVENT, SERVER_ACK, DeliveryAttempt, Event, Message, db, utc_now
from webhooks import BlockedDestination, check_destination

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = {408, 429}


@dataclass(frozen=True)
class Claim:
    """The data a sender thread needs for one attempt, copied out of the claiming transaction."""

    pk: int
    public_id: str
    name: str
    instance_name: str
    url: str
    headers: dict
    secret: str
    body: bytes
    attempt: int
    lease_token: str


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retryable: bool
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the `X-Webhook-Signature` value: HMAC-SHA256 over `TIMESTAMP.BODY`."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def claimable(now: datetime):
    """Return the conditions of a pending event that is due and not leased at `now`."""
    return (
        Event.status == PENDING_EVENT,
        Event.next_attempt_at <= now,
        or_(Event.lease_until.is_(None), Event.lease_until <= now),
    )


def any_event_due(now: datetime) -> bool:
    """Return whether some event could be claimed, in a read-only transaction that ends here.

    An idle worker polls with this check alone, so on SQLite it takes no write lock (BEGIN
    IMMEDIATE) and does not hold up requests that write.
    """
    found = db.session.scalar(select(Event.pk).where(*claimable(now)).limit(1))
    db.session.rollback()
    return found is not None


def claim_due_events(limit: int, lease_seconds: float) -> list[Claim]:
    """Lease up to `limit` due events, each the oldest pending event of its queue."""
    now = utc_now()
    if not any_event_due(now):
        return []

    earlier = aliased(Event)
    has_earlier = exists().where(
        earlier.queue == Event.queue,
        earlier.status == PENDING_EVENT,
        or_(earlier.due_at < Event.due_at, and_(earlier.due_at == Event.due_at, earlier.pk < Event.pk)),
    )

    query = (
        select(Event)
        .where(*claimable(now), ~has_earlier)
        .order_by(Event.due_at, Event.pk)
        .limit(limit)
    )
    database.begin_write()
    if db.engine.dialect.name == "postgresql":
        # Two processes claiming at once skip each other's rows instead of waiting on them.
        query = query.with_for_update(skip_locked=True, of=Event)

    token = str(uuid.uuid4())
    claims = []
    abandoned = []
    for event in db.session.scalars(query):
        if event.attempts >= current_app.config["WEBHOOK_RETRY_MAX_ATTEMPTS"]:
            abandon_unfinished(event, now)
            abandoned.append(event.public_id)
            continue
        event.attempts += 1
        event.lease_until = now + timedelta(seconds=lease_seconds)
        event.lease_token = token
        claims.append(Claim(
            pk=event.pk, public_id=event.public_id, name=event.name, instance_name=event.instance_name,
            url=event.url, headers=dict(event.headers or {}), secret=event.secret, body=bytes(event.body),
            attempt=event.attempts, lease_token=token,
        ))
    db.session.commit()

    for public_id in abandoned:
        logger.warning("Delivery %s failed for good: none of its attempts finished", public_id)
        metrics.count_delivery_attempt(metrics.ATTEMPT_GAVE_UP)
    return claims


def abandon_unfinished(event: Event, now: datetime) -> None:
    """Fail an event whose every attempt was claimed but never recorded.

    The sending process died each time, so claiming it again would hold up the rest of its
    queue for ever.
    """
    event.last_error = "no attempt finished; the sending process stopped each time"
    db.session.add(DeliveryAttempt(event_pk=event.pk, number=event.attempts, attempted_at=now, error=event.last_error))
    finish_event(event, FAILED, now)


def attempt_delivery(claim: Claim, config: dict) -> Outcome:
    """Post the event once; never follows redirects."""
    if config["WEBHOOK_BLOCK_PRIVATE_NETWORKS"]:
        try:
            check_destination(claim.url)
        except BlockedDestination as error:
            return Outcome(delivered=False, retryable=False, error=str(error))
    parts = urlsplit(claim.url)
    auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
    timestamp = str(int(time.time()))
    headers = {
        **claim.headers,
        "Content-Type": "application/json",
        "User-Agent": f"evogate/{VERSION}",
        "X-Webhook-Id": claim.public_id,
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": sign(claim.secret, timestamp, claim.body),
    }
    try:
        response = webhook_http.post(
            without_credentials(claim.url), config["WEBHOOK_REQUEST_TIMEOUT_MS"] / 1000,
            data=claim.body, headers=headers, auth=auth, allow_redirects=False,
            verify=config["WEBHOOK_CA_BUNDLE"] or True,
        )
    except requests.Timeout:
        return Outcome(delivered=False, retryable=True, error="the receiver timed out")
    except requests.RequestException as error:
        # The class name only: messages can carry the URL, and URLs can carry secrets.
        return Outcome(delivered=False, retryable=True, error=f"connection failed ({type(error).__name__})")
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return Outcome(delivered=True, retryable=False, status_code=status)
    return Outcome(
        delivered=False,
        retryable=status >= 500 or status in RETRYABLE_STATUSES,
        status_code=status,
        error=f"the receiver answered {status}",
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a `Retry-After` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def retry_delay(attempts: int, retry_after: float | None, config: dict) -> float:
    """Exponential back-off with jitter, at least what the receiver asked for, at most the maximum."""
    ceiling = config["WEBHOOK_RETRY_MAX_DELAY_SECONDS"]
    delay = min(ceiling, config["WEBHOOK_RETRY_INITIAL_DELAY_SECONDS"] * 2 ** (attempts - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, ceiling))
    return delay


def record_outcome(claim: Claim, outcome: Outcome) -> None:
    """Store the attempt and the event's next state, and settle the message it carried."""
    config = current_app.config
    database.begin_write()
    event = db.session.get(Event, claim.pk)
    if event is None or event.lease_token != claim.lease_token:
        logger.warning("Delivery %s finished after its lease ran out; another attempt owns it", claim.public_id)
        db.session.rollback()
        return
    now = utc_now()
    attempt = DeliveryAttempt(event_pk=event.pk, number=claim.attempt, attempted_at=now,
                              status_code=outcome.status_code, error=outcome.error)
    event.lease_until = event.lease_token = None
    event.last_error = outcome.error
    if outcome.delivered:
        finish_event(event, DELIVERED, now)
        attempt_result = metrics.ATTEMPT_DELIVERED
    elif outcome.retryable and event.attempts < config["WEBHOOK_RETRY_MAX_ATTEMPTS"]:
        event.next_attempt_at = now + timedelta(seconds=retry_delay(event.attempts, outcome.retry_after, config))
        attempt.next_attempt_at = event.next_attempt_at
        logger.info("Delivery %s of %s failed (%s); attempt %d of %d is due at %s", claim.public_id,
                    claim.name, outcome.error, event.attempts + 1, config["WEBHOOK_RETRY_MAX_ATTEMPTS"],
                    event.next_attempt_at.isoformat())
        attempt_result = metrics.ATTEMPT_WILL_RETRY
    else:
        finish_event(event, FAILED, now)
        logger.warning("Delivery %s of %s for instance %s failed for good after %d attempts: %s",
                       claim.public_id, claim.name, claim.instance_name, event.attempts, outcome.error)
        attempt_result = metrics.ATTEMPT_GAVE_UP
    db.session.add(attempt)
    db.session.commit()
    metrics.count_delivery_attempt(attempt_result)


def finish_event(event: Event, status: str, now: datetime) -> None:
    """Mark the event DELIVERED or FAILED and settle the message it carried accordingly."""
    event.status, event.finished_at = status, now
    settle_message(event.message_pk, SERVER_ACK if status == DELIVERED else ERROR)


def settle_message(message_pk: int | None, status: str) -> None:
    """Move a pending outgoing message to its final status and emit MESSAGES_UPDATE."""
    if message_pk is None:
        return
    message = db.session.get(Message, message_pk)
    if message is None or message.status != PENDING:
        return  # deleted with its instance, or already settled
    message.status = status
    emit(message.instance, MESSAGES_UPDATE, {
        "keyId": message.key_id, "remoteJid": message.remote_jid, "fromMe": message.from_me,
        "status": status, "instanceId": message.instance.public_id,
    })
