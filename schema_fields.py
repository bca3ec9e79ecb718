"""Field types and value rules shared by the request schemas: strict JSON types, numbers, text."""

import re
from datetime import datetime, timedelta, timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing

TEXT_MAX_LENGTH = 4096
CUSTOM_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{16,128}")
# re.ASCII: without it \d also matches other scripts' digits, such as "١٢٣".
PHONE_SEPARATORS = re.compile(r"[\s().-]", re.ASCII)
PHONE_DIGITS = re.compile(r"\d{8,15}", re.ASCII)
USER_JID = re.compile(r"\d{8,15}@s\.whatsapp\.net", re.ASCII)
GROUP_JID = re.compile(r"\d{1,60}(-\d{1,60})?@g\.us", re.ASCII)
# The three rules above as one JSON Schema pattern, for the API document.
RECIPIENT_PATTERN = (
    r"^(\+?[\t\n\v\f\r ().-]*([0-9][\t\n\v\f\r ().-]*){8,15}"
    r"|[0-9]{8,15}@s\.whatsapp\.net|[0-9]{1,60}(-[0-9]{1,60})?@g\.us)$"
)
RECIPIENT_RULE = (
    "A phone number of 8 to 15 digits, with an optional leading + and spaces, dashes, dots or "
    "parentheses; or a JID: 8 to 15 digits then @s.whatsapp.net, or a group's digits then @g.us."
)


class BodySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # Evolution SDKs send fields evogate does not use.


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.metadata = {"pattern": RECIPIENT_PATTERN, "description": RECIPIENT_RULE, **self.metadata}

    def _deserialize(self, value, attr, data, **kwargs):
        return normalise_number(super()._deserialize(value, attr, data, **kwargs))


class Embedded(fields.Nested):
    """A nested object dumped from the attributes of the object being dumped itself."""

    def get_value(self, obj, attr, accessor=None, default=missing):
        return obj


class IsoTimestamp(fields.DateTime):
    """A datetime dumped as ISO 8601 UTC with milliseconds, the format Evolution uses."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else iso_timestamp(value)


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


_UTC_OFFSET = timedelta(0)


def iso_timestamp(moment: datetime) -> str:
    """Format a datetime as ISO 8601 UTC with milliseconds, as Evolution does."""
    # SQLite returns naive datetimes, which were stored as UTC. Aware ones are converted to UTC.
    # isoformat truncates the microseconds to milliseconds.
    if moment.tzinfo is None:
        return moment.isoformat(timespec="milliseconds") + "Z"
    if moment.utcoffset() == _UTC_OFFSET:
        # PostgreSQL's are in UTC already, and cutting "+00:00" is faster than converting.
        return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
