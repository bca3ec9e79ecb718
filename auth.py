"""API keys: instance tokens, resolving a key to a principal, and the guard on every request.

A key resolves to the global key (compared in constant time), to the one instance whose token
has that SHA-256 digest, or to nothing. Tokens themselves are never stored or logged.
"""

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from flask import abort, current_app, g, request
from sqlalchemy import select

import database
from models import Instance, db, is_valid_instance_name

logger = logging.getLogger(__name__)

PUBLIC, GLOBAL_ONLY, ANY_PRINCIPAL, INSTANCE_PATH = "public", "global", "any", "instance"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the global key (`instance` is None) or one instance."""

    instance: Instance | None

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


def generate_token() -> str:
    """Return a new instance token: 32 upper-case hex characters, 128 bits from a CSPRNG."""
    return secrets.token_hex(16).upper()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_global_key(key: str) -> bool:
    expected = current_app.config["AUTHENTICATION_API_KEY"].encode("utf-8")
    return hmac.compare_digest(key.encode("utf-8", "surrogatepass"), expected)


def resolve(key: str) -> Principal | None:
    """Return the principal a presented key stands for, or None for an unknown key."""
    if is_global_key(key):
        return Principal(instance=None)
    instance = db.session.scalar(select(Instance).where(Instance.token_digest == token_digest(key)))
    return Principal(instance=instance) if instance is not None else None


def guard() -> None:
    """Authenticate and authorise the request, then bind the instance named in its path."""
    # Unknown paths and wrong methods fall through to routing's 404/405; preflights need no key.
    if request.url_rule is None or request.method == "OPTIONS":
        return
    scope = getattr(current_app.view_functions[request.endpoint], "auth_scope", INSTANCE_PATH)
    if scope == PUBLIC:
        return
    view = current_app.view_functions[request.endpoint]
    if request.method not in SAFE_METHODS or getattr(view, "writes", False):
        database.begin_write()

    key = request.headers.get("apikey", "")
    principal = resolve(key) if key else None
    if principal is None:
        reject(401, "unknown" if key else "missing")
    g.principal = principal
    if scope == GLOBAL_ONLY and not principal.is_global:
        reject(403, "forbidden")
    if scope == INSTANCE_PATH:
        g.instance = bind_path_instance(principal, request.view_args["name"])


def bind_path_instance(principal: Principal, name: str) -> Instance:
    """Return the instance named in the path, which an instance token must own."""
    if not principal.is_global:
        if principal.instance.name != name:
            reject(403, "forbidden")
        return principal.instance
    instance = None
    if is_valid_instance_name(name):
        instance = db.session.scalar(select(Instance).where(Instance.name == name))
    if instance is None:
        abort(404, f'The "{name}" instance does not exist')
    return instance


def reject(status: int, reason: str) -> None:
    logger.warning(
        "Authentication failed: reason=%s method=%s path=%s client=%s request_id=%s",
        reason, request.method, request.path, request.remote_addr, g.get("request_id"),
    )
    abort(status, "Unauthorized" if status == 401 else "Forbidden")
