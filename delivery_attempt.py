"""One delivery attempt: sign a claimed event, post it to its receiver and classify the response.

Nothing here touches the database, so sender threads run it without a session. Claiming and
recording are in `delivery.py`.
"""

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

import urllib3.exceptions
from urllib3 import HTTPHeaderDict
from urllib3.util import make_headers

import webhook_http
from config import VERSION
from events import without_credentials
from webhooks import BlockedDestination, check_destination

RETRYABLE_STATUSES = {408, 429}


@dataclass(frozen=True)
class Claim:
    """One leased event, copied out of the claiming transaction for sending and recording."""

    pk: int
    public_id: str
    queue: str
    name: str
    instance_name: str
    url: str
    headers: dict
    secret: str
    body: bytes
    # The outgoing message whose status this delivery decides, or None.
    message_pk: int | None
    attempt: int
    lease_token: str


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retryable: bool
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the `X-Webhook-Signature` value: HMAC-SHA256 over `TIMESTAMP.BODY`."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def attempt_delivery(claim: Claim, config: dict, client: webhook_http.Client) -> Outcome:
    """Post the event once, on `client`'s connections; never follows redirects."""
    if config["WEBHOOK_BLOCK_PRIVATE_NETWORKS"]:
        try:
            check_destination(claim.url)
        except BlockedDestination as error:
            return Outcome(delivered=False, retryable=False, error=str(error))

    parts = urlsplit(claim.url)
    timestamp = str(int(time.time()))
    # Header names match whatever their case, so a fixed header replaces a configured one.
    headers = HTTPHeaderDict(claim.headers)
    headers.update({
        "Content-Type": "application/json",
        "User-Agent": f"evogate/{VERSION}",
        "X-Webhook-Id": claim.public_id,
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": sign(claim.secret, timestamp, claim.body),
    })
    if parts.username:
        # Credentials in the URL become basic authentication and are left out of the URL posted to.
        credentials = unquote(parts.username) + ":" + unquote(parts.password or "")
        headers.update(make_headers(basic_auth=credentials))

    try:
        response = client.post(without_credentials(claim.url), config["WEBHOOK_REQUEST_TIMEOUT_MS"] / 1000,
                               claim.body, headers)
    except urllib3.exceptions.NewConnectionError as error:
        # urllib3 makes this a kind of connect timeout, but a refused connection or a failed
        # name lookup is no timeout. The class name only: messages can carry the URL.
        return Outcome(delivered=False, retryable=True, error=f"connection failed ({type(error).__name__})")
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        return Outcome(delivered=False, retryable=True, error="the receiver timed out")
    except (urllib3.exceptions.HTTPError, OSError) as error:
        # The class name only: messages can carry the URL, and URLs can carry secrets.
        return Outcome(delivered=False, retryable=True, error=f"connection failed ({type(error).__name__})")

    status = response.status
    if 200 <= status < 300:
        return Outcome(delivered=True, retryable=False, status_code=status)
    return Outcome(
        delivered=False,
        retryable=status >= 500 or status in RETRYABLE_STATUSES,
        status_code=status,
        error=f"the receiver answered {status}",
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a `Retry-After` header requests (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())
