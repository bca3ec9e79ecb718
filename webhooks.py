"""Webhook receivers: configuring an instance's receiver and checking where deliveries may go."""

import ipaddress
import logging
import secrets
import socket
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from errors import ApiError
from models import Instance, Webhook, db
from webhook_schemas import canonical_event_name

logger = logging.getLogger(__name__)


class BlockedDestination(Exception):
    """A receiver URL whose host is on a network deliveries may not reach."""


def generate_secret() -> str:
    return "whsec_" + secrets.token_hex(32)


def find_webhook(instance_pk: int) -> Webhook | None:
    """Return the receiver configured for the instance with this primary key, if any."""
    return db.session.scalar(select(Webhook).where(Webhook.instance_pk == instance_pk))


def apply_webhook(instance: Instance, data: dict) -> Webhook:
    """Store a loaded webhook configuration on the instance, in the caller's transaction."""
    if data["enabled"] and current_app.config["WEBHOOK_BLOCK_PRIVATE_NETWORKS"]:
        try:
            check_destination(data["url"])
        except BlockedDestination as error:
            raise ApiError(f"{error}; WEBHOOK_BLOCK_PRIVATE_NETWORKS=true refuses it.") from None
    webhook = instance.webhook
    if webhook is None:
        webhook = Webhook(instance=instance)
        db.session.add(webhook)
    webhook.enabled = data["enabled"]
    webhook.url = data["url"]
    webhook.events = sorted({canonical_event_name(name) for name in data["events"] or []})
    webhook.by_events = data["byEvents"]
    webhook.base64 = data["base64"]
    webhook.headers = data["headers"] or {}
    # Setting the webhook again without a secret keeps the one receivers already know.
    webhook.secret = data["secret"] or webhook.secret or generate_secret()
    return webhook


def configure_webhook(instance: Instance, data: dict) -> Webhook:
    """Replace the instance's webhook configuration and commit it."""
    webhook = apply_webhook(instance, data)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ApiError("The webhook was changed by another request at the same time; try again.", 409) from None
    logger.info("Webhook configured: instance=%s enabled=%s", instance.name, webhook.enabled)
    return webhook


def check_destination(url: str) -> None:
    """Raise BlockedDestination when the URL's host resolves to a non-public address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        raise BlockedDestination(f'The webhook host "{host}" cannot be resolved') from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_loopback:
            raise BlockedDestination(f'The webhook host "{host}" resolves to a non-public address ({ip})')
