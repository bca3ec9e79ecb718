"""Marshmallow schemas: request bodies (load) and answers (dump), with Evolution's field names."""

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates

from models import EVOLUTION, INSTANCE_NAME_PATTERN, INSTANCE_NAME_RULE, is_valid_instance_name, owner_jid
from schema_fields import (
    CUSTOM_TOKEN_PATTERN,
    PHONE_DIGITS,
    TEXT_MAX_LENGTH,
    BodySchema,
    Embedded,
    IsoTimestamp,
    Recipient,
    StrictBoolean,
    StrictInteger,
    check_custom_token,
    check_storable,
    check_text,
    iso_timestamp,
)
from webhook_schemas import CreateWebhookSchema

MAX_DELAY_MS = 300_000
# Field descriptions for the API document. The validators below enforce the same rules.
NAME_DOCUMENT = {"pattern": f"^{INSTANCE_NAME_PATTERN.pattern}$", "description": INSTANCE_NAME_RULE}
TOKEN_DOCUMENT = {
    "pattern": f"^({CUSTOM_TOKEN_PATTERN.pattern})?$",
    "description": "A custom token: 16 to 128 printable ASCII characters without white space. "
                   "Empty or null means a generated token.",
}
OWN_NUMBER_DOCUMENT = {"pattern": "^([0-9]{8,15})?$", "description": "The instance's own phone number, 8 to 15 digits."}
TEXT_DOCUMENT = {
    "minLength": 1, "maxLength": TEXT_MAX_LENGTH, "description": "Not only white space, and without NUL characters.",
}
PRESENCES = ("available", "unavailable", "composing", "recording", "paused")
# Request fields that configure features evogate does not implement; refused unless inert.
UNSUPPORTED_OBJECTS = ("websocket", "rabbitmq", "nats", "sqs", "kafka", "pusher")
# Evolution 1.x's flat webhook fields (webhookUrl, webhook_by_events, ...): use the object.
UNSUPPORTED_PREFIXES = ("proxy", "chatwoot", "webhook_", "webhookurl", "webhookbyevents", "webhookbase64",
                        "webhookevents", "webhookheaders")


class TokenBodySchema(BodySchema):
    token = fields.String(allow_none=True, load_default=None, metadata=TOKEN_DOCUMENT)

    @validates("token")
    def validate_token(self, value, data_key):
        if value:
            check_custom_token(value)


class InstanceCreateSchema(TokenBodySchema):
    instanceName = fields.String(required=True, metadata=NAME_DOCUMENT)
    integration = fields.String(allow_none=True, load_default=None, metadata={"enum": [EVOLUTION, None]})
    number = fields.String(allow_none=True, load_default=None, metadata=OWN_NUMBER_DOCUMENT)
    qrcode = StrictBoolean(allow_none=True, load_default=None)
    rejectCall = StrictBoolean(allow_none=True, load_default=None)
    msgCall = fields.String(allow_none=True, load_default=None, validate=check_storable)
    groupsIgnore = StrictBoolean(allow_none=True, load_default=None)
    alwaysOnline = StrictBoolean(allow_none=True, load_default=None)
    readMessages = StrictBoolean(allow_none=True, load_default=None)
    readStatus = StrictBoolean(allow_none=True, load_default=None)
    syncFullHistory = StrictBoolean(allow_none=True, load_default=None)
    webhook = fields.Nested(CreateWebhookSchema, allow_none=True, load_default=None)

    @pre_load
    def reject_unsupported_features(self, data, **kwargs):
        if not isinstance(data, dict):
            return data
        errors = {
            field: [f"{field} configures a feature evogate does not implement; remove it from the request."]
            for field, value in data.items()
            if is_unsupported_feature(field) and not is_inert(value)
        }
        if errors:
            raise ValidationError(errors)
        webhook = data.get("webhook")
        if webhook is False or webhook == "" or webhook == {}:
            data = {**data, "webhook": None}  # an empty webhook object configures nothing
        return data

    @validates("instanceName")
    def validate_name(self, value, data_key):
        if not is_valid_instance_name(value):
            raise ValidationError(f'Invalid instance name "{value}": use {INSTANCE_NAME_RULE}.')

    @validates("integration")
    def validate_integration(self, value, data_key):
        if value is not None and value != EVOLUTION:
            raise ValidationError(f'Integration "{value}" is not supported; the supported value is {EVOLUTION}.')

    @validates("number")
    def validate_number(self, value, data_key):
        if value and not PHONE_DIGITS.fullmatch(value):
            raise ValidationError(f'Invalid number "{value}": use the instance\'s phone number, 8 to 15 digits.')


