"""Message routes: send text through an instance."""

from flask import Blueprint, g

import messages
from routes import json_body
from schemas import message_schema, send_text_schema

bp = Blueprint("messages", __name__, url_prefix="/message")


@bp.post("/sendText/<name>")
def send_text(name):
    """Store a text message for delivery by the instance's channel."""
    data = send_text_schema.load(json_body(required=True))
    message = messages.send_text(g.instance, data)
    return message_schema.dump(message), 201
