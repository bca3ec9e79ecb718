"""The OpenAPI document: it describes every route, validates as OpenAPI 3 and states each key rule."""

import re

import pytest
from marshmallow import ValidationError
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from openapi import IMPLICIT_METHODS, path_template
from schema_fields import RECIPIENT_PATTERN, normalise_number

PUBLIC_PATHS = {"/", "/health/live", "/health/ready", "/openapi.json", "/docs", "/docs/{filename}"}
KEY_ERRORS = {"401", "403", "429"}
BODY_ERRORS = {"400", "413", "415"}


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_document_lists_every_route(app, document):
    routes = {
        (path_template(rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - IMPLICIT_METHODS
    }
    documented = {(path, method) for path, method, _ in operations(document)}
    assert sorted(routes - documented) == [], "routes missing from the document"
    assert sorted(documented - routes) == [], "documented operations without a route"


def test_document_names_instance_parameter(document):
    parameters = document["paths"]["/instance/connect/{instanceName}"]["get"]["parameters"]
    assert [(parameter["in"], parameter["name"]) for parameter in parameters] == [("path", "instanceName")]


def test_document_is_valid_openapi_3(document):
    assert document["openapi"].startswith("3.")
    try:
        validate(document)
    except OpenAPIValidationError as error:
        pytest.fail(f"the document is not valid OpenAPI: {error}")


def test_api_key_scheme(document):
    scheme = document["components"]["securitySchemes"]["apikey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "apikey"}


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
def test_public_routes_need_no_key(document, path):
    for method, operation in document["paths"][path].items():
        assert operation["security"] == [], f"{method.upper()} {path}"
        assert KEY_ERRORS.isdisjoint(operation["responses"]), f"{method.upper()} {path}"


def test_other_routes_need_key(document):
    for path, method, operation in operations(document):
        if path in PUBLIC_PATHS or path == "/metrics":
            continue
        assert operation["security"] == [{"apikey": []}], f"{method.upper()} {path}"
        assert KEY_ERRORS <= set(operation["responses"]), f"{method.upper()} {path}"


def test_metrics_needs_key_or_allowed_address(document):
    operation = document["paths"]["/metrics"]["get"]

    assert operation["security"] == [{"apikey": []}, {}]
    assert KEY_ERRORS <= set(operation["responses"])
    assert "text/plain" in operation["responses"]["200"]["content"]


def test_every_operation_documents_500(document):
    for path, method, operation in operations(document):
        assert "500" in operation["responses"], f"{method.upper()} {path}"


def test_error_responses_use_error_schema(document):
    for name, response in document["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"statusCode", "error", "message"}


def test_instance_routes_document_404(document):
    for path, method, operation in operations(document):
        if "{instanceName}" in path:
            assert "404" in operation["responses"], f"{method.upper()} {path}"


def test_body_routes_document_body_errors(document):
    for path, method, operation in operations(document):
        if "requestBody" in operation:
            assert BODY_ERRORS <= set(operation["responses"]), f"{method.upper()} {path}"


@pytest.mark.parametrize(("path", "schema"), [
    ("/instance/create", "InstanceCreate"),
    ("/instance/setPresence/{instanceName}", "Presence"),
    ("/instance/rotateToken/{instanceName}", "TokenBody"),
    ("/message/sendText/{instanceName}", "SendText"),
    ("/webhook/set/{instanceName}", "WebhookSet"),
    ("/webhook/evolution/{instanceName}", "InboundMessage"),
    ("/chat/findMessages/{instanceName}", "FindMessages"),
])
def test_request_bodies_use_load_schemas(document, path, schema):
    body = document["paths"][path]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{schema}"}


def test_specific_errors(document):
    paths = document["paths"]
    assert "409" in paths["/instance/create"]["post"]["responses"]
    assert "404" in paths["/instance/fetchInstances"]["get"]["responses"]
    assert "503" in paths["/health/ready"]["get"]["responses"]


def test_token_responses_document_no_store(document):
    for path in ("/instance/create", "/instance/rotateToken/{instanceName}"):
        responses = document["paths"][path]["post"]["responses"]
        success = responses["201"] if "201" in responses else responses["200"]
        assert "Cache-Control" in success["headers"], path


def test_document_needs_no_key(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"


@pytest.mark.parametrize(("value", "accepted"), [
    ("5511999999999", True),
    ("+55 (11) 99999-9999", True),
    ("+55.11.9999.9999", True),
    ("55\t11\n99999999", True),
    ("5511999999999@s.whatsapp.net", True),
    ("120363025@g.us", True),
    ("5511-1600000000@g.us", True),
    ("1234567", False),
    ("1234567890123456", False),
    ("", False),
    (" +5511999999999", False),
    ("++5511999999", False),
    ("١٢٣٤٥٦٧٨٩", False),
    ("@g.us", False),
    ("1-@g.us", False),
])
def test_recipient_pattern_matches_validation(value, accepted):
    documented = re.search(RECIPIENT_PATTERN, value) is not None
    assert documented is accepted
    try:
        normalise_number(value)
        validated = True
    except ValidationError:
        validated = False
    assert validated is accepted
