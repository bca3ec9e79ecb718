"""API keys: instance tokens, resolving a key to a principal, and the guard on every request.

A key resolves to the global key (compared in constant time), to the one instance whose token
has that SHA-256 digest, or to nothing. Tokens themselves are never stored or logged.
"""

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from flask import abort, current_app, g, request
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import joinedload

import database
from logsafe import printable
import metrics
from models import INSTANCE_ROW, Instance, db

logger = logging.getLogger(__name__)

PUBLIC, GLOBAL_ONLY, ANY_PRINCIPAL, INSTANCE_PATH = "public", "global", "any", "instance"
# The global key, or no key at all from an address in METRICS_ALLOWED_IPS (Prometheus scrapers).
GLOBAL_OR_SCRAPER = "global-or-scraper"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PREVIOUS_KEY_LOG_INTERVAL_SECONDS = 60


class PreviousKeyUsage:
    """Counts uses of AUTHENTICATION_API_KEY_PREVIOUS in this process and logs them once a minute."""

    def __init__(self):
        self.count = 0
        self.count_at_last_log = 0
        self.last_logged = float("-inf")
        self.lock = threading.Lock()

    def record(self) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.last_logged < PREVIOUS_KEY_LOG_INTERVAL_SECONDS:
                return
            new_uses = self.count - self.count_at_last_log
            self.last_logged, self.count_at_last_log = now, self.count
        logger.warning(
            "The previous global key (AUTHENTICATION_API_KEY_PREVIOUS) is still in use: %d uses since the "
            "last report, %d in all by this process; move its clients to AUTHENTICATION_API_KEY, then unset it",
            new_uses, self.count,
        )


previous_key_usage = PreviousKeyUsage()


@dataclass(frozen=True)
class Principal:
    """The identity a request acts as: the global key (`instance` is None) or one instance.

    For a request that only reads, `instance` is a read-only row of the instance's columns
    (`models.INSTANCE_ROW`), with the Instance's attribute names but no relationships. For a
    request that writes, it is the Instance itself.
    """

    instance: Instance | Row | None

    @property
    def is_global(self) -> bool:
        return self.instance is None


def public(view):
    """Mark a view as open to requests without a key."""
    view.auth_scope = PUBLIC
    return view


def global_only(view):
    """Mark a view as needing the global key."""
    view.auth_scope = GLOBAL_ONLY
    return view


def any_principal(view):
    """Mark a view as open to any valid key; the view narrows what an instance token sees."""
    view.auth_scope = ANY_PRINCIPAL
    return view


def global_or_allowed_scraper(view):
    """Mark a view as needing the global key, or no key from an address in METRICS_ALLOWED_IPS."""
    view.auth_scope = GLOBAL_OR_SCRAPER
    return view


def generate_token() -> str:
    """Return a new instance token: 32 upper-case hex characters, 128 bits from a CSPRNG."""
    return secrets.token_hex(16).upper()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_global_key(key: str) -> bool:
    """Return whether the key is the current or, during a rotation, the previous global key."""
    return matches_setting(key, "AUTHENTICATION_API_KEY") or matches_previous_key(key)


def is_reserved_key(token: str) -> bool:
    """Return whether a proposed instance token equals a global key, current or previous."""
    return matches_setting(token, "AUTHENTICATION_API_KEY") or matches_setting(token, "AUTHENTICATION_API_KEY_PREVIOUS")


def matches_setting(key: str, setting: str) -> bool:
    expected = current_app.config[setting]
    if not expected:
        return False
    return hmac.compare_digest(key.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def matches_previous_key(key: str) -> bool:
    if not matches_setting(key, "AUTHENTICATION_API_KEY_PREVIOUS"):
        return False
    previous_key_usage.record()
    return True


# Built once, because building the statement per request cost about as much as running it
# (cProfile of the test client on SQLite). The lookup itself still runs on every request, so a
# rotated or deleted token fails on the next one. Requests that write mostly emit events,
# which read the instance's webhook, so it comes in the same query.
INSTANCE_BY_TOKEN_DIGEST = (
    select(Instance).where(Instance.token_digest == bindparam("digest")).options(joinedload(Instance.webhook))
)
# The same lookup for requests that only read (see `Principal`).
INSTANCE_ROW_BY_TOKEN_DIGEST = INSTANCE_ROW.where(Instance.__table__.c.token_digest == bindparam("digest"))


def resolve(key: str, writes: bool) -> Principal | None:
    """Return the principal a presented key stands for, or None for an unknown key.

    Without `writes`, a token's instance comes as a read-only row (see `Principal`).
    """
    if is_global_key(key):
        return Principal(instance=None)
    digest = token_digest(key)
    if writes:
        instance = db.session.scalar(INSTANCE_BY_TOKEN_DIGEST, {"digest": digest})
    else:
        instance = db.session.execute(INSTANCE_ROW_BY_TOKEN_DIGEST, {"digest": digest}).first()
    return Principal(instance=instance) if instance is not None else None


def guard() -> None:
    """Authenticate and authorise the request, then bind the instance named in its path."""
    # Unknown paths and wrong methods fall through to routing's 404/405; preflights need no key.
    if request.url_rule is None or request.method == "OPTIONS":
        return
    view = current_app.view_functions[request.endpoint]
    scope = getattr(view, "auth_scope", INSTANCE_PATH)
    if scope == PUBLIC:
        return
    key = request.headers.get("apikey", "")
    if scope == GLOBAL_OR_SCRAPER and not key and is_allowed_scraper():
        return
    if not key:
        reject(401, "missing")
    writes = request.method not in SAFE_METHODS or getattr(view, "writes", False)
    if writes:
        database.begin_write()
    elif scope != GLOBAL_OR_SCRAPER:
        # Every other route that reads queries the database; /metrics stays off it.
        database.begin_read()

    principal = resolve(key, writes)
    if principal is None:
        reject(401, "unknown")
    g.principal = principal
    if scope in (GLOBAL_ONLY, GLOBAL_OR_SCRAPER) and not principal.is_global:
        reject(403, "forbidden")
    if scope == INSTANCE_PATH:
        g.instance = bind_path_instance(principal, request.view_args["name"], writes)


def is_allowed_scraper() -> bool:
    """Return whether the client address is in METRICS_ALLOWED_IPS."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in current_app.config["METRICS_ALLOWED_IPS"])


def bind_path_instance(principal: Principal, name: str, writes: bool) -> Instance | Row:
    """Return the instance named in the path, which an instance token must own.

    Without `writes`, the instance comes as a read-only row (see `Principal`).
    """
    if not principal.is_global:
        if principal.instance.name != name:
            reject(403, "forbidden")
        return principal.instance
    instance = Instance.find_by_name(name) if writes else Instance.find_row_by_name(name)
    if instance is None:
        abort(404, f'The "{name}" instance does not exist')
    return instance


def reject(status: int, reason: str) -> None:
    logger.warning(
        "Authentication failed: reason=%s method=%s path=%s client=%s request_id=%s",
        reason, printable(request.method), printable(request.path), request.remote_addr, g.get("request_id"),
    )
    metrics.count_authentication_failure(reason)
    abort(status, "Unauthorized" if status == 401 else "Forbidden")
