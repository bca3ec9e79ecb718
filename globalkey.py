"""The generated global API key, kept in a file in the Flask instance folder."""

import logging
import os
import secrets
import tempfile

from config import MIN_KEY_LENGTH, ConfigError

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "global-api-key"


def load_or_create(instance_path: str) -> str:
    """Return the key stored in the instance folder, creating it on first start.

    The file is written under a temporary name and linked into place, so processes that start
    together either create it or read the one that another process linked first: all of them
    end up with the same key. The file is readable by its owner only.
    """
    os.makedirs(instance_path, mode=0o700, exist_ok=True)
    path = os.path.join(instance_path, KEY_FILE_NAME)
    if not os.path.exists(path):
        create(path)
    with open(path, encoding="ascii", errors="replace") as key_file:
        key = key_file.read().strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"The key file {path} holds fewer than {MIN_KEY_LENGTH} characters; delete it to have a new key generated")
    logger.info("AUTHENTICATION_API_KEY is not set; using the generated key stored in %s", path)
    return key


def generate_key() -> str:
    """Return a new global key: 64 hex characters, 256 bits from a CSPRNG."""
    return secrets.token_hex(32)


def create(path: str) -> None:
    descriptor, temporary_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".key-")
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as key_file:
            key_file.write(generate_key() + "\n")
        os.chmod(temporary_path, 0o600)
        try:
            os.link(temporary_path, path)
        except FileExistsError:
            pass  # another process created it first; everyone uses that one
    finally:
        os.unlink(temporary_path)
