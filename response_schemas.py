"""Marshmallow schemas of the responses that views build as plain dicts, for the API document.

The views do not dump through these schemas. The schemathesis test checks that their
responses match them.
"""

from marshmallow import Schema, fields

from models import CLOSE, CONNECTING, OPEN
from schemas import PRESENCES, InstanceSummarySchema, MessageRecordSchema, SettingsSchema

CONNECTION_STATES = [OPEN, CLOSE, CONNECTING]


class WelcomeSchema(Schema):
    status = fields.Integer(required=True, metadata={"enum": [200]})
    message = fields.String(required=True)
    version = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class InstanceStateSchema(Schema):
    instanceName = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": CONNECTION_STATES})


class StateResponseSchema(Schema):
    """The response of connect, connectionState and restart: the state after the request."""

    instance = fields.Nested(InstanceStateSchema, required=True)


class ResultMessageSchema(Schema):
    message = fields.String(required=True)


class ResultResponseSchema(Schema):
    """The response of logout and delete, in Evolution's shape."""

    status = fields.String(required=True, metadata={"enum": ["SUCCESS"]})
    error = fields.Boolean(required=True, metadata={"enum": [False]})
    response = fields.Nested(ResultMessageSchema, required=True)


class PresenceResponseSchema(Schema):
    presence = fields.String(required=True, metadata={"enum": list(PRESENCES)})


class TokenResponseSchema(Schema):
    """The response of create and rotateToken, the only ones that show the token."""

    instance = fields.Nested(InstanceSummarySchema, required=True)
    hash = fields.String(
        required=True, metadata={"description": "The instance token. It is shown only in this response."}
    )
    settings = fields.Nested(SettingsSchema, required=True)


class MessagePageSchema(Schema):
    total = fields.Integer(required=True, metadata={"minimum": 0})
    pages = fields.Integer(required=True, metadata={"minimum": 0})
    currentPage = fields.Integer(required=True, metadata={"minimum": 1})
    records = fields.List(fields.Nested(MessageRecordSchema), required=True)


class MessagesResponseSchema(Schema):
    """The findMessages response: one page of messages, newest first."""

    messages = fields.Nested(MessagePageSchema, required=True)
