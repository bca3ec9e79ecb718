"""The one JSON error shape, `{"statusCode", "error", "message"}`, for every error answer."""

import logging

from flask import Flask, Response, jsonify, request
from marshmallow import Schema, ValidationError, fields
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from models import db

logger = logging.getLogger(__name__)

# Read and discard at most this much of an oversized body, so the client sees the 413
# instead of a connection reset; anything larger is cut off.
MAX_DRAIN_BYTES = 16 * 1024 * 1024


class ApiError(Exception):
    """An error an operation reports to the client, with its status and one-sentence message."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class ErrorSchema(Schema):
    """The error body that `error_response` builds, described for the API document."""

    statusCode = fields.Integer(required=True, metadata={"description": "The HTTP status code."})
    error = fields.String(required=True, metadata={"description": "The HTTP reason phrase."})
    message = fields.String(required=True, metadata={"description": "What failed, and how to fix it."})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Validation failures only: the reasons for each invalid field."},
    )


def error_response(status: int, message: str, errors: dict | None = None) -> Response:
    body = {"statusCode": status, "error": HTTP_STATUS_CODES.get(status, "Error"), "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    return response


def handle_http_exception(error: HTTPException) -> Response:
    """Turn any HTTP error into JSON, keeping its headers (`Allow`, `Retry-After`, ...)."""
    response = error_response(error.code or 500, error.description or "")
    for name, value in error.get_response().headers.items():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


def handle_api_error(error: ApiError) -> Response:
    return error_response(error.status_code, error.message)


def handle_validation_error(error: ValidationError) -> Response:
    errors = flatten(error.messages) if isinstance(error.messages, dict) else {"_body": list(error.messages)}
    field, reasons = next(iter(errors.items()))
    message = reasons[0] if field == "_body" else f"{field}: {reasons[0]}"
    return error_response(400, message, errors)


def handle_stale_instance(error: StaleDataError) -> Response:
    """Respond to a change to an instance that another request deleted in the meantime."""
    db.session.rollback()
    name = (request.view_args or {}).get("name")
    if name is not None:
        return error_response(404, f'The "{name}" instance does not exist')
    return error_response(409, "The data changed while the request ran; try again.")


def handle_too_large(error: RequestEntityTooLarge) -> Response:
    drain_request_body()
    return error_response(413, "The request body is larger than 1 MiB; send a smaller body.")


def handle_internal_error(error: InternalServerError) -> Response:
    # Flask has already logged the original exception with its traceback.
    return error_response(500, "The server failed to handle the request; see the server log.")


def flatten(messages: dict, prefix: str = "") -> dict[str, list[str]]:
    """Flatten marshmallow's nested error dict into `{"a.b": ["reason", ...]}`."""
    flat: dict[str, list[str]] = {}
    for key, value in messages.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = [str(reason) for reason in value]
    return flat


def drain_request_body() -> None:
    stream = request.environ.get("wsgi.input")
    remaining = min(request.content_length or MAX_DRAIN_BYTES, MAX_DRAIN_BYTES)
    try:
        while remaining > 0:
            chunk = stream.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
    except (OSError, ValueError):
        logger.debug("Could not drain an oversized request body", exc_info=True)


def init_app(app: Flask) -> None:
    app.register_error_handler(RequestEntityTooLarge, handle_too_large)
    app.register_error_handler(InternalServerError, handle_internal_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(StaleDataError, handle_stale_instance)
