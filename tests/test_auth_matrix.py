"""Who may call which route: every route against every kind of key, and the guard's edge cases.

Two instances exist in most tests: `victim-shop`, the instance named in the path, and
`bystander-shop`, whose token plays "another instance's token". No response may show the
bystander's name, id or number unless the caller is entitled to see it.
"""

import logging
import re
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from app import create_app
from database import upgrade_schema
from models import Instance, Message, db
from tests.conftest import GLOBAL_KEY, Api, app_settings

VICTIM = "victim-shop"
VICTIM_NUMBER = "5511911112222"
BYSTANDER = "bystander-shop"
BYSTANDER_NUMBER = "4915733334444"
MISSING = "ghost-shop"
UNKNOWN_KEY = "unknown-key-0123456789abcdef0123456789"
PREVIOUS_GLOBAL_KEY = "previous-global-key-" + "5f0c2d9e8b7a6f41" * 2

UNAUTHORIZED = {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"}
FORBIDDEN = {"statusCode": 403, "error": "Forbidden", "message": "Forbidden"}
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@+/=-]{1,128}")

NO_KEY, UNKNOWN, OWN_TOKEN, OTHER_TOKEN, GLOBAL = "no key", "unknown key", "own token", "other token", "global key"
KEY_KINDS = [NO_KEY, UNKNOWN, OWN_TOKEN, OTHER_TOKEN, GLOBAL]


@dataclass(frozen=True)
class Route:
    """One API route, a body that succeeds on it, and its success status."""

    method: str
    path: str
    body: dict | None
    success: int

    def url(self, name: str) -> str:
        return self.path.format(name=name)

    def expected_status(self, key_kind: str) -> int:
        """Return the status the authentication table prescribes for this kind of key."""
        if key_kind in (NO_KEY, UNKNOWN):
            return 401
        if key_kind == GLOBAL:
            return self.success
        if self.path == "/instance/create":
            return 403
        return self.success if key_kind == OWN_TOKEN else 403


SEND_TEXT_BODY = {"number": "5511987654321", "text": "hello"}
CREATE = Route("POST", "/instance/create", {"instanceName": "newcomer-shop"}, 201)
# With a name filter, an instance token may list its own instance and gets 403 for any other.
FETCH = Route("GET", "/instance/fetchInstances?instanceName={name}", None, 200)
PATH_ROUTES = [
    Route("GET", "/instance/connect/{name}", None, 200),
    Route("GET", "/instance/connectionState/{name}", None, 200),
    Route("POST", "/instance/restart/{name}", None, 200),
    Route("POST", "/instance/setPresence/{name}", {"presence": "available"}, 201),
    Route("DELETE", "/instance/logout/{name}", None, 200),
    Route("DELETE", "/instance/delete/{name}", None, 200),
    Route("POST", "/instance/rotateToken/{name}", None, 200),
    Route("POST", "/message/sendText/{name}", SEND_TEXT_BODY, 201),
]
ROUTES = [CREATE, FETCH, *PATH_ROUTES]


def route_id(route: Route) -> str:
    return f"{route.method} {route.path.split('?')[0]}"


def stored_state(app) -> tuple:
    """Return every instance's name, state and token digest, and the number of messages."""
    with app.app_context():
        instances = db.session.execute(
            select(Instance.name, Instance.connection_status, Instance.token_digest).order_by(Instance.pk)
        ).all()
        message_count = db.session.scalar(select(func.count()).select_from(Message))
    return [tuple(row) for row in instances], message_count


def message_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Message))


@pytest.fixture
def pair(api):
    """Create the victim and the bystander, and return their `instance` objects and tokens."""
    victim, victim_token = api.create_instance(VICTIM, number=VICTIM_NUMBER)
    bystander, bystander_token = api.create_instance(BYSTANDER, number=BYSTANDER_NUMBER)
    return {
        "victim": victim["instance"],
        "victim_token": victim_token,
        "bystander": bystander["instance"],
        "bystander_token": bystander_token,
        "keys": {NO_KEY: None, UNKNOWN: UNKNOWN_KEY, OWN_TOKEN: victim_token,
                 OTHER_TOKEN: bystander_token, GLOBAL: GLOBAL_KEY},
    }