def is_unsupported_feature(field: str) -> bool:
    lowered = field.lower()
    return lowered in UNSUPPORTED_OBJECTS or lowered.startswith(UNSUPPORTED_PREFIXES)


def is_inert(value) -> bool:
    """Return whether a feature field's value switches nothing on: null, "", false, {} or {"enabled": false}."""
    if value is None or value is False or value == "":
        return True
    return isinstance(value, dict) and (value == {} or (len(value) == 1 and value.get("enabled") is False))


class PresenceSchema(BodySchema):
    presence = fields.String(required=True, validate=validate.OneOf(PRESENCES))


class QuotedKeySchema(BodySchema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=128))


class QuotedSchema(BodySchema):
    key = fields.Nested(QuotedKeySchema, required=True)


class SendTextSchema(BodySchema):
    number = Recipient(required=True)
    text = fields.String(required=True, validate=check_text, metadata=TEXT_DOCUMENT)
    delay = StrictInteger(load_default=0, validate=validate.Range(min=0, max=MAX_DELAY_MS))
    linkPreview = StrictBoolean(allow_none=True, load_default=None)
    mentionsEveryOne = StrictBoolean(allow_none=True, load_default=None)
    mentioned = fields.List(Recipient(), allow_none=True, load_default=None)
    quoted = fields.Nested(QuotedSchema, allow_none=True, load_default=None)


class SettingsSchema(Schema):
    rejectCall = fields.Boolean(attribute="reject_call")
    msgCall = fields.String(attribute="msg_call")
    groupsIgnore = fields.Boolean(attribute="groups_ignore")
    alwaysOnline = fields.Boolean(attribute="always_online")
    readMessages = fields.Boolean(attribute="read_messages")
    readStatus = fields.Boolean(attribute="read_status")
    syncFullHistory = fields.Boolean(attribute="sync_full_history")


class InstanceSummarySchema(Schema):
    """The `instance` object of the create and rotateToken answers."""

    instanceName = fields.String(attribute="name")
    instanceId = fields.String(attribute="public_id")
    integration = fields.String()
    status = fields.String(attribute="connection_status")


class InstanceSchema(Schema):
    """An instance as `fetchInstances` lists it; no token or digest is ever included."""

    id = fields.String(attribute="public_id")
    name = fields.String()
    connectionStatus = fields.String(attribute="connection_status")
    integration = fields.String()
    number = fields.String(allow_none=True)
    ownerJid = fields.String(attribute="owner_jid", allow_none=True)
    profileName = fields.String(attribute="profile_name", allow_none=True)
    profilePicUrl = fields.String(attribute="profile_pic_url", allow_none=True)
    settings = Embedded(SettingsSchema)
    createdAt = IsoTimestamp(attribute="created_at")
    updatedAt = IsoTimestamp(attribute="updated_at")


