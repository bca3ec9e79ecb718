"""Marshmallow schemas: request bodies (load) and answers (dump), with Evolution's field names."""

import re
from datetime import datetime, timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates

from models import EVOLUTION, INSTANCE_NAME_RULE, is_valid_instance_name

TEXT_MAX_LENGTH = 4096
MAX_DELAY_MS = 300_000
PRESENCES = ("available", "unavailable", "composing", "recording", "paused")
# Request fields that configure features evogate does not implement; refused unless inert.
UNSUPPORTED_OBJECTS = ("websocket", "rabbitmq", "nats", "sqs", "kafka", "pusher", "webhook")
UNSUPPORTED_PREFIXES = ("proxy", "chatwoot", "webhook")

CUSTOM_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{16,128}")
PHONE_SEPARATORS = re.compile(r"[\s().-]")
# [0-9], not \d: \d also matches Arabic-Indic, fullwidth and other Unicode digits.
PHONE_DIGITS = re.compile(r"[0-9]{8,15}")
USER_JID = re.compile(r"[0-9]{8,15}@s\.whatsapp\.net")
GROUP_JID = re.compile(r"[0-9]{1,60}(-[0-9]{1,60})?@g\.us")


class StrictBoolean(fields.Boolean):
    """A JSON boolean only: `1`, `"true"` and `"yes"` are type errors, not booleans."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class StrictInteger(fields.Integer):
    """A JSON integer only: booleans, decimals and numeric strings are type errors."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Must be a whole number.")
        return super()._deserialize(value, attr, data, **kwargs)


class Recipient(fields.String):
    """A phone number or JID, loaded as the JID it addresses."""

    def _deserialize(self, value, attr, data, **kwargs):
        return normalise_number(super()._deserialize(value, attr, data, **kwargs))


def normalise_number(value: str) -> str:
    """Return the JID for a phone number or JID, without ever adding or removing digits."""
    if USER_JID.fullmatch(value) or GROUP_JID.fullmatch(value):
        return value
    digits = PHONE_SEPARATORS.sub("", value.removeprefix("+"))
    if not PHONE_DIGITS.fullmatch(digits):
        raise ValidationError(
            f'Invalid number "{value}": use 8 to 15 digits (with an optional +, spaces, dashes, '
            "dots or parentheses), or a JID ending in @s.whatsapp.net or @g.us."
        )
    return f"{digits}@s.whatsapp.net"


def check_text(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must contain something other than white space.")
    check_storable(value)


def check_storable(value: str) -> None:
    """Reject what no database column can hold: over-long text, NUL and lone surrogates."""
    if len(value) > TEXT_MAX_LENGTH:
        raise ValidationError(f"Is {len(value)} characters long; the maximum is {TEXT_MAX_LENGTH}.")
    if "\x00" in value:
        raise ValidationError("Must not contain a NUL character.")
    if any("\ud800" <= character <= "\udfff" for character in value):
        raise ValidationError("Must not contain an unpaired UTF-16 surrogate.")


def check_custom_token(value: str) -> None:
    # The message never repeats the value: it may be a real credential.
    if not CUSTOM_TOKEN_PATTERN.fullmatch(value):
        raise ValidationError("A custom token must be 16 to 128 printable ASCII characters without white space.")


class BodySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # Evolution SDKs send fields evogate does not use.


class TokenBodySchema(BodySchema):
    token = fields.String(allow_none=True, load_default=None)

    @validates("token")
    def validate_token(self, value, data_key):
        if value:
            check_custom_token(value)


class InstanceCreateSchema(TokenBodySchema):
    instanceName = fields.String(required=True)
    integration = fields.String(allow_none=True, load_default=None)
    number = fields.String(allow_none=True, load_default=None)
    qrcode = StrictBoolean(allow_none=True, load_default=None)
    rejectCall = StrictBoolean(allow_none=True, load_default=None)
    msgCall = fields.String(allow_none=True, load_default=None, validate=check_storable)
    groupsIgnore = StrictBoolean(allow_none=True, load_default=None)
    alwaysOnline = StrictBoolean(allow_none=True, load_default=None)
    readMessages = StrictBoolean(allow_none=True, load_default=None)
    readStatus = StrictBoolean(allow_none=True, load_default=None)
    syncFullHistory = StrictBoolean(allow_none=True, load_default=None)

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
    text = fields.String(required=True, validate=check_text)
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
    settings = fields.Function(lambda instance: SettingsSchema().dump(instance))
    createdAt = fields.Function(lambda instance: iso_timestamp(instance.created_at))
    updatedAt = fields.Function(lambda instance: iso_timestamp(instance.updated_at))


class MessageSchema(Schema):
    """A message as sendText answers it."""

    key = fields.Function(lambda message: {
        "remoteJid": message.remote_jid, "fromMe": message.from_me, "id": message.key_id,
    })
    status = fields.String()
    message = fields.Function(lambda message: {"conversation": message.text})
    messageType = fields.String(attribute="message_type")
    messageTimestamp = fields.Integer(attribute="message_timestamp")
    instanceId = fields.Function(lambda message: message.instance.public_id)


def iso_timestamp(moment: datetime) -> str:
    """Format a datetime as ISO 8601 UTC with milliseconds, as Evolution does."""
    if moment.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


instance_create_schema = InstanceCreateSchema()
token_body_schema = TokenBodySchema()
presence_schema = PresenceSchema()
send_text_schema = SendTextSchema()
settings_schema = SettingsSchema()
instance_summary_schema = InstanceSummarySchema()
instance_schema = InstanceSchema()
instances_schema = InstanceSchema(many=True)
message_schema = MessageSchema()
