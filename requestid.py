"""Request ids: every response carries `X-Request-ID`, the caller's when it is safe to echo."""

import re
import uuid

from flask import Flask, Response, g, request

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@+/=-]{1,128}")


def assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex


def add_request_id_header(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    return response


def init_app(app: Flask) -> None:
    # Registered before the guard, so failed authentications are logged with the id.
    app.before_request(assign_request_id)
    app.after_request(add_request_id_header)
