"""Settings: read once from the environment and `.env`, parsed, and checked at start-up.

This is the only module that reads the environment. Variable names follow Evolution API's, so
an existing Evolution `.env` mostly carries over. Anything that cannot run safely raises
`ConfigError` with one line that names the variable and the fix.
"""

import os
import ssl
import re
from collections.abc import Mapping
from typing import Any

from dotenv import dotenv_values

VERSION = "0.1.0"
MIN_KEY_LENGTH = 32
# Keys printed in Evolution API's documentation and source code: anyone can guess them.
PUBLISHED_KEYS = {"429683C4C977415CAAFCCE10F7D57E11", "BQYHJGJHJ"}  # compared upper-cased
KNOWN_AUTHENTICATION_VARIABLES = {
    "AUTHENTICATION_API_KEY",
    "AUTHENTICATION_API_KEY_PREVIOUS",
    "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES",
    "AUTHENTICATION_FAILURE_LIMIT",
}
TRUE_WORDS = {"true", "1", "yes"}
FALSE_WORDS = {"false", "0", "no"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Other names Python's logging accepts for the same levels.
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
SERVER_TYPES = ("http", "https")
RATE_LIMIT_PATTERN = re.compile(
    r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.IGNORECASE
)
MAX_BODY_BYTES = 1024 * 1024


class ConfigError(Exception):
    """A setting that prevents a safe start; the message is one line for the operator."""


def read_environment(dotenv_path: str = ".env") -> dict[str, str]:
    """Merge the `.env` file of the working directory with the environment, which wins."""
    values = {name: value for name, value in dotenv_values(dotenv_path).items() if value is not None}
    values.update(os.environ)
    return values


def load_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse every setting evogate knows from an environment mapping into Flask config keys."""
    settings: dict[str, Any] = {
        "AUTHENTICATION_API_KEY": parse_global_key(environ, "AUTHENTICATION_API_KEY"),
        "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES": parse_boolean(
            environ, "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", True
        ),
        "AUTHENTICATION_FAILURE_LIMIT": parse_rate_limit(environ, "AUTHENTICATION_FAILURE_LIMIT", "20/minute"),
        "DATABASE_CONNECTION_URI": parse_database_url(environ.get("DATABASE_CONNECTION_URI", "")),
        "SERVER_TYPE": parse_choice(environ, "SERVER_TYPE", SERVER_TYPES, "http", str.lower),
        "SERVER_PORT": parse_integer(environ, "SERVER_PORT", 8080, 1, 65535),
        "SERVER_URL": environ.get("SERVER_URL", "").strip() or None,
        "SSL_CONF_PRIVKEY": environ.get("SSL_CONF_PRIVKEY", "").strip() or None,
        "SSL_CONF_FULLCHAIN": environ.get("SSL_CONF_FULLCHAIN", "").strip() or None,
        "LOG_LEVEL": parse_choice(environ, "LOG_LEVEL", LOG_LEVELS, "INFO", normalise_log_level),
        "CORS_ORIGIN": parse_list(environ.get("CORS_ORIGIN", "")),
        "CORS_METHODS": parse_list(environ.get("CORS_METHODS", "GET,POST,DELETE")),
        "CORS_CREDENTIALS": parse_boolean(environ, "CORS_CREDENTIALS", False),
        "WEB_CONCURRENCY": parse_integer(environ, "WEB_CONCURRENCY", default_worker_count(), 1, 64),
        "UNKNOWN_AUTHENTICATION_VARIABLES": sorted(
            name for name in environ
            if name.startswith("AUTHENTICATION_") and name not in KNOWN_AUTHENTICATION_VARIABLES
        ),
        "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
    }
    if settings["SERVER_TYPE"] == "https":
        check_certificates(settings)
    return settings


def default_worker_count() -> int:
    """Two sync workers per core: requests spend most of their time waiting on the database."""
    return 2 * (os.cpu_count() or 1)


def parse_global_key(environ: Mapping[str, str], name: str) -> str | None:
    key = environ.get(name, "").strip()
    if not key:
        return None
    if key.upper() in PUBLISHED_KEYS:
        raise ConfigError(
            f"{name} is a key published in Evolution API's documentation; "
            "set a random key of at least 32 characters (openssl rand -hex 32)"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"{name} is {len(key)} characters long; set a random key of at least "
            f"{MIN_KEY_LENGTH} characters (openssl rand -hex 32), or unset it to have one generated"
        )
    return key


def parse_boolean(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false (also 1/0, yes/no)")


def parse_integer(environ: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; use a number from {minimum} to {maximum}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range; use a number from {minimum} to {maximum}")
    return value


def parse_choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str, normalise) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = normalise(raw)
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is not supported; use one of: {', '.join(choices)}")
    return value


def parse_rate_limit(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not RATE_LIMIT_PATTERN.match(raw):
        raise ConfigError(f"{name}={raw!r} is not a rate; use COUNT/PERIOD such as 20/minute or 100/hour")
    return raw


def normalise_log_level(raw: str) -> str:
    level = raw.upper()
    return LOG_LEVEL_ALIASES.get(level, level)


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_database_url(raw: str) -> str | None:
    """Return the SQLAlchemy URL, with PostgreSQL URLs bound to psycopg 3; None means the default."""
    url = raw.strip()
    if not url:
        return None
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def check_certificates(settings: dict[str, Any]) -> None:
    """Refuse HTTPS settings whose files are missing, unreadable, or not a matching PEM pair."""
    for name in ("SSL_CONF_FULLCHAIN", "SSL_CONF_PRIVKEY"):
        path = settings[name]
        if not path:
            raise ConfigError(f"SERVER_TYPE=https needs {name}; set it to a PEM file, or use SERVER_TYPE=http")
        try:
            with open(path, "rb") as pem:
                pem.read(1)
        except OSError as error:
            raise ConfigError(
                f"{name}={path!r} cannot be read ({error.strerror}); fix the path or its permissions"
            ) from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings["SSL_CONF_FULLCHAIN"], settings["SSL_CONF_PRIVKEY"]
        )
    except ssl.SSLError as error:
        raise ConfigError(
            f"SSL_CONF_FULLCHAIN and SSL_CONF_PRIVKEY cannot be loaded as a certificate chain and its "
            f"private key ({error.reason or error}); check that both are PEM files that belong together"
        ) from None
