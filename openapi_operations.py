"""The API document's description of each endpoint: its body, its responses and its own errors.

`openapi.py` adds what follows from the route itself. Every route that needs a key gets the
`apikey` security with 401, 403 and 429, an instance in the path gets its parameter and 404,
a JSON body gets 400, 413 and 415, and every route gets 500. `errors` lists the other
error statuses an endpoint can return. Every endpoint in `app.url_map` needs an entry here,
and a test checks that.
"""

from dataclasses import dataclass, field

from response_schemas import (
    HealthSchema,
    MessagesResponseSchema,
    PresenceResponseSchema,
    ResultResponseSchema,
    StateResponseSchema,
    TokenResponseSchema,
    WelcomeSchema,
)
from schemas import (
    FindMessagesSchema,
    InboundMessageSchema,
    InstanceCreateSchema,
    InstanceSchema,
    MessageRecordSchema,
    MessageSchema,
    PresenceSchema,
    SendTextSchema,
    TokenBodySchema,
)
from webhook_schemas import WebhookAnswerSchema, WebhookSetSchema

ANY_JSON_OBJECT = {"type": "object"}
TEXT = {"type": "string"}
NO_STORE = {"Cache-Control": {"description": "`no-store`: the response shows a token.", "schema": {"type": "string"}}}


@dataclass(frozen=True)
class SuccessResponse:
    """A success response: a JSON body described by `schema`, or the raw OpenAPI `content`."""

    description: str
    schema: object = None
    content: dict | None = None
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    responses: dict[int, SuccessResponse]
    body: object = None  # a marshmallow schema class, or a JSON Schema dict
    body_required: bool = True
    errors: tuple[int, ...] = ()
    parameters: tuple[dict, ...] = ()


def query_parameter(name: str, description: str) -> dict:
    return {"in": "query", "name": name, "required": False, "schema": {"type": "string"}, "description": description}


def state_response(description: str) -> dict[int, SuccessResponse]:
    return {200: SuccessResponse(description, StateResponseSchema)}


OPERATIONS = {
    "status.welcome": Operation({200: SuccessResponse("The service runs; its version.", WelcomeSchema)}),
    "status.live": Operation({200: SuccessResponse("The process serves requests.", HealthSchema)}),
    "status.ready": Operation({200: SuccessResponse("The database responds.", HealthSchema)}, errors=(503,)),
    "instances.create": Operation(
        {201: SuccessResponse("The new instance, its settings and its token.", TokenResponseSchema, headers=NO_STORE)},
        body=InstanceCreateSchema,
        errors=(409,),
    ),
    "instances.fetch_instances": Operation(
        {200: SuccessResponse(
            "The instances the key may see, in creation order.", {"type": "array", "items": InstanceSchema},
        )},
        errors=(404,),
        parameters=(
            query_parameter("instanceName", "Only the instance with this name; an empty value is no filter."),
            query_parameter("instanceId", "Only the instance with this id; an empty value is no filter."),
        ),
    ),
    "instances.connect": Operation(state_response("The instance is open.")),
    "instances.connection_state": Operation(state_response("The instance's connection state.")),
    "instances.restart": Operation(
        state_response("The state after the restart: open stays open, close stays close."),
        body=ANY_JSON_OBJECT,
        body_required=False,
    ),
    "instances.set_presence": Operation(
        {201: SuccessResponse("The presence now shown.", PresenceResponseSchema)},
        body=PresenceSchema,
    ),
    "instances.logout": Operation({200: SuccessResponse("The instance is closed.", ResultResponseSchema)}),
    "instances.delete": Operation(
        {200: SuccessResponse("The instance and all it owned are gone.", ResultResponseSchema)},
    ),
    "instances.rotate_token": Operation(
        {200: SuccessResponse(
            "The instance and its new token; the old token no longer works.", TokenResponseSchema, headers=NO_STORE,
        )},
        body=TokenBodySchema,
        body_required=False,
    ),
    "messages.send_text": Operation(
        {201: SuccessResponse("The stored message, PENDING.", MessageSchema)},
        body=SendTextSchema,
    ),
    "webhooks.set_webhook": Operation(
        {201: SuccessResponse("The stored webhook configuration.", WebhookAnswerSchema)},
        body=WebhookSetSchema,
    ),
    "webhooks.find_webhook": Operation(
        {200: SuccessResponse(
            "The webhook configuration, or null when none is set.", {"allOf": [WebhookAnswerSchema], "nullable": True},
        )},
    ),
    "webhooks.receive_message": Operation(
        {
            201: SuccessResponse("The message, stored now.", MessageRecordSchema),
            200: SuccessResponse("A message with this key.id was stored before; it is returned as stored.",
                                 MessageRecordSchema),
        },
        body=InboundMessageSchema,
    ),
    "monitoring.export_metrics": Operation(
        {200: SuccessResponse(
            "Prometheus metrics in the text exposition format, added up over all workers.",
            content={"text/plain": {"schema": TEXT}},
        )},
    ),
    "chat.find_messages": Operation(
        {200: SuccessResponse("One page of messages, newest first.", MessagesResponseSchema)},
        body=FindMessagesSchema,
        body_required=False,
    ),
    "docs.openapi_document": Operation({200: SuccessResponse("This document.", ANY_JSON_OBJECT)}),
    "docs.swagger_ui": Operation(
        {200: SuccessResponse("Swagger UI, showing this document.", content={"text/html": {"schema": TEXT}})},
    ),
    "docs.swagger_ui_asset": Operation(
        {200: SuccessResponse("A file of the Swagger UI page.", content={
            "text/css": {"schema": TEXT},
            "text/javascript": {"schema": TEXT},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        })},
        errors=(404,),
    ),
}
