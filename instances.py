"""Instance operations: create, list, change state, rotate the token, delete.

Each operation commits its change in one transaction. Conflicts are detected by the
database's unique constraints, never by a check-then-insert, so concurrent requests on
several workers or hosts cannot both win.
"""

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from auth import Principal, generate_token, is_reserved_key, token_digest
from errors import ApiError
from models import CLOSE, EVOLUTION, OPEN, Instance, db

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
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise_conflict(instance.name, instance.token_digest)
    logger.info("Instance created: name=%s id=%s", instance.name, instance.public_id)
    return instance, token


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
    instance.token_digest = token_digest(token)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise_conflict("", token_digest(token))
    logger.info("Instance token rotated: name=%s id=%s", instance.name, instance.public_id)
    return token


def find_instances(principal: Principal, name: str, public_id: str, expose: bool) -> list[Instance]:
    """Return the instances `fetchInstances` shows to this principal, in creation order.

    Raises PermissionError when an instance token filters for another instance, and
    LookupError (with the filter value) when a global-key filter matches nothing.
    """
    if not principal.is_global:
        own = principal.instance
        if (name and name != own.name) or (public_id and public_id != own.public_id):
            raise PermissionError(name or public_id)
        return [own]
    if not (name or public_id) and not expose:
        return []
    query = select(Instance).order_by(Instance.pk)
    if name:
        query = query.where(Instance.name == name)
    if public_id:
        query = query.where(Instance.public_id == public_id)
    found = list(db.session.scalars(query))
    if (name or public_id) and not found:
        raise LookupError(name or public_id)
    return found


def set_connection_status(instance: Instance, status: str) -> bool:
    """Change the instance's state; return False when it already was in that state."""
    if instance.connection_status == status:
        return False
    previous, instance.connection_status = instance.connection_status, status
    db.session.commit()
    logger.info("Instance state changed: name=%s from=%s to=%s", instance.name, previous, status)
    return True


def logout(instance: Instance) -> bool:
    return set_connection_status(instance, CLOSE)


def connect(instance: Instance) -> None:
    set_connection_status(instance, OPEN)


def delete_instance(instance: Instance) -> None:
    """Delete the instance and, through the foreign key's cascade, everything it owns."""
    db.session.delete(instance)
    db.session.commit()
    logger.info("Instance deleted: name=%s id=%s", instance.name, instance.public_id)