@pytest.mark.parametrize("key_kind", KEY_KINDS)
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_route_status_per_key(api, app, pair, route, key_kind):
    before = stored_state(app)

    response = api.request(route.method, route.url(VICTIM), pair["keys"][key_kind], json=route.body)

    expected = route.expected_status(key_kind)
    assert response.status_code == expected, response.get_json()
    assert response.mimetype == "application/json"
    if expected == 401:
        assert response.get_json() == UNAUTHORIZED
    if expected == 403:
        assert response.get_json() == FORBIDDEN
    if expected in (401, 403):
        assert stored_state(app) == before


@pytest.mark.parametrize("key_kind", KEY_KINDS)
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_answer_hides_bystander(api, pair, route, key_kind):
    response = api.request(route.method, route.url(VICTIM), pair["keys"][key_kind], json=route.body)

    text = response.get_data(as_text=True)
    assert BYSTANDER not in text
    assert pair["bystander"]["instanceId"] not in text
    assert BYSTANDER_NUMBER not in text
    assert pair["bystander_token"] not in text
    assert pair["victim_token"] not in text


@pytest.mark.parametrize("route", PATH_ROUTES, ids=route_id)
def test_global_key_unknown_instance_404(api, app, pair, route):
    before = stored_state(app)

    response = api.request(route.method, route.url(MISSING), GLOBAL_KEY, json=route.body)

    assert response.status_code == 404
    assert response.get_json() == {
        "statusCode": 404, "error": "Not Found", "message": f'The "{MISSING}" instance does not exist',
    }
    assert stored_state(app) == before


@pytest.mark.parametrize("route", PATH_ROUTES, ids=route_id)
def test_token_on_missing_instance_403(api, pair, route):
    response = api.request(route.method, route.url(MISSING), pair["victim_token"], json=route.body)

    assert response.status_code == 403
    assert response.get_json() == FORBIDDEN


@pytest.mark.parametrize("key", [None, UNKNOWN_KEY], ids=["no key", "unknown key"])
@pytest.mark.parametrize("route", PATH_ROUTES, ids=route_id)
def test_anonymous_cannot_tell_missing_instance(api, pair, route, key):
    existing = api.request(route.method, route.url(VICTIM), key, json=route.body)
    missing = api.request(route.method, route.url(MISSING), key, json=route.body)

    assert existing.status_code == 401
    assert missing.status_code == 401
    assert missing.get_json() == existing.get_json()


def test_key_checked_before_body(api, app, pair):
    before = stored_state(app)
    bad_bodies = [
        {"data": "{not json", "content_type": "application/json"},
        {"data": "number=1&text=hi", "content_type": "application/x-www-form-urlencoded"},
        {"data": '{"text": "' + "x" * (2 * 1024 * 1024) + '"}', "content_type": "application/json"},
    ]

    for body in bad_bodies:
        anonymous = api.request("POST", f"/message/sendText/{VICTIM}", **body)
        intruder = api.request("POST", f"/message/sendText/{VICTIM}", pair["bystander_token"], **body)
        missing = api.request("POST", f"/message/sendText/{MISSING}", GLOBAL_KEY, **body)
        assert anonymous.status_code == 401
        assert intruder.status_code == 403
        assert missing.status_code == 404
    assert stored_state(app) == before


@pytest.mark.parametrize("header", ["apikey", "APIKEY", "ApiKey", "apiKey"])
def test_header_name_case_insensitive(api, pair, header):
    for key in (GLOBAL_KEY, pair["victim_token"]):
        response = api.client.get(f"/instance/connectionState/{VICTIM}", headers={header: key})

        assert response.status_code == 200
        assert response.get_json()["instance"]["instanceName"] == VICTIM


@pytest.mark.parametrize("key_name", ["global", "token"])
def test_key_in_query_string_ignored(api, pair, caplog, key_name):
    caplog.set_level(logging.INFO)
    key = GLOBAL_KEY if key_name == "global" else pair["victim_token"]

    response = api.client.get(f"/instance/connectionState/{VICTIM}?apikey={quote(key)}")

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED
    assert key not in caplog.text


