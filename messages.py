"""Message operations: store an outgoing text message for the instance's channel."""

import logging
import secrets
import time

from errors import ApiError
from models import OPEN, PENDING, Instance, Message, db

logger = logging.getLogger(__name__)


class NotConnected(ApiError):
    status_code = 400

    def __init__(self, name: str):
        super().__init__(f'The "{name}" instance is not connected')


def new_message_id() -> str:
    """Return a message id in the form WhatsApp Web uses: 3EB0 and 16 upper-case hex digits."""
    return "3EB0" + secrets.token_hex(8).upper()


def send_text(instance: Instance, data: dict) -> Message:
    """Store a text message as PENDING; it is committed before the caller answers."""
    if instance.connection_status != OPEN:
        raise NotConnected(instance.name)
    message = Message(
        instance=instance,
        key_id=new_message_id(),
        remote_jid=data["number"],
        from_me=True,
        status=PENDING,
        message_type="conversation",
        text=data["text"],
        message_timestamp=int(time.time()),
    )
    db.session.add(message)
    db.session.commit()
    logger.info("Message stored: instance=%s id=%s", instance.name, message.key_id)
    return message
