"""Blueprints, one per resource, and the JSON body rules they share."""

import json

from flask import Flask, abort, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge


def register_blueprints(app: Flask) -> None:
    from routes import chat, docs, instances, messages, monitoring, status, webhooks

    app.register_blueprint(status.bp)
    app.register_blueprint(instances.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(monitoring.bp)
    app.register_blueprint(docs.bp)


JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    body = dict(pairs)
    if len(body) != len(pairs):
        duplicate = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise ValueError(f'the key "{duplicate}" appears more than once')
    return body


def reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_body(required: bool) -> dict:
    """Return the request's JSON object; an empty body is no body.

    The body limit (413) applies when the data is read; then a non-JSON content type is 415,
    and malformed JSON or JSON that is not an object is 400.
    """
    data = request.get_data(cache=True)
    if request.content_length is None and len(data) >= current_app.config["MAX_CONTENT_LENGTH"]:
        # A chunked body has no length to check up front; its read stops at the limit.
        raise RequestEntityTooLarge()
    if not data.strip():
        if required:
            abort(400, "A JSON object body is required.")
        return {}
    if not request.is_json:
        abort(415, f'Send the body as JSON with "Content-Type: application/json", not "{request.mimetype}".')
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        abort(415, "Send the body without Content-Encoding; compressed bodies are not accepted.")
    try:
        body = json.loads(data, parse_constant=reject_constant, object_pairs_hook=reject_duplicate_keys)
    except ValueError as error:
        abort(400, f"The body is not valid JSON: {error}.")
    except RecursionError:
        abort(400, "The body is not valid JSON: it is nested too deeply.")
    if not isinstance(body, dict):
        abort(400, f"The body must be a JSON object, not {JSON_TYPE_NAMES.get(type(body), 'null')}.")
    return body
