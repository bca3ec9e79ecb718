"""Events: Evolution's event names and the outbox rows written with the change that caused them.

`emit` inserts one outbox row per receiver that wants the event (the instance's webhook and
the global receiver) in the caller's transaction; the caller's commit stores them together
with the change, so an event exists exactly when its change does.
"""

import json
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from flask import current_app
from sqlalchemy import insert

from models import Event, Instance, db, utc_now
from schema_fields import iso_timestamp

EVENT_NAMES = (
    "APPLICATION_STARTUP", "QRCODE_UPDATED", "MESSAGES_SET", "MESSAGES_UPSERT", "MESSAGES_EDITED",
    "MESSAGES_UPDATE", "MESSAGES_DELETE", "SEND_MESSAGE", "SEND_MESSAGE_UPDATE", "CONTACTS_SET",
    "CONTACTS_UPSERT", "CONTACTS_UPDATE", "PRESENCE_UPDATE", "CHATS_SET", "CHATS_UPSERT", "CHATS_UPDATE",
    "CHATS_DELETE", "GROUPS_UPSERT", "GROUP_UPDATE", "GROUP_PARTICIPANTS_UPDATE", "CONNECTION_UPDATE",
    "LABELS_EDIT", "LABELS_ASSOCIATION", "CALL", "TYPEBOT_START", "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE", "LOGOUT_INSTANCE", "INSTANCE_CREATE", "INSTANCE_DELETE", "STATUS_INSTANCE",
)
INSTANCE_CREATE, INSTANCE_DELETE, LOGOUT_INSTANCE = "INSTANCE_CREATE", "INSTANCE_DELETE", "LOGOUT_INSTANCE"
CONNECTION_UPDATE, SEND_MESSAGE = "CONNECTION_UPDATE", "SEND_MESSAGE"
MESSAGES_UPSERT, MESSAGES_UPDATE = "MESSAGES_UPSERT", "MESSAGES_UPDATE"


def dotted_name(name: str) -> str:
    """Return the name receivers see: SEND_MESSAGE becomes send.message."""
    return name.lower().replace("_", ".")


def receiver_url(url: str, name: str, by_events: bool) -> str:
    """Return the URL to post to; with by_events the path gets the kebab-case event name."""
    if not by_events:
        return url
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + name.lower().replace("_", "-")
    return urlunsplit(parts._replace(path=path))


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# A Core insert, because an outbox row is never read back in the transaction that writes it.
# The ORM's unit of work took over a third of a sendText request's CPU in a profile.
_INSERT_EVENT = insert(Event.__table__)


def emit(instance: Instance, name: str, data: dict, due_at: datetime | None = None,
         message_pk: int | None = None) -> None:
    """Queue an event of `instance` for every receiver that wants it, in the current transaction."""
    now = utc_now()
    due_at = due_at or now
    webhook = instance.webhook
    if webhook is not None and webhook.wants(name):
        add_event(
            instance, name, data, now, due_at,
            queue=f"instance:{instance.public_id}", url=receiver_url(webhook.url, name, webhook.by_events),
            headers=webhook.headers or {}, secret=webhook.secret,
            message_pk=message_pk if name == SEND_MESSAGE else None,
        )
    config = current_app.config
    if config["WEBHOOK_GLOBAL_ENABLED"]:
        add_event(
            instance, name, data, now, due_at,
            queue=f"global:{instance.public_id}",
            url=receiver_url(config["WEBHOOK_GLOBAL_URL"], name, config["WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS"]),
            headers={}, secret=config["WEBHOOK_GLOBAL_SECRET"], message_pk=None,
        )


def add_event(instance: Instance, name: str, data: dict, now: datetime, due_at: datetime, *, queue: str,
              url: str, headers: dict, secret: str, message_pk: int | None) -> None:
    envelope = {
        "event": dotted_name(name),
        "instance": instance.name,
        "data": data,
        "destination": without_credentials(url),
        "date_time": iso_timestamp(now),
    }
    if instance.owner_jid:
        envelope["sender"] = instance.owner_jid
    envelope["server_url"] = current_app.config["SERVER_URL"]
    envelope["apikey"] = None  # Evolution's field; evogate never sends a key or token
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    db.session.execute(_INSERT_EVENT, {
        "queue": queue, "name": name, "instance_name": instance.name, "url": url, "headers": headers,
        "secret": secret, "body": body, "message_pk": message_pk, "due_at": due_at, "next_attempt_at": due_at,
    })


def delay_until(milliseconds: int) -> datetime:
    return utc_now() + timedelta(milliseconds=milliseconds)
