"""The OpenAPI 3 document of the API, built from `app.url_map`, the marshmallow schemas and
`openapi_operations` with apispec."""

import logging
import re
import sys

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from werkzeug.routing import Rule

import auth
from config import VERSION
from errors import ErrorSchema
from models import INSTANCE_NAME_PATTERN, INSTANCE_NAME_RULE
from openapi_operations import OPERATIONS, Operation, SuccessResponse

logger = logging.getLogger(__name__)

OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEME = "apikey"
# Methods Flask adds to routes by itself: HEAD responds as GET does, OPTIONS is CORS preflight.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
# The name a Flask rule variable has in the document, where Evolution's name differs.
PATH_PARAMETER_NAMES = {"name": "instanceName"}

DESCRIPTION = """\
evogate implements the instance and authentication API of Evolution API.

Send a key in the `apikey` header: the global key may do everything, and an instance token acts
on its own instance only. Every error response, including unknown paths (404) and methods a path
does not take (405), has the body `{"statusCode", "error", "message"}`; validation failures add
`errors`, the reasons for each invalid field. Every response carries `X-Request-ID`.
"""

ERROR_RESPONSES = {
    400: ("BadRequest", "The body or a field is invalid (`message` names the value and `errors` lists the reasons "
                        "for each field), the custom token exists, or the instance is not connected."),
    401: ("Unauthorized", "The `apikey` header is missing or holds no known key."),
    403: ("Forbidden", "The key is valid but may not do this: an instance token on another instance, "
                       "or on a route for the global key."),
    404: ("NotFound", "The instance named in the path or in a filter does not exist, "
                      "or the documentation page has no such file."),
    405: ("MethodNotAllowed", "The path does not take this method; `Allow` lists the methods it takes."),
    409: ("Conflict", "An instance with this name exists."),
    413: ("PayloadTooLarge", "The body is larger than 1 MiB."),
    415: ("UnsupportedMediaType", 'The body is not sent with "Content-Type: application/json".'),
    429: ("TooManyRequests", "Too many failed authentications from this client address; "
                             "retry after `Retry-After` seconds."),
    500: ("InternalServerError", "The server failed; the server log has the details."),
    503: ("ServiceUnavailable", "The database does not respond."),
}
REQUEST_ID_HEADER = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
RETRY_AFTER_HEADER = {"Retry-After": {
    "description": "Seconds until the client address may try again.", "required": True, "schema": {"type": "string"},
}}


