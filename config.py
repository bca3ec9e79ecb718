"""Settings: read once from the environment and `.env`, parsed, and checked at start-up.

This is the only module that reads the environment. Variable names follow Evolution API's, so
an existing Evolution `.env` mostly carries over. Anything that cannot run safely raises
`ConfigError` with one line that names the variable and the fix.
"""

import ipaddress
import os
import ssl
from collections.abc import Mapping
from typing import Any

from dotenv import dotenv_values
from limits import parse as parse_limit

VERSION = "0.1.0"
MIN_KEY_LENGTH = 32
# Keys printed in Evolution API's documentation and source code: anyone can guess them.
PUBLISHED_KEYS = {"429683C4C977415CAAFCCE10F7D57E11", "BQYHJGJHJ"}  # compared upper-cased
TRUE_WORDS = {"true", "1", "yes"}
FALSE_WORDS = {"false", "0", "no"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Other names Python's logging accepts for the same levels.
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
SERVER_TYPES = ("http", "https")
MAX_BODY_BYTES = 1024 * 1024
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
# Every variable `load_settings` reads, in the order `.env.example` documents them. A test
# checks this tuple against both, so a new setting cannot go undocumented.
ENVIRONMENT_VARIABLES = (
    "AUTHENTICATION_API_KEY",
    "AUTHENTICATION_API_KEY_PREVIOUS",
    "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES",
    "AUTHENTICATION_FAILURE_LIMIT",
    "RATELIMIT_STORAGE_URI",
    "TRUSTED_PROXY_COUNT",
    "DATABASE_CONNECTION_URI",
    "SERVER_TYPE",
    "SERVER_PORT",
    "SERVER_URL",
    "SSL_CONF_PRIVKEY",
    "SSL_CONF_FULLCHAIN",
    "LOG_LEVEL",
    "WEB_CONCURRENCY",
    "CORS_ORIGIN",
    "CORS_METHODS",
    "CORS_CREDENTIALS",
    "METRICS_ALLOWED_IPS",
    "PROMETHEUS_MULTIPROC_DIR",
    "WEBHOOK_GLOBAL_ENABLED",
    "WEBHOOK_GLOBAL_URL",
    "WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS",
    "WEBHOOK_GLOBAL_SECRET",
    "WEBHOOK_BLOCK_PRIVATE_NETWORKS",
    "WEBHOOK_CA_BUNDLE",
    "WEBHOOK_RETRY_MAX_ATTEMPTS",
    "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS",
    "WEBHOOK_REQUEST_TIMEOUT_MS",
    "WEBHOOK_POLL_INTERVAL_SECONDS",
)
KNOWN_AUTHENTICATION_VARIABLES = {name for name in ENVIRONMENT_VARIABLES if name.startswith("AUTHENTICATION_")}


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
        "AUTHENTICATION_API_KEY_PREVIOUS": parse_global_key(environ, "AUTHENTICATION_API_KEY_PREVIOUS"),
        "AUTHENTICATION_FAILURE_LIMIT": parse_rate_limit(environ, "AUTHENTICATION_FAILURE_LIMIT", "20/minute"),
        "RATELIMIT_STORAGE_URI": parse_storage_uri(environ.get("RATELIMIT_STORAGE_URI", "")),
        "TRUSTED_PROXY_COUNT": parse_integer(environ, "TRUSTED_PROXY_COUNT", 0, 0, 10),
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
        "METRICS_ALLOWED_IPS": parse_networks(environ, "METRICS_ALLOWED_IPS"),
        "PROMETHEUS_MULTIPROC_DIR": parse_metrics_directory(environ, "PROMETHEUS_MULTIPROC_DIR"),
        "UNKNOWN_AUTHENTICATION_VARIABLES": sorted(
            name for name in environ
            if name.startswith("AUTHENTICATION_") and name not in KNOWN_AUTHENTICATION_VARIABLES
        ),
        "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
        **load_webhook_settings(environ),
    }
    if settings["SERVER_TYPE"] == "https":
        check_certificates(settings)
    return settings


