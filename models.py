"""Database models: instances, their messages and webhooks, and the event outbox.

`db` is created unbound here and bound to the app in `create_app`, so nothing imports the app.
"""

import operator
import re
import uuid
from datetime import datetime, timezone

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import DeclarativeBase, Mapped, joinedload, mapped_column, relationship

# Stable constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Sessions last one request or one delivery step, so objects need no reload after a commit:
# keeping their values saves a SELECT per object that an answer or a log line reads afterwards.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})

OPEN, CLOSE, CONNECTING = "open", "close", "connecting"
EVOLUTION = "EVOLUTION"
PENDING, SERVER_ACK, ERROR, DELIVERY_ACK = "PENDING", "SERVER_ACK", "ERROR", "DELIVERY_ACK"
# The states of an outbox event (`Event.status`).
PENDING_EVENT, DELIVERED, FAILED = "pending", "delivered", "failed"
INSTANCE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PUBLIC_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANCE_NAME_RULE = "1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"


def is_valid_instance_name(name: str) -> bool:
    return INSTANCE_NAME_PATTERN.fullmatch(name) is not None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_uuid() -> str:
    return str(uuid.uuid4())


def is_valid_public_id(value: str) -> bool:
    """Return whether a value has the form `new_uuid` gives every public id."""
    return PUBLIC_ID_PATTERN.fullmatch(value) is not None


def owner_jid(number: str | None) -> str | None:
    """Return the WhatsApp JID of an instance's own number, or None without a number."""
    return f"{number}@s.whatsapp.net" if number else None


class Instance(db.Model):
    """A messaging instance; only the SHA-256 digest of its token is stored."""

    __tablename__ = "instances"

    # The integer key gives creation order; `public_id` is the UUID clients see as `id`.
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    integration: Mapped[str] = mapped_column(String(32), default=EVOLUTION)
    connection_status: Mapped[str] = mapped_column(String(16), default=OPEN)
    number: Mapped[str | None] = mapped_column(String(15))
    profile_name: Mapped[str | None] = mapped_column(String(128))
    profile_pic_url: Mapped[str | None] = mapped_column(String(1024))

    reject_call: Mapped[bool] = mapped_column(Boolean, default=False)
    msg_call: Mapped[str] = mapped_column(Text, default="")
    groups_ignore: Mapped[bool] = mapped_column(Boolean, default=False)
    always_online: Mapped[bool] = mapped_column(Boolean, default=False)
    read_messages: Mapped[bool] = mapped_column(Boolean, default=False)
    read_status: Mapped[bool] = mapped_column(Boolean, default=False)
    sync_full_history: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)

    messages: Mapped[list["Message"]] = relationship(
        back_populates="instance", cascade="all, delete-orphan", passive_deletes=True
    )
    webhook: Mapped["Webhook | None"] = relationship(
        back_populates="instance", cascade="all, delete-orphan", passive_deletes=True
    )

    @classmethod
    def find_by_name(cls, name: str) -> "Instance | None":
        """Return the instance with exactly this name; a name that breaks the rule matches none."""
        if not is_valid_instance_name(name):
            return None
        return db.session.scalar(INSTANCE_BY_NAME, {"name": name})

    @classmethod
    def find_row_by_name(cls, name: str) -> Row | None:
        """Return the instance with exactly this name as a read-only row (see INSTANCE_ROW)."""
        if not is_valid_instance_name(name):
            return None
        return db.session.execute(INSTANCE_ROW_BY_NAME, {"name": name}).first()

    @property
    def owner_jid(self) -> str | None:
        return owner_jid(self.number)

    @property
    def settings(self) -> dict:
        return {
            "rejectCall": self.reject_call,
            "msgCall": self.msg_call,
            "groupsIgnore": self.groups_ignore,
            "alwaysOnline": self.always_online,
            "readMessages": self.read_messages,
            "readStatus": self.read_status,
            "syncFullHistory": self.sync_full_history,
        }

    def __repr__(self) -> str:
        return f"<Instance {self.name}>"


