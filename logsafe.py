"""Request data made safe to write into log lines: control characters are escaped.

A path such as `/x%0aFAKE LOG LINE` is decoded before it is logged, so without escaping a
client could forge whole log lines, or write NUL bytes that make the log look binary.
"""

import re

from gunicorn.glogging import Logger

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def printable(value: str) -> str:
    """Return `value` with each control character written as \\xNN."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", value)


class AccessLogger(Logger):
    """gunicorn's logger, with every access-log field escaped the same way."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        return {name: printable(value) if isinstance(value, str) else value for name, value in atoms.items()}
