"""Failed-authentication throttling with the `limits` library (a fixed window per client address).

Only answers of 401 count, per client address. Once an address is over
AUTHENTICATION_FAILURE_LIMIT, every request from it that needs a key is answered 429 with
`Retry-After`, in a hook that runs before the key is looked at, so guessing costs no database
work. With RATELIMIT_STORAGE_URI naming Redis, all workers and hosts share one count. Routes
that need no key (`/`, the health probes, the API documentation) are never throttled, so probes
keep working.

The two hooks call `limits` directly: flask-limiter's per-request resolution of which limits
apply cost about as much as the key lookup itself, for this one fixed limit.
"""

import logging
import time

from flask import Flask, Response, current_app, request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

import auth
from errors import error_response

logger = logging.getLogger(__name__)

KEY_PREFIX = "evogate-auth-failures"
STORAGE_ERROR_LOG_INTERVAL_SECONDS = 60


def counts_as_failure(response: Response) -> bool:
    return response.status_code == 401


def needs_no_key() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "auth_scope", None) == auth.PUBLIC


class FailureThrottle:
    """A count of 401 responses per client address, which rejects the address with 429 once it is over the limit.

    A storage outage must not take the API down with it: a failed storage call lets the request
    through and is logged at most once a minute per process.
    """

    def __init__(self, limit: str, storage_uri: str):
        self.limit = parse(limit)
        self.strategy = FixedWindowRateLimiter(storage_from_string(storage_uri))
        self.last_error_logged = float("-inf")
        self.errors_since_log = 0

    def check(self) -> Response | None:
        """Return the 429 response for a throttled address, or None to let the request go on."""
        if needs_no_key():
            return None
        address = request.remote_addr or "127.0.0.1"
        try:
            if self.strategy.test(self.limit, KEY_PREFIX, address):
                return None
            reset_at = self.strategy.get_window_stats(self.limit, KEY_PREFIX, address).reset_time
        except Exception as error:  # noqa: BLE001 - any storage failure must let requests through
            self.log_storage_error(error)
            return None
        response = error_response(
            429, "Too many failed authentications from this address; wait for the Retry-After delay, then use a valid key."
        )
        response.headers["Retry-After"] = str(max(1, int(reset_at - time.time())))
        return response

    def count(self, response: Response) -> Response:
        """Count a 401 response against its client address."""
        if not counts_as_failure(response):
            return response
        try:
            self.strategy.hit(self.limit, KEY_PREFIX, request.remote_addr or "127.0.0.1")
        except Exception as error:  # noqa: BLE001 - any storage failure must let requests through
            self.log_storage_error(error)
        return response

    def log_storage_error(self, error: Exception) -> None:
        self.errors_since_log += 1
        now = time.monotonic()
        if now - self.last_error_logged < STORAGE_ERROR_LOG_INTERVAL_SECONDS:
            return
        logger.error(
            "Throttling storage failed (%s: %s); %d requests went unthrottled since the last report. "
            "Check RATELIMIT_STORAGE_URI and the Redis server.",
            type(error).__name__, error, self.errors_since_log,
        )
        self.last_error_logged, self.errors_since_log = now, 0


def init_app(app: Flask) -> FailureThrottle:
    """Register the throttle's hooks; call it before the key guard is registered so it runs first."""
    throttle = FailureThrottle(app.config["AUTHENTICATION_FAILURE_LIMIT"], app.config["RATELIMIT_STORAGE_URI"])
    app.before_request(throttle.check)
    app.after_request(throttle.count)
    return throttle