@pytest.mark.parametrize("key", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_blank_key_401(api, pair, key):
    response = api.request("GET", f"/instance/connectionState/{VICTIM}", key)

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


@pytest.mark.parametrize("key_name", ["global", "token"])
def test_key_in_body_ignored(api, app, pair, key_name):
    key = GLOBAL_KEY if key_name == "global" else pair["victim_token"]

    response = api.request("POST", f"/message/sendText/{VICTIM}", json={**SEND_TEXT_BODY, "apikey": key})

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED
    assert message_count(app) == 0


@pytest.mark.parametrize("scheme", ["Bearer ", "ApiKey ", ""])
@pytest.mark.parametrize("key_name", ["global", "token"])
def test_key_in_authorization_ignored(api, pair, scheme, key_name):
    key = GLOBAL_KEY if key_name == "global" else pair["victim_token"]

    response = api.client.get(f"/instance/connectionState/{VICTIM}", headers={"Authorization": scheme + key})

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


NON_ASCII_KEYS = {
    "cyrillic": "ключ-ключ-ключ-ключ-ключ",
    "emoji": "🔑" * 20,
    # What a WSGI server passes on for UTF-8 bytes: each byte as one Latin-1 character.
    "utf8 bytes as latin1": ("ключ" * 8).encode("utf-8").decode("latin-1"),
    "global key plus accent": GLOBAL_KEY + "é",
    "accented global key": "é" + GLOBAL_KEY[1:],
}


@pytest.mark.parametrize("key", NON_ASCII_KEYS.values(), ids=NON_ASCII_KEYS.keys())
def test_non_ascii_key_401(api, pair, key):
    for path in ("/instance/fetchInstances", f"/instance/connectionState/{VICTIM}"):
        response = api.request("GET", path, key)

        assert response.status_code == 401
        assert response.get_json() == UNAUTHORIZED


@pytest.fixture
def rotating_api(backend, databases, tmp_path):
    """An app whose global key is being rotated: AUTHENTICATION_API_KEY_PREVIOUS is set."""
    settings = app_settings(databases.create(backend), AUTHENTICATION_API_KEY_PREVIOUS=PREVIOUS_GLOBAL_KEY)
    rotating_app = create_app(settings, instance_path=str(tmp_path / "instance"))
    upgrade_schema(rotating_app)
    yield Api(rotating_app.test_client())
    with rotating_app.app_context():
        db.engine.dispose()


def test_previous_global_key_accepted(rotating_api):
    created = rotating_api.create(VICTIM, key=PREVIOUS_GLOBAL_KEY)
    listed = rotating_api.request("GET", "/instance/fetchInstances", PREVIOUS_GLOBAL_KEY)
    state = rotating_api.request("GET", f"/instance/connectionState/{VICTIM}", PREVIOUS_GLOBAL_KEY)

    assert created.status_code == 201, created.get_json()
    assert listed.status_code == 200
    assert state.status_code == 200


def test_current_key_works_during_rotation(rotating_api):
    created = rotating_api.create(VICTIM)
    missing = rotating_api.request("GET", f"/instance/connectionState/{MISSING}", GLOBAL_KEY)

    assert created.status_code == 201
    assert missing.status_code == 404


@pytest.mark.parametrize("place", ["query", "body"])
def test_own_token_not_retargeted(api, app, pair, place):
    query = f"?instanceName={BYSTANDER}&instanceId={pair['bystander']['instanceId']}" if place == "query" else ""
    body = {**SEND_TEXT_BODY, "instanceName": BYSTANDER, "instanceId": pair["bystander"]["instanceId"]}

    response = api.request("POST", f"/message/sendText/{VICTIM}{query}", pair["victim_token"], json=body)

    assert response.status_code == 201
    assert response.get_json()["instanceId"] == pair["victim"]["instanceId"]
    with app.app_context():
        owners = db.session.scalars(select(Instance.name).join(Message)).all()
    assert owners == [VICTIM]


@pytest.mark.parametrize("place", ["query", "body"])
def test_other_token_not_retargeted(api, app, pair, place):
    """The bystander's token names itself outside the path; the path's victim stays out of reach."""
    before = stored_state(app)
    query = f"?instanceName={BYSTANDER}&instanceId={pair['bystander']['instanceId']}" if place == "query" else ""
    body = {**SEND_TEXT_BODY, "instanceName": BYSTANDER, "instanceId": pair["bystander"]["instanceId"]}

    for method, path, json in [
        ("GET", f"/instance/connectionState/{VICTIM}{query}", None),
        ("POST", f"/message/sendText/{VICTIM}{query}", body),
        ("DELETE", f"/instance/delete/{VICTIM}{query}", body if place == "body" else None),
    ]:
        response = api.request(method, path, pair["bystander_token"], json=json)

        assert response.status_code == 403
        assert response.get_json() == FORBIDDEN
    assert stored_state(app) == before


def test_global_delete_not_retargeted(api, pair):
    query = f"?instanceName={BYSTANDER}&instanceId={pair['bystander']['instanceId']}"

    response = api.request("DELETE", f"/instance/delete/{VICTIM}{query}", GLOBAL_KEY, json={"instanceName": BYSTANDER})

    assert response.status_code == 200
    assert api.request("GET", f"/instance/connectionState/{VICTIM}", GLOBAL_KEY).status_code == 404
    assert api.request("GET", f"/instance/connectionState/{BYSTANDER}", GLOBAL_KEY).status_code == 200


def test_global_logout_not_retargeted(api, pair):
    response = api.request("DELETE", f"/instance/logout/{VICTIM}?instanceName={BYSTANDER}", GLOBAL_KEY)

    assert response.status_code == 200
    victim_state = api.request("GET", f"/instance/connectionState/{VICTIM}", GLOBAL_KEY).get_json()
    bystander_state = api.request("GET", f"/instance/connectionState/{BYSTANDER}", GLOBAL_KEY).get_json()
    assert victim_state["instance"]["state"] == "close"
    assert bystander_state["instance"]["state"] == "open"


def test_global_rotate_not_retargeted(api, pair):
    response = api.request(
        "POST", f"/instance/rotateToken/{VICTIM}?instanceName={BYSTANDER}", GLOBAL_KEY,
        json={"instanceName": BYSTANDER, "instanceId": pair["bystander"]["instanceId"]},
    )

    assert response.status_code == 200
    assert response.get_json()["instance"]["instanceName"] == VICTIM
    assert api.request("GET", f"/instance/connectionState/{VICTIM}", pair["victim_token"]).status_code == 401
    assert api.request("GET", f"/instance/connectionState/{BYSTANDER}", pair["bystander_token"]).status_code == 200


UNKNOWN_PATHS = [
    ("GET", "/nope"),
    ("GET", f"/instance/unknownAction/{VICTIM}"),
    ("GET", "/instance/connectionState/"),
    ("POST", f"/message/sendMedia/{VICTIM}"),
    ("GET", f"/instance/connectionState/{VICTIM}/extra"),
]
ANY_KEYS = {"no key": None, "unknown key": UNKNOWN_KEY, "global key": GLOBAL_KEY}


@pytest.mark.parametrize("key", ANY_KEYS.values(), ids=ANY_KEYS.keys())
@pytest.mark.parametrize(("method", "path"), UNKNOWN_PATHS)
def test_unknown_route_json_404(api, pair, method, path, key):
    response = api.request(method, path, key)

    assert response.status_code == 404
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["statusCode"] == 404
    assert body["error"] == "Not Found"
    assert isinstance(body["message"], str)


WRONG_METHODS = [
    ("GET", "/instance/create"),
    ("POST", "/instance/fetchInstances"),
    ("DELETE", f"/message/sendText/{VICTIM}"),
    ("GET", f"/instance/delete/{VICTIM}"),
    ("PUT", f"/instance/connect/{VICTIM}"),
    ("PATCH", f"/instance/rotateToken/{VICTIM}"),
    ("POST", "/health/live"),
]


@pytest.mark.parametrize("key", ANY_KEYS.values(), ids=ANY_KEYS.keys())
@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_method_json_405(api, app, pair, method, path, key):
    before = stored_state(app)

    response = api.request(method, path, key)

    assert response.status_code == 405
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["statusCode"] == 405
    assert body["error"] == "Method Not Allowed"
    assert "Allow" in response.headers
    assert stored_state(app) == before


INVALID_PATH_NAMES = ["-leading-dash", ".leading-dot", "_leading-underscore", "a" * 65, "has space",
                      "ünïcode", "semi;colon", "quote\"mark"]


@pytest.mark.parametrize("name", INVALID_PATH_NAMES)
def test_invalid_path_name_404(api, pair, name):
    response = api.request("GET", f"/instance/connectionState/{quote(name, safe='')}", GLOBAL_KEY)

    assert response.status_code == 404
    assert response.get_json() == {
        "statusCode": 404, "error": "Not Found", "message": f'The "{name}" instance does not exist',
    }


@pytest.mark.parametrize("name", INVALID_PATH_NAMES)
def test_invalid_path_name_token_403(api, pair, name):
    response = api.request("GET", f"/instance/connectionState/{quote(name, safe='')}", pair["victim_token"])

    assert response.status_code == 403
    assert response.get_json() == FORBIDDEN


def test_path_name_case_sensitive(api, pair):
    upper = VICTIM.upper()

    by_global = api.request("GET", f"/instance/connectionState/{upper}", GLOBAL_KEY)
    by_token = api.request("GET", f"/instance/connectionState/{upper}", pair["victim_token"])

    assert by_global.status_code == 404
    assert by_global.get_json()["message"] == f'The "{upper}" instance does not exist'
    assert by_token.status_code == 403


@pytest.mark.parametrize("key", [None, UNKNOWN_KEY], ids=["no key", "unknown key"])
@pytest.mark.parametrize("path", ["/", "/health/live", "/health/ready"])
def test_public_route_needs_no_key(api, caplog, path, key):
    caplog.set_level(logging.WARNING)

    response = api.request("GET", path, key)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert not [record for record in caplog.records if "Authentication failed" in record.getMessage()]


def test_welcome_answer_shape(api):
    response = api.request("GET", "/")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == 200
    assert isinstance(body["message"], str)
    assert isinstance(body["version"], str)


SAFE_REQUEST_IDS = ["abc", "req-123", "A.b_c~d:e@f+g/h=i-j", "x" * 128, "0"]
UNSAFE_REQUEST_IDS = ["", "has space", "x" * 129, "<script>", "semi;colon", "tab\tid", "ümlaut", "comma,id", "back\\slash"]


@pytest.mark.parametrize("request_id", SAFE_REQUEST_IDS)
def test_safe_request_id_echoed(api, pair, request_id):
    for key, expected in [(None, 401), (GLOBAL_KEY, 200)]:
        response = api.request("GET", f"/instance/connectionState/{VICTIM}", key, headers={"X-Request-ID": request_id})

        assert response.status_code == expected
        assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize("request_id", UNSAFE_REQUEST_IDS)
def test_unsafe_request_id_replaced(api, pair, request_id):
    for key, expected in [(None, 401), (GLOBAL_KEY, 200)]:
        response = api.request("GET", f"/instance/connectionState/{VICTIM}", key, headers={"X-Request-ID": request_id})

        assert response.status_code == expected
        replacement = response.headers.get("X-Request-ID", "")
        assert replacement != request_id
        assert REQUEST_ID_PATTERN.fullmatch(replacement)


@pytest.mark.parametrize(("method", "path"), [("GET", "/health/live"), ("GET", "/nope"), ("GET", "/instance/create")])
def test_request_id_generated_when_absent(api, method, path):
    first = api.request(method, path)
    second = api.request(method, path)

    assert REQUEST_ID_PATTERN.fullmatch(first.headers.get("X-Request-ID", ""))
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def failure_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "Authentication failed" in record.getMessage()]


