"""Chat routes: page through an instance's stored messages."""

import math

from flask import Blueprint, g

import messages
from routes import json_body
from schemas import find_messages_schema, message_records_schema

bp = Blueprint("chat", __name__, url_prefix="/chat")


@bp.post("/findMessages/<name>")
def find_messages(name):
    """List the instance's messages, newest first, one page at a time."""
    data = find_messages_schema.load(json_body(required=False))
    where = ((data["where"] or {}).get("key")) or {}
    total, records = messages.find_messages(g.instance, where, data["page"], data["offset"])
    return {"messages": {
        "total": total,
        "pages": math.ceil(total / data["offset"]),
        "currentPage": data["page"],
        "records": message_records_schema.dump(records),
    }}