def build_document(app: Flask) -> dict:
    """Describe every route of the app as an OpenAPI 3 document."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="evogate",
        version=VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": DESCRIPTION},
    )
    plugin.converter.add_attribute_function(nullable_nested)
    add_components(spec)
    for name, blueprint in app.blueprints.items():
        spec.tag({"name": name, "description": first_line(sys.modules[blueprint.import_name].__doc__)})
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        add_rule(spec, app, rule)
    return spec.to_dict()


def add_components(spec: APISpec) -> None:
    spec.components.security_scheme(SECURITY_SCHEME, {"type": "apiKey", "in": "header", "name": "apikey"})
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.header("X-Request-ID", {
        "description": "The request's X-Request-ID when it is 1 to 128 characters from A-Z a-z 0-9 . _ ~ : @ + / = -, "
                       "otherwise a generated id.",
        "required": True,
        "schema": {"type": "string"},
    })
    for status, (name, description) in ERROR_RESPONSES.items():
        headers = {**REQUEST_ID_HEADER, **(RETRY_AFTER_HEADER if status == 429 else {})}
        content = {"application/json": {"schema": "Error"}}
        spec.components.response(name, {"description": description, "headers": headers, "content": content})


def nullable_nested(converter, field, ret, **kwargs) -> dict:
    """Describe a nullable nested schema as `allOf: [$ref]` and `nullable`.

    apispec writes `anyOf: [$ref, {"type": "object", "nullable": true}]` for OpenAPI 3.0, and
    its second branch accepts any object, so the nested schema would constrain nothing.
    """
    any_of = ret.get("anyOf", [])
    references = [schema for schema in any_of if "$ref" in schema]
    if len(any_of) == 2 and len(references) == 1 and {"type": "object", "nullable": True} in any_of:
        del ret["anyOf"]
        ret["allOf"] = references
        ret["nullable"] = True
    return {}


def add_rule(spec: APISpec, app: Flask, rule: Rule) -> None:
    if rule.endpoint not in OPERATIONS:
        # Left out rather than failing the whole document. tests/test_openapi.py reports the route.
        logger.warning("The route %s (%s) is not in openapi_operations.OPERATIONS; the API document "
                       "leaves it out", rule.rule, rule.endpoint)
        return
    view = app.view_functions[rule.endpoint]
    operation = OPERATIONS[rule.endpoint]
    operations = {
        method.lower(): describe_operation(rule, view, operation)
        for method in sorted(rule.methods - IMPLICIT_METHODS)
    }
    spec.path(path=path_template(rule), operations=operations)


def path_template(rule: Rule) -> str:
    """Return the OpenAPI path of a Flask rule: `/instance/connect/<name>` → `/instance/connect/{instanceName}`."""
    return RULE_VARIABLE.sub(lambda match: "{" + PATH_PARAMETER_NAMES.get(match[1], match[1]) + "}", rule.rule)


def describe_operation(rule: Rule, view, operation: Operation) -> dict:
    public = getattr(view, "auth_scope", auth.INSTANCE_PATH) == auth.PUBLIC
    errors = set(operation.errors) | {500}
    if not public:
        errors |= {401, 403, 429}
    if "name" in rule.arguments:
        errors.add(404)
    if operation.body is not None:
        errors |= {400, 413, 415}

    description = {
        "operationId": rule.endpoint,
        "summary": first_line(view.__doc__),
        "tags": [rule.endpoint.split(".")[0]],
        "responses": success_responses(operation.responses) | error_responses(errors),
        "security": security_requirements(view),
    }
    parameters = path_parameters(rule) + list(operation.parameters)
    if parameters:
        description["parameters"] = parameters
    if operation.body is not None:
        description["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": operation.body}},
        }
    return description


def security_requirements(view) -> list[dict]:
    """Return who may call the view: anyone, the `apikey` header, or either for /metrics."""
    scope = getattr(view, "auth_scope", auth.INSTANCE_PATH)
    if scope == auth.PUBLIC:
        return []
    if scope == auth.GLOBAL_OR_SCRAPER:
        return [{SECURITY_SCHEME: []}, {}]  # no key from an address in METRICS_ALLOWED_IPS
    return [{SECURITY_SCHEME: []}]


def path_parameters(rule: Rule) -> list[dict]:
    parameters = []
    for argument in sorted(rule.arguments):
        parameter = {"in": "path", "name": PATH_PARAMETER_NAMES.get(argument, argument), "required": True,
                     "schema": {"type": "string"}}
        if argument == "name":
            parameter["description"] = f"The instance's name: {INSTANCE_NAME_RULE}. Case-sensitive."
            parameter["schema"] |= {"pattern": f"^{INSTANCE_NAME_PATTERN.pattern}$"}
        parameters.append(parameter)
    return parameters


def success_responses(responses: dict[int, SuccessResponse]) -> dict[str, dict]:
    described = {}
    for status, response in sorted(responses.items()):
        content = response.content or {"application/json": {"schema": response.schema}}
        headers = {**REQUEST_ID_HEADER, **response.headers}
        described[str(status)] = {"description": response.description, "headers": headers, "content": content}
    return described


def error_responses(statuses: set[int]) -> dict[str, str]:
    return {str(status): ERROR_RESPONSES[status][0] for status in sorted(statuses)}


def first_line(docstring: str | None) -> str:
    """Return a docstring's summary line: a view's summary, or a blueprint module's description."""
    lines = (docstring or "").strip().splitlines()
    return lines[0] if lines else ""
