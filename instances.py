"""Instance operations: create, list, change state, rotate the token, delete.

Each operation commits its change in one transaction. Conflicts are detected by the
database's unique constraints, never by a check-then-insert, so concurrent requests on
several workers or hosts cannot both win.
"""

import logging
from collections.abc import Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from auth import Principal, generate_token, is_reserved_key, token_digest
from errors import ApiError
from events import CONNECTION_UPDATE, INSTANCE_CREATE, INSTANCE_DELETE, LOGOUT_INSTANCE, emit
from models import (
    CLOSE,
    EVOLUTION,
    INSTANCE_LISTING_COLUMNS,
    OPEN,
    Instance,
    db,
    is_valid_instance_name,
    is_valid_public_id,
    listing_values,
)
from webhooks import apply_webhook

logger = logging.getLogger(__name__)

SETTING_COLUMNS = {
    "rejectCall": "reject_call",
    "msgCall": "msg_call",
    "groupsIgnore": "groups_ignore",
    "alwaysOnline": "always_online",
    "readMessages": "read_messages",
    "readStatus": "read_status",
    "syncFullHistory": "sync_full_history",
}


class NameTaken(ApiError):
    status_code = 409

    def __init__(self, name: str):
        super().__init__(f'This name "{name}" is already in use.')


class TokenTaken(ApiError):
    status_code = 400

    def __init__(self):
        super().__init__("Token already exists")


def create_instance(data: dict) -> tuple[Instance, str]:
    """Store a new instance from a loaded create body; return it with its token."""
    token = data["token"] or generate_token()
    if data["token"] and is_reserved_key(token):
        raise TokenTaken()
    instance = Instance(
        name=data["instanceName"],
        token_digest=token_digest(token),
        integration=EVOLUTION,
        connection_status=OPEN,
        number=data["number"] or None,
    )
    for field, column in SETTING_COLUMNS.items():
        if data[field] is not None:
            setattr(instance, column, data[field])
    db.session.add(instance)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise_conflict(instance.name, instance.token_digest)
    if data["webhook"] is not None:
        apply_webhook(instance, data["webhook"])
    emit(instance, INSTANCE_CREATE, instance_identity(instance))
    db.session.commit()
    logger.info("Instance created: name=%s id=%s", instance.name, instance.public_id)
    return instance, token


def instance_identity(instance: Instance) -> dict:
    return {"instanceName": instance.name, "instanceId": instance.public_id}


def raise_conflict(name: str, digest: str) -> None:
    """Name the constraint a failed insert or update broke; the name is checked first."""
    if name and db.session.scalar(select(Instance.pk).where(Instance.name == name)) is not None:
        raise NameTaken(name)
    if db.session.scalar(select(Instance.pk).where(Instance.token_digest == digest)) is not None:
        raise TokenTaken()
    raise ApiError("The instance could not be stored; try again.", 409)


def rotate_token(instance: Instance, custom_token: str | None) -> str:
    """Replace the instance's token; the old one fails from the next request on."""
    token = custom_token or generate_token()
    if custom_token and is_reserved_key(token):
        raise TokenTaken()
    digest = token_digest(token)
    instance.token_digest = digest
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise_conflict("", digest)
    logger.info("Instance token rotated: name=%s id=%s", instance.name, instance.public_id)
    return token


# Rows an unfiltered listing reads from the database in one query.
LISTING_BATCH_SIZE = 250


def find_instances(principal: Principal, name: str, public_id: str, expose: bool) -> Iterable:
    """Return the instances `fetchInstances` shows to this principal, in creation order.

    Every row starts with the values of INSTANCE_LISTING_COLUMNS. An instance token gets its
    own instance's values. An unfiltered listing with the global key reads its rows as it is
    iterated (see `read_in_batches`), so a listing of thousands of instances is never in
    memory at once.

    Raises PermissionError when an instance token filters for another instance, and
    LookupError (with the filter value) when a global-key filter matches nothing.
    """
    if not principal.is_global:
        own = principal.instance
        if (name and name != own.name) or (public_id and public_id != own.public_id):
            raise PermissionError(name or public_id)
        return [listing_values(own)]
    if not (name or public_id) and not expose:
        return []
    if (name and not is_valid_instance_name(name)) or (public_id and not is_valid_public_id(public_id)):
        # No instance has such a name or id, and PostgreSQL fails on a query value with a NUL.
        raise LookupError(name or public_id)
    query = select(*INSTANCE_LISTING_COLUMNS).order_by(Instance.pk)
    if not (name or public_id):
        return read_in_batches(query)
    if name:
        query = query.where(Instance.name == name)
    if public_id:
        query = query.where(Instance.public_id == public_id)
    found = db.session.execute(query).all()
    if not found:
        raise LookupError(name or public_id)
    return found


def read_in_batches(query) -> Iterator:
    """Yield the rows of a listing query ordered by primary key, one query per batch of rows.

    Each batch starts after the last primary key of the one before, so neither the server nor
    the driver keeps the whole result, and no query or transaction stays open between batches.
    An instance created or deleted meanwhile may or may not be listed; none is listed twice.
    """
    query = query.add_columns(Instance.pk.label("listing_pk")).limit(LISTING_BATCH_SIZE)
    batch_query = query
    while True:
        rows = db.session.execute(batch_query).all()
        yield from rows
        if len(rows) < LISTING_BATCH_SIZE:
            return
        batch_query = query.where(Instance.pk > rows[-1].listing_pk)


def set_connection_status(instance: Instance, status: str, extra_event: str | None = None) -> bool:
    """Change the instance's state; return False when it already was in that state.

    A change emits CONNECTION_UPDATE (and `extra_event`, if given) in the same transaction.
    """
    if instance.connection_status == status:
        return False
    previous, instance.connection_status = instance.connection_status, status
    if extra_event:
        emit(instance, extra_event, instance_identity(instance))
    emit(instance, CONNECTION_UPDATE, {"instance": instance.name, "state": status})
    db.session.commit()
    logger.info("Instance state changed: name=%s from=%s to=%s", instance.name, previous, status)
    return True


def logout(instance: Instance) -> bool:
    return set_connection_status(instance, CLOSE, extra_event=LOGOUT_INSTANCE)


def connect(instance: Instance) -> None:
    set_connection_status(instance, OPEN)


def delete_instance(instance: Instance) -> None:
    """Delete the instance and, through the foreign key's cascade, everything it owns.

    INSTANCE_DELETE is queued first, with the receivers configured at this moment; queued
    deliveries do not refer to the instance, so they are still made.
    """
    emit(instance, INSTANCE_DELETE, instance_identity(instance))
    db.session.delete(instance)
    db.session.commit()
    logger.info("Instance deleted: name=%s id=%s", instance.name, instance.public_id)