# Every column of an instance, loaded as a row for requests that only read: the row has the
# Instance's attribute names but no relationships, and it loads faster than an ORM object.
# With it, token-authenticated connectionState served 10% to 15% more requests per second on
# SQLite, measured with wrk under gunicorn as bench/run.py does.
INSTANCE_ROW = select(Instance.__table__)
INSTANCE_ROW_BY_NAME = INSTANCE_ROW.where(Instance.__table__.c.name == bindparam("name"))
# The columns `fetchInstances` shows: selected alone, a long listing skips building ORM objects.
INSTANCE_LISTING_COLUMNS = (
    Instance.public_id, Instance.name, Instance.connection_status, Instance.integration, Instance.number,
    Instance.profile_name, Instance.profile_pic_url, Instance.reject_call, Instance.msg_call,
    Instance.groups_ignore, Instance.always_online, Instance.read_messages, Instance.read_status,
    Instance.sync_full_history, Instance.created_at, Instance.updated_at,
)
# An instance's (an object's or a row's) values of INSTANCE_LISTING_COLUMNS, as one tuple.
listing_values = operator.attrgetter(*(column.key for column in INSTANCE_LISTING_COLUMNS))


class Message(db.Model):
    """A message sent or received through an instance."""

    __tablename__ = "messages"
    # Incoming messages are idempotent by the sender's id; outgoing ids are generated here.
    __table_args__ = (UniqueConstraint("instance_pk", "from_me", "key_id"),)

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # The unique constraint below starts with this column, so it also serves as its index.
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instances.pk", ondelete="CASCADE"))
    key_id: Mapped[str] = mapped_column(String(128))
    remote_jid: Mapped[str] = mapped_column(String(128))
    from_me: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    message_type: Mapped[str] = mapped_column(String(32), default="conversation")
    text: Mapped[str] = mapped_column(Text)
    push_name: Mapped[str | None] = mapped_column(String(256))
    message_timestamp: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    instance: Mapped[Instance] = relationship(back_populates="messages")

    def __repr__(self) -> str:
        return f"<Message {self.key_id}>"


class Webhook(db.Model):
    """An instance's webhook receiver: where its events are delivered and how they are signed."""

    __tablename__ = "webhooks"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instances.pk", ondelete="CASCADE"), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str | None] = mapped_column(Text)
    events: Mapped[list] = mapped_column(JSON, default=list)
    by_events: Mapped[bool] = mapped_column(Boolean, default=False)
    base64: Mapped[bool] = mapped_column(Boolean, default=False)
    headers: Mapped[dict] = mapped_column(JSON, default=dict)
    secret: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)

    instance: Mapped[Instance] = relationship(back_populates="webhook")

    def wants(self, event_name: str) -> bool:
        return self.enabled and bool(self.url) and (not self.events or event_name in self.events)


class Event(db.Model):
    """One delivery in the outbox: an event for one receiver, fixed when it was written.

    Nothing here refers to the instance by foreign key, so deliveries queued before an
    instance is deleted are still made.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_pending", "status", "queue", "due_at", "pk"),)

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    # Deliveries of one queue are made one at a time, in order: one queue per receiver.
    queue: Mapped[str] = mapped_column(String(80))
    name: Mapped[str] = mapped_column(String(40))
    instance_name: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict] = mapped_column(JSON, default=dict)
    secret: Mapped[str] = mapped_column(String(256))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    # The outgoing message whose status this delivery decides, for the instance receiver only.
    message_pk: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=PENDING_EVENT)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryAttempt(db.Model):
    """The outcome of one attempt to deliver an event."""

    __tablename__ = "delivery_attempts"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("events.pk", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# Built once, because building the statement per request cost about as much as running it.
# The webhook comes in the same query, because most requests that write emit events. Defined
# last, because the option needs every mapped class.
INSTANCE_BY_NAME = select(Instance).where(Instance.name == bindparam("name")).options(joinedload(Instance.webhook))