def load_webhook_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    settings = {
        "WEBHOOK_GLOBAL_ENABLED": parse_boolean(environ, "WEBHOOK_GLOBAL_ENABLED", False),
        "WEBHOOK_GLOBAL_URL": environ.get("WEBHOOK_GLOBAL_URL", "").strip() or None,
        "WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS": parse_boolean(environ, "WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS", False),
        "WEBHOOK_GLOBAL_SECRET": environ.get("WEBHOOK_GLOBAL_SECRET", "").strip() or None,
        "WEBHOOK_BLOCK_PRIVATE_NETWORKS": parse_boolean(environ, "WEBHOOK_BLOCK_PRIVATE_NETWORKS", False),
        "WEBHOOK_CA_BUNDLE": environ.get("WEBHOOK_CA_BUNDLE", "").strip() or None,
        "WEBHOOK_RETRY_MAX_ATTEMPTS": parse_integer(environ, "WEBHOOK_RETRY_MAX_ATTEMPTS", 10, 1, 100),
        "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS": parse_seconds(environ, "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", 5),
        "WEBHOOK_RETRY_MAX_DELAY_SECONDS": parse_seconds(environ, "WEBHOOK_RETRY_MAX_DELAY_SECONDS", 300),
        "WEBHOOK_REQUEST_TIMEOUT_MS": parse_integer(environ, "WEBHOOK_REQUEST_TIMEOUT_MS", 30_000, 100, 600_000),
        # How often an idle delivery worker looks for due events; not an Evolution variable.
        "WEBHOOK_POLL_INTERVAL_SECONDS": parse_seconds(environ, "WEBHOOK_POLL_INTERVAL_SECONDS", 0.25),
        "WEBHOOK_DELIVERY_WORKER": True,
    }
    if settings["WEBHOOK_GLOBAL_ENABLED"]:
        url = settings["WEBHOOK_GLOBAL_URL"] or ""
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError("WEBHOOK_GLOBAL_ENABLED=true needs WEBHOOK_GLOBAL_URL, an http:// or https:// URL")
        if not settings["WEBHOOK_GLOBAL_SECRET"]:
            raise ConfigError(
                "WEBHOOK_GLOBAL_ENABLED=true needs WEBHOOK_GLOBAL_SECRET to sign deliveries; "
                "set a random string (openssl rand -hex 32)"
            )
    if settings["WEBHOOK_CA_BUNDLE"] and not os.access(settings["WEBHOOK_CA_BUNDLE"], os.R_OK):
        raise ConfigError(f"WEBHOOK_CA_BUNDLE={settings['WEBHOOK_CA_BUNDLE']!r} cannot be read; fix the path")
    return settings


def default_worker_count() -> int:
    """Return one sync worker per CPU this process may run on, and at least two.

    On 2 cores, 2 workers served the ceiling, connectionState and sendText loads of
    bench/run.py faster than 3, 4 or 6, on SQLite and on PostgreSQL. Each extra worker
    likely adds wake-ups (a new connection wakes every idle worker) that cost more CPU than
    its waits on the database give back. Two keep the server responding while one request
    is slow.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(2, cores)


def parse_global_key(environ: Mapping[str, str], name: str) -> str | None:
    """Return a global key that is long and unpublished, or None when the variable is unset."""
    key = environ.get(name, "").strip()
    if not key:
        return None
    if key.upper() in PUBLISHED_KEYS:
        raise ConfigError(
            f"{name} is a key published in Evolution API's documentation; replace it with a random key of at "
            f"least {MIN_KEY_LENGTH} characters from `openssl rand -hex 32`, or from `flask keys generate` "
            f"after unsetting {name} (flask commands check the same settings)"
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


def parse_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """Parse a duration in seconds; decimals are allowed so tests can use fractions."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds; use a value such as 5 or 0.25") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name}={raw!r} is out of range; use a finite number of seconds, 0 or more")
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
    try:
        parse_limit(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate; use COUNT/PERIOD such as 20/minute or 100/hour") from None
    return raw


def parse_storage_uri(raw: str) -> str:
    """Return the throttling storage: memory:// (one process) or a Redis URL (shared)."""
    uri = raw.strip() or "memory://"
    if uri.split("://", 1)[0].lower() not in STORAGE_SCHEMES:
        raise ConfigError(
            "RATELIMIT_STORAGE_URI must be memory:// or a Redis URL such as redis://127.0.0.1:6379/0"
        )
    return uri


def normalise_log_level(raw: str) -> str:
    level = raw.upper()
    return LOG_LEVEL_ALIASES.get(level, level)


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_networks(environ: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """Parse comma-separated IP addresses and CIDR networks; an address is a network of one."""
    networks = []
    for item in parse_list(environ.get(name, "")):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ConfigError(
                f"{name} contains {item!r}, which is not an IP address or a CIDR network with its host bits "
                "zero; use a list such as 127.0.0.1,10.0.0.0/8,::1"
            ) from None
    return tuple(networks)


def parse_metrics_directory(environ: Mapping[str, str], name: str) -> str | None:
    """Return the directory where gunicorn workers share their metrics, or None to use a fresh one."""
    path = environ.get(name, "").strip()
    if not path:
        return None
    if not (os.path.isdir(path) and os.access(path, os.R_OK | os.W_OK | os.X_OK)):
        raise ConfigError(
            f"{name}={path!r} is not a directory that evogate can write; create it for this server alone, "
            "or unset it to have a private temporary directory made at start-up"
        )
    return path


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
