"""Marshmallow schemas for webhook receivers: the set body, the create body's object, the answer."""

import re
from urllib.parse import urlsplit

from marshmallow import Schema, ValidationError, fields, validates, validates_schema

from events import EVENT_NAMES
from schema_fields import BodySchema, IsoTimestamp, StrictBoolean

HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
RESERVED_HEADER_PREFIX = "x-webhook-"
# Headers that frame or route the HTTP message itself: set by the HTTP client, never by a user.
RESERVED_HEADERS = {
    "content-type", "content-length", "transfer-encoding", "host", "connection", "keep-alive",
    "upgrade", "te", "trailer", "expect", "proxy-authorization", "proxy-connection",
}
SECRET_PATTERN = re.compile(r"[\x21-\x7e]{16,256}")
URL_MAX_LENGTH = 2048
HEADER_VALUE_MAX_LENGTH = 4096
# HTTP sends header values as bytes; printable ASCII is what every client and receiver reads alike.
HEADER_VALUE_PATTERN = re.compile(r"[\x20-\x7e\t]{0,%d}" % HEADER_VALUE_MAX_LENGTH)


def canonical_event_name(name: str) -> str:
    """Accept SEND_MESSAGE as well as send.message or send-message, as Evolution's clients send."""
    return name.strip().upper().replace(".", "_").replace("-", "_")


class WebhookSchema(BodySchema):
    """A webhook receiver, as `webhook/set` takes it."""

    enabled = StrictBoolean(required=True)
    url = fields.String(allow_none=True, load_default=None)
    events = fields.List(
        fields.String(metadata={"enum": list(EVENT_NAMES)}),
        allow_none=True,
        load_default=None,
        metadata={"description": "Omitted or empty: every event. Dotted lower-case names such as send.message "
                                 "are accepted too."},
    )
    byEvents = StrictBoolean(load_default=False)
    base64 = StrictBoolean(load_default=False)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True, load_default=None)
    secret = fields.String(allow_none=True, load_default=None)

    @validates("url")
    def validate_url(self, value, data_key):
        if value is None:
            return
        if len(value) > URL_MAX_LENGTH or any(character in value for character in "\x00\r\n\t "):
            raise ValidationError(f"Invalid webhook URL: at most {URL_MAX_LENGTH} characters, no white space.")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValidationError("Invalid webhook URL: it cannot be parsed.") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValidationError("Invalid webhook URL: use an http:// or https:// URL with a host.")

    @validates("events")
    def validate_events(self, value, data_key):
        unknown = [name for name in value or [] if canonical_event_name(name) not in EVENT_NAMES]
        if unknown:
            raise ValidationError(f'Unknown event "{unknown[0]}"; use names such as SEND_MESSAGE or MESSAGES_UPSERT.')

    @validates("headers")
    def validate_headers(self, value, data_key):
        for name, header_value in (value or {}).items():
            if not HEADER_NAME_PATTERN.fullmatch(name):
                raise ValidationError(f'Invalid header name "{name}".')
            if name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_HEADER_PREFIX):
                raise ValidationError(f'Header "{name}" is set by evogate and cannot be configured.')
            if not HEADER_VALUE_PATTERN.fullmatch(header_value):
                raise ValidationError(
                    f'Invalid value for header "{name}": use printable ASCII characters, spaces and tabs, '
                    f"at most {HEADER_VALUE_MAX_LENGTH} characters."
                )

    @validates("secret")
    def validate_secret(self, value, data_key):
        # The message never repeats the value: it is a signing key.
        if value and not SECRET_PATTERN.fullmatch(value):
            raise ValidationError("A secret must be 16 to 256 printable ASCII characters without white space.")

    @validates_schema
    def require_url_when_enabled(self, data, **kwargs):
        if data.get("enabled") and not data.get("url"):
            raise ValidationError("A URL is required when the webhook is enabled.", "url")


class CreateWebhookSchema(WebhookSchema):
    """The create body's `webhook` object, where `enabled` defaults to true."""

    enabled = StrictBoolean(load_default=True)


class WebhookSetSchema(BodySchema):
    webhook = fields.Nested(WebhookSchema, required=True)


class WebhookAnswerSchema(Schema):
    """A stored webhook, with the field names Evolution answers."""

    id = fields.String(attribute="public_id")
    url = fields.String(allow_none=True)
    headers = fields.Dict()
    enabled = fields.Boolean()
    events = fields.List(fields.String())
    webhookByEvents = fields.Boolean(attribute="by_events")
    webhookBase64 = fields.Boolean(attribute="base64")
    secret = fields.String()
    createdAt = IsoTimestamp(attribute="created_at")
    updatedAt = IsoTimestamp(attribute="updated_at")
    instanceId = fields.String(attribute="instance.public_id")


webhook_set_schema = WebhookSetSchema()
webhook_answer_schema = WebhookAnswerSchema()
