"""Instance routes: create, list, state changes, token rotation and delete."""

from collections.abc import Iterable, Iterator
from itertools import islice

from flask import Blueprint, Response, abort, current_app, g, request, stream_with_context

import instances
from auth import any_principal, global_only, reject
from database import writes
from routes import json_body
from schemas import (
    dump_instance_listing,
    instance_create_schema,
    instance_summary_schema,
    presence_schema,
    settings_schema,
    token_body_schema,
)

bp = Blueprint("instances", __name__, url_prefix="/instance")
# Answers that show a token must not be kept by browsers or proxies.
NO_STORE = {"Cache-Control": "no-store"}
# Listings longer than this are sent in chunks of this many instances.
LISTING_CHUNK_SIZE = 250


def state_answer(instance):
    return {"instance": {"instanceName": instance.name, "state": instance.connection_status}}


def success_answer(message: str):
    return {"status": "SUCCESS", "error": False, "response": {"message": message}}


def token_answer(instance, token: str) -> dict:
    """Build the one answer that shows a token; it is never shown again."""
    return {
        "instance": instance_summary_schema.dump(instance),
        "hash": token,
        "settings": settings_schema.dump(instance),
    }


@bp.post("/create")
@global_only
def create():
    """Create an instance and show its token once."""
    data = instance_create_schema.load(json_body(required=True))
    instance, token = instances.create_instance(data)
    return token_answer(instance, token), 201, NO_STORE


@bp.get("/fetchInstances")
@any_principal
def fetch_instances():
    """List the instances the key may see, optionally filtered by name or id."""
    try:
        found = instances.find_instances(
            g.principal,
            request.args.get("instanceName", ""),
            request.args.get("instanceId", ""),
            current_app.config["AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES"],
        )
    except PermissionError:
        reject(403, "forbidden")
    except LookupError as error:
        abort(404, f'Instance "{error.args[0]}" not found')
    rows = iter(found)
    first_chunk = list(islice(rows, LISTING_CHUNK_SIZE + 1))
    if len(first_chunk) <= LISTING_CHUNK_SIZE:
        return dump_instance_listing(first_chunk)
    return Response(stream_with_context(encode_listing(first_chunk, rows)), mimetype="application/json")


def encode_listing(first_chunk: list, rest: Iterable) -> Iterator[str]:
    """Yield a long listing's JSON array a chunk of instances at a time.

    The text is the same as a jsonify response's, but the rows are read from the database as
    the chunks are sent, so only one chunk's rows, dicts and text exist at once.

    NOTE: the 200 status is sent before the later rows are read. When the database fails
    midway, the response ends without its closing bracket and, over HTTP/1.1, without the final
    empty chunk, instead of being a JSON 500; gunicorn logs the error.
    """
    yield "["
    chunk = first_chunk
    while chunk:
        if chunk is not first_chunk:
            yield ","
        text = current_app.json.dumps(dump_instance_listing(chunk), separators=(",", ":"))
        yield text[1:-1]
        chunk = list(islice(rest, LISTING_CHUNK_SIZE))
    yield "]\n"


@bp.get("/connect/<name>")
@writes
def connect(name):
    """Open the instance's connection."""
    instances.connect(g.instance)
    return state_answer(g.instance)


@bp.get("/connectionState/<name>")
def connection_state(name):
    """Report the instance's connection state."""
    return state_answer(g.instance)


@bp.post("/restart/<name>")
def restart(name):
    """Restart the instance's channel; an open instance stays open, a closed one closed."""
    json_body(required=False)
    return state_answer(g.instance)


@bp.post("/setPresence/<name>")
def set_presence(name):
    """Set the presence shown to contacts."""
    data = presence_schema.load(json_body(required=True))
    return {"presence": data["presence"]}, 201


@bp.delete("/logout/<name>")
def logout(name):
    """Close the instance's connection, keeping the instance."""
    if instances.logout(g.instance):
        return success_answer("Instance logged out")
    return success_answer("Instance was already disconnected")


@bp.delete("/delete/<name>")
def delete(name):
    """Delete the instance and everything it owns."""
    instances.delete_instance(g.instance)
    return success_answer("Instance deleted")


@bp.post("/rotateToken/<name>")
def rotate_token(name):
    """Replace the instance's token and show the new one once."""
    data = token_body_schema.load(json_body(required=False))
    token = instances.rotate_token(g.instance, data["token"])
    return token_answer(g.instance, token), 200, NO_STORE