def dump_instance_listing(rows) -> list[dict]:
    """Dump instances as `fetchInstances` lists them, with the output of `InstanceSchema(many=True)`.

    Written out by hand because marshmallow takes most of the time of a listing of thousands of
    instances. Each row starts with the values of `INSTANCE_LISTING_COLUMNS`, in that order
    (`listing_values` gives them for an Instance). The values are unpacked by position, because
    reading 16 columns of a row by name took longer than building its dict.
    tests/test_instances.py checks that the output is the schema's.
    """
    listing = []
    for (public_id, name, connection_status, integration, number, profile_name, profile_pic_url, reject_call,
         msg_call, groups_ignore, always_online, read_messages, read_status, sync_full_history, created_at,
         updated_at, *_) in rows:
        listing.append({
            "id": public_id,
            "name": name,
            "connectionStatus": connection_status,
            "integration": integration,
            "number": number,
            "ownerJid": owner_jid(number),
            "profileName": profile_name,
            "profilePicUrl": profile_pic_url,
            "settings": {
                "rejectCall": bool(reject_call),
                "msgCall": msg_call,
                "groupsIgnore": bool(groups_ignore),
                "alwaysOnline": bool(always_online),
                "readMessages": bool(read_messages),
                "readStatus": bool(read_status),
                "syncFullHistory": bool(sync_full_history),
            },
            "createdAt": None if created_at is None else iso_timestamp(created_at),
            "updatedAt": None if updated_at is None else iso_timestamp(updated_at),
        })
    return listing


class MessageKeySchema(Schema):
    remoteJid = fields.String(attribute="remote_jid")
    fromMe = fields.Boolean(attribute="from_me")
    id = fields.String(attribute="key_id")


class MessageContentSchema(Schema):
    conversation = fields.String(attribute="text")


class MessageSchema(Schema):
    """A message as sendText answers it."""

    key = Embedded(MessageKeySchema)
    status = fields.String()
    message = Embedded(MessageContentSchema)
    messageType = fields.String(attribute="message_type")
    messageTimestamp = fields.Integer(attribute="message_timestamp")
    instanceId = fields.String(attribute="instance.public_id")


class MessageRecordSchema(MessageSchema):
    """A stored message as findMessages lists it and the inbound webhook answers it."""

    id = fields.String(attribute="pk")
    pushName = fields.String(attribute="push_name", allow_none=True)


class InboundKeySchema(BodySchema):
    remoteJid = Recipient(required=True)
    id = fields.String(required=True, validate=[validate.Length(min=1, max=128), check_storable])


class InboundContentSchema(BodySchema):
    conversation = fields.String(required=True, validate=check_text, metadata=TEXT_DOCUMENT)


class InboundMessageSchema(BodySchema):
    """A message received by the instance's channel, posted to /webhook/evolution."""

    key = fields.Nested(InboundKeySchema, required=True)
    pushName = fields.String(allow_none=True, load_default=None, validate=[validate.Length(max=256), check_storable])
    message = fields.Nested(InboundContentSchema, required=True)
    messageTimestamp = StrictInteger(allow_none=True, load_default=None, validate=validate.Range(min=0, max=2**53))


class MessageKeyFilterSchema(BodySchema):
    remoteJid = Recipient(allow_none=True, load_default=None)
    id = fields.String(allow_none=True, load_default=None, validate=[validate.Length(min=1, max=128), check_storable])
    fromMe = StrictBoolean(allow_none=True, load_default=None)


class MessageWhereSchema(BodySchema):
    key = fields.Nested(MessageKeyFilterSchema, allow_none=True, load_default=None)


class FindMessagesSchema(BodySchema):
    """The findMessages body; `offset` is the page size, as in Evolution."""

    where = fields.Nested(MessageWhereSchema, allow_none=True, load_default=None)
    page = StrictInteger(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    offset = StrictInteger(load_default=50, validate=validate.Range(min=1, max=1000))


instance_create_schema = InstanceCreateSchema()
token_body_schema = TokenBodySchema()
presence_schema = PresenceSchema()
send_text_schema = SendTextSchema()
settings_schema = SettingsSchema()
instance_summary_schema = InstanceSummarySchema()
instances_schema = InstanceSchema(many=True)
message_schema = MessageSchema()
message_record_schema = MessageRecordSchema()
message_records_schema = MessageRecordSchema(many=True)
inbound_message_schema = InboundMessageSchema()
find_messages_schema = FindMessagesSchema()
