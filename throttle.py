"""Failed-authentication throttling with flask-limiter.

Only answers of 401 count, per client address. Once an address is over
AUTHENTICATION_FAILURE_LIMIT, every request from it that needs a key is answered 429 with
`Retry-After`, in a hook that runs before the key is looked at, so guessing costs no database
work. With RATELIMIT_STORAGE_URI naming Redis, all workers and hosts share one count. Routes
that need no key (`/`, the health probes, the API documentation) are never throttled, so probes
keep working.
"""

import time

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

import auth
from errors import error_response


def counts_as_failure(response: Response) -> bool:
    return response.status_code == 401


def needs_no_key() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "auth_scope", None) == auth.PUBLIC


def init_app(app: Flask) -> Limiter:
    """Bind a limiter to the app; call it before the key guard is registered so it runs first."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        application_limits=[app.config["AUTHENTICATION_FAILURE_LIMIT"]],
        application_limits_deduct_when=counts_as_failure,
        application_limits_exempt_when=needs_no_key,
        storage_uri=app.config["RATELIMIT_STORAGE_URI"],
        key_prefix="evogate-auth-failures",
        # Only the 429 answer says when to come back (below); other answers carry no limit headers.
        headers_enabled=False,
        # A storage outage must not take the API down with it; flask-limiter logs the error.
        swallow_errors=True,
    )

    def handle_throttled(error: RateLimitExceeded) -> Response:
        response = error_response(
            429, "Too many failed authentications from this address; wait for the Retry-After delay, then use a valid key."
        )
        window = limiter.current_limit
        seconds = int(window.reset_at - time.time()) if window is not None else 60
        response.headers["Retry-After"] = str(max(1, seconds))
        return response

    app.register_error_handler(RateLimitExceeded, handle_throttled)
    return limiter