def test_missing_key_logged(api, pair, caplog):
    caplog.set_level(logging.INFO)

    response = api.request("GET", f"/instance/connectionState/{VICTIM}", headers={"X-Request-ID": "trace-missing"})

    assert response.status_code == 401
    records = failure_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "reason=missing" in message
    assert "GET" in message
    assert f"/instance/connectionState/{VICTIM}" in message
    assert "127.0.0.1" in message
    assert "trace-missing" in message


def test_unknown_key_logged_without_key(api, pair, caplog):
    caplog.set_level(logging.INFO)

    response = api.request("POST", f"/instance/restart/{VICTIM}", UNKNOWN_KEY, headers={"X-Request-ID": "trace-unknown"})

    assert response.status_code == 401
    records = failure_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "reason=unknown" in records[0].getMessage()
    assert "trace-unknown" in records[0].getMessage()
    assert UNKNOWN_KEY not in caplog.text


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/instance/connectionState/{VICTIM}"),
    ("POST", "/instance/create"),
    ("GET", f"/instance/fetchInstances?instanceName={VICTIM}"),
])
def test_forbidden_logged_without_token(api, pair, caplog, method, path):
    caplog.set_level(logging.INFO)

    response = api.request(method, path, pair["bystander_token"], json={"instanceName": "x1"} if method == "POST" else None)

    assert response.status_code == 403
    records = failure_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "reason=forbidden" in records[0].getMessage()
    assert pair["bystander_token"] not in caplog.text


def test_no_key_in_any_log_line(api, pair, caplog):
    caplog.set_level(logging.DEBUG)
    keys = [GLOBAL_KEY, pair["victim_token"], pair["bystander_token"], UNKNOWN_KEY]

    for key in keys:
        for route in ROUTES:
            api.request(route.method, route.url(VICTIM), key, json=route.body)

    for key in keys:
        assert key not in caplog.text


def test_successful_request_not_logged_as_failure(api, pair, caplog):
    caplog.set_level(logging.INFO)

    response = api.request("GET", f"/instance/connectionState/{VICTIM}", pair["victim_token"])

    assert response.status_code == 200
    assert failure_records(caplog) == []
