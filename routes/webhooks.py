"""Webhook routes: configure the instance's receiver, and the EVOLUTION channel's inbound messages."""

from flask import Blueprint, g

import messages
import webhooks
from routes import json_body
from schemas import inbound_message_schema, message_record_schema
from webhook_schemas import webhook_answer_schema, webhook_set_schema

bp = Blueprint("webhooks", __name__, url_prefix="/webhook")


@bp.post("/set/<name>")
def set_webhook(name):
    """Replace the instance's webhook receiver."""
    data = webhook_set_schema.load(json_body(required=True))
    webhook = webhooks.configure_webhook(g.instance, data["webhook"])
    return webhook_answer_schema.dump(webhook), 201


@bp.get("/find/<name>")
def find_webhook(name):
    """Show the instance's webhook receiver, or null when none is configured."""
    webhook = webhooks.find_webhook(g.instance.pk)
    return webhook_answer_schema.dump(webhook) if webhook is not None else "null\n", 200, {
        "Content-Type": "application/json"
    }


@bp.post("/evolution/<name>")
def receive_message(name):
    """Store a message the instance received; posting the same key.id again stores nothing."""
    data = inbound_message_schema.load(json_body(required=True))
    message, created = messages.receive_message(g.instance, data)
    return message_record_schema.dump(message), 201 if created else 200
