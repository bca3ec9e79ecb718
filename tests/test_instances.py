"""Instance lifecycle and listing through the test client: create, list, state changes,
token rotation, delete, and sending text."""

import hashlib
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app import create_app
from database import upgrade_schema
from models import Instance, Message, db
from tests.conftest import GLOBAL_KEY, Api, app_settings

TOKEN_PATTERN = re.compile(r"[0-9A-F]{32}")
CUSTOM_TOKEN = "custom-token-5d1e8a7c3b9f2046"
OTHER_CUSTOM_TOKEN = "other-token-9e8d7c6b5a493827"
RECIPIENT = "5511987654321"
DEFAULT_SETTINGS = {
    "rejectCall": False, "msgCall": "", "groupsIgnore": False, "alwaysOnline": False,
    "readMessages": False, "readStatus": False, "syncFullHistory": False,
}
CUSTOM_SETTINGS = {
    "rejectCall": True, "msgCall": "Calls are not answered here.", "groupsIgnore": True, "alwaysOnline": True,
    "readMessages": True, "readStatus": True, "syncFullHistory": True,
}
LISTED_FIELDS = {"id", "name", "connectionStatus", "integration", "number", "ownerJid", "profileName",
                 "profilePicUrl", "settings", "createdAt", "updatedAt"}
SECRET_FIELD_NAMES = {"token", "hash", "apikey", "apiKey", "tokenDigest", "token_digest", "digest"}


def table_counts(app) -> tuple[int, int]:
    """Return the number of rows in the instances and messages tables."""
    with app.app_context():
        instances = db.session.scalar(select(func.count()).select_from(Instance))
        messages = db.session.scalar(select(func.count()).select_from(Message))
    return instances, messages


def messages_of(app, public_id: str) -> list[Message]:
    """Return the stored messages of the instance with this id, detached from the session."""
    with app.app_context():
        rows = db.session.scalars(
            select(Message).join(Instance).where(Instance.public_id == public_id).order_by(Message.pk)
        ).all()
        db.session.expunge_all()
    return list(rows)


def state_of(api, name: str) -> str:
    response = api.request("GET", f"/instance/connectionState/{name}", GLOBAL_KEY)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["instance"]["state"]


def fetch(api, key: str = GLOBAL_KEY, query: str = ""):
    return api.request("GET", f"/instance/fetchInstances{query}", key)


def parse_utc(value: str) -> datetime:
    """Parse an ISO 8601 timestamp that must carry a UTC offset of zero."""
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def send_text(api, name: str, key: str, text: str = "hello", number: str = RECIPIENT):
    return api.request("POST", f"/message/sendText/{name}", key, json={"number": number, "text": text})


def test_create_answer_shape(api):
    response = api.create("shop1")

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"instance", "hash", "settings"}
    assert set(body["instance"]) == {"instanceName", "instanceId", "integration", "status"}
    assert body["instance"]["instanceName"] == "shop1"
    assert str(uuid.UUID(body["instance"]["instanceId"])) == body["instance"]["instanceId"]
    assert body["instance"]["integration"] == "EVOLUTION"
    assert body["instance"]["status"] == "open"
    assert TOKEN_PATTERN.fullmatch(body["hash"])
    assert body["settings"] == DEFAULT_SETTINGS


def test_create_answer_not_cached(api):
    response = api.create("shop1")

    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"


def test_generated_tokens_differ(api):
    tokens = {api.create_instance(f"shop{index}")[1] for index in range(5)}

    assert len(tokens) == 5


def test_generated_token_works(api):
    _, token = api.create_instance("shop1")

    response = api.request("GET", "/instance/connectionState/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}


@pytest.mark.parametrize("integration", ["EVOLUTION", None])
def test_integration_defaults_to_evolution(api, integration):
    response = api.create("shop1", integration=integration)

    assert response.status_code == 201
    assert response.get_json()["instance"]["integration"] == "EVOLUTION"
    assert fetch(api).get_json()[0]["integration"] == "EVOLUTION"


@pytest.mark.parametrize("qrcode", [True, False, None])
def test_qrcode_accepted_without_effect(api, qrcode):
    response = api.create("shop1", qrcode=qrcode)

    assert response.status_code == 201
    assert response.get_json()["instance"]["status"] == "open"


def test_settings_stored_and_returned(api):
    response = api.create("shop1", **CUSTOM_SETTINGS)

    assert response.status_code == 201
    assert response.get_json()["settings"] == CUSTOM_SETTINGS
    assert fetch(api).get_json()[0]["settings"] == CUSTOM_SETTINGS


def test_null_settings_keep_defaults(api):
    response = api.create("shop1", **{field: None for field in DEFAULT_SETTINGS})

    assert response.status_code == 201
    assert response.get_json()["settings"] == DEFAULT_SETTINGS


def test_partial_settings_keep_other_defaults(api):
    response = api.create("shop1", readMessages=True, msgCall="busy")

    assert response.status_code == 201
    assert response.get_json()["settings"] == {**DEFAULT_SETTINGS, "readMessages": True, "msgCall": "busy"}


@pytest.mark.parametrize("number", ["5511912345678", "12345678", "123456789012345"])
def test_number_gives_owner_jid(api, number):
    api.create_instance("shop1", number=number)

    listed = fetch(api).get_json()[0]

    assert listed["number"] == number
    assert listed["ownerJid"] == f"{number}@s.whatsapp.net"


@pytest.mark.parametrize("fields", [{}, {"number": ""}, {"number": None}], ids=["absent", "empty", "null"])
def test_no_number_no_owner_jid(api, fields):
    api.create_instance("shop1", **fields)

    listed = fetch(api).get_json()[0]

    assert listed["number"] is None
    assert listed["ownerJid"] is None


def test_listing_fields(api):
    body, _ = api.create_instance("shop1", number="5511912345678")

    response = fetch(api)

    assert response.status_code == 200
    listed = response.get_json()
    assert len(listed) == 1
    assert set(listed[0]) == LISTED_FIELDS
    assert listed[0]["id"] == body["instance"]["instanceId"]
    assert listed[0]["name"] == "shop1"
    assert listed[0]["connectionStatus"] == "open"
    assert listed[0]["integration"] == "EVOLUTION"
    assert listed[0]["settings"] == DEFAULT_SETTINGS


def test_listing_timestamps_iso_utc(api):
    before = datetime.now(timezone.utc)
    api.create_instance("shop1")
    after = datetime.now(timezone.utc)

    listed = fetch(api).get_json()[0]

    created = parse_utc(listed["createdAt"])
    updated = parse_utc(listed["updatedAt"])
    # The listing may round to milliseconds, so allow one millisecond either side.
    assert before - timedelta(milliseconds=1) <= created <= after + timedelta(milliseconds=1)
    assert updated >= created


def test_listing_has_no_secret(api):
    tokens = [api.create_instance("shop1", token=CUSTOM_TOKEN)[1], api.create_instance("shop2")[1]]

    response = fetch(api)

    assert response.status_code == 200
    text = response.get_data(as_text=True)
    for token in tokens:
        assert token not in text
        assert hashlib.sha256(token.encode()).hexdigest() not in text
        assert hashlib.sha256(token.encode()).hexdigest().upper() not in text
    for listed in response.get_json():
        assert not SECRET_FIELD_NAMES & set(listed)
        assert not SECRET_FIELD_NAMES & set(listed["settings"])


def test_own_listing_has_no_secret(api):
    _, token = api.create_instance("shop1")

    response = fetch(api, token)

    assert response.status_code == 200
    assert token not in response.get_data(as_text=True)
    assert hashlib.sha256(token.encode()).hexdigest() not in response.get_data(as_text=True)
    assert not SECRET_FIELD_NAMES & set(response.get_json()[0])


def test_listing_in_creation_order(api):
    names = ["charlie", "alpha", "bravo", "Zulu", "0first"]
    for name in names:
        api.create_instance(name)

    response = fetch(api)

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == names


def test_listing_empty_without_instances(api):
    response = fetch(api)

    assert response.status_code == 200
    assert response.get_json() == []


@pytest.fixture
def trio(api):
    """Create three instances and return their ids by name."""
    return {name: api.create_instance(name)[0]["instance"]["instanceId"] for name in ("shop1", "shop2", "shop3")}


def test_filter_by_name(api, trio):
    response = fetch(api, query="?instanceName=shop2")

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == ["shop2"]


def test_filter_by_id(api, trio):
    response = fetch(api, query=f"?instanceId={trio['shop3']}")

    assert response.status_code == 200
    assert [listed["id"] for listed in response.get_json()] == [trio["shop3"]]


def test_filter_by_name_and_id(api, trio):
    response = fetch(api, query=f"?instanceName=shop1&instanceId={trio['shop1']}")

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == ["shop1"]


def test_filters_must_both_match(api, trio):
    response = fetch(api, query=f"?instanceName=shop1&instanceId={trio['shop2']}")

    assert response.status_code == 404
    assert response.get_json()["message"] in {'Instance "shop1" not found', f'Instance "{trio["shop2"]}" not found'}


@pytest.mark.parametrize("query", ["?instanceName=", "?instanceId=", "?instanceName=&instanceId="])
def test_empty_filter_counts_as_absent(api, trio, query):
    response = fetch(api, query=query)

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == ["shop1", "shop2", "shop3"]


def test_empty_name_with_id_filters_by_id(api, trio):
    response = fetch(api, query=f"?instanceName=&instanceId={trio['shop2']}")

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == ["shop2"]


@pytest.mark.parametrize("name", ["ghost", "SHOP1", "shop", "shop1 "])
def test_filter_unknown_name_404(api, trio, name):
    response = fetch(api, query=f"?instanceName={name.replace(' ', '%20')}")

    assert response.status_code == 404
    assert response.get_json() == {"statusCode": 404, "error": "Not Found", "message": f'Instance "{name}" not found'}


def test_filter_unknown_id_404(api, trio):
    missing = str(uuid.uuid4())

    response = fetch(api, query=f"?instanceId={missing}")

    assert response.status_code == 404
    assert response.get_json()["message"] == f'Instance "{missing}" not found'


def test_token_lists_only_own(api, trio):
    _, token = api.create_instance("own-shop")

    response = fetch(api, token)

    assert response.status_code == 200
    assert [listed["name"] for listed in response.get_json()] == ["own-shop"]


def test_token_filters_own_instance(api, trio):
    body, token = api.create_instance("own-shop")
    own_id = body["instance"]["instanceId"]

    for query in ("?instanceName=own-shop", f"?instanceId={own_id}", f"?instanceName=own-shop&instanceId={own_id}",
                  "?instanceName="):
        response = fetch(api, token, query)

        assert response.status_code == 200
        assert [listed["id"] for listed in response.get_json()] == [own_id]


@pytest.mark.parametrize("filter_kind", ["other name", "other id", "missing name", "missing id", "own name other id"])
def test_token_filtering_another_403(api, trio, filter_kind):
    _, token = api.create_instance("own-shop")
    query = {
        "other name": "?instanceName=shop1",
        "other id": f"?instanceId={trio['shop1']}",
        "missing name": "?instanceName=ghost",
        "missing id": f"?instanceId={uuid.uuid4()}",
        "own name other id": f"?instanceName=own-shop&instanceId={trio['shop2']}",
    }[filter_kind]

    response = fetch(api, token, query)

    assert response.status_code == 403
    assert response.get_json() == {"statusCode": 403, "error": "Forbidden", "message": "Forbidden"}


@pytest.fixture
def hidden_api(backend, databases, tmp_path):
    """An app with AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=false on its own empty database."""
    settings = app_settings(databases.create(backend), AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES="false")
    hidden_app = create_app(settings, instance_path=str(tmp_path / "instance"))
    upgrade_schema(hidden_app)
    yield Api(hidden_app.test_client())
    with hidden_app.app_context():
        db.engine.dispose()


def test_hidden_listing_empty_without_filter(hidden_api):
    hidden_api.create_instance("shop1")
    hidden_api.create_instance("shop2")

    for query in ("", "?instanceName=", "?instanceId=", "?instanceName=&instanceId="):
        response = fetch(hidden_api, query=query)

        assert response.status_code == 200
        assert response.get_json() == []


def test_hidden_listing_shows_named_instance(hidden_api):
    hidden_api.create_instance("shop1")
    second, _ = hidden_api.create_instance("shop2")
    second_id = second["instance"]["instanceId"]

    by_name = fetch(hidden_api, query="?instanceName=shop2")
    by_id = fetch(hidden_api, query=f"?instanceId={second_id}")

    assert by_name.status_code == 200
    assert [listed["id"] for listed in by_name.get_json()] == [second_id]
    assert by_id.status_code == 200
    assert [listed["name"] for listed in by_id.get_json()] == ["shop2"]
    assert set(by_id.get_json()[0]) == LISTED_FIELDS


def test_hidden_listing_unknown_name_404(hidden_api):
    hidden_api.create_instance("shop1")

    response = fetch(hidden_api, query="?instanceName=ghost")

    assert response.status_code == 404
    assert response.get_json()["message"] == 'Instance "ghost" not found'


def test_hidden_listing_token_sees_own(hidden_api):
    hidden_api.create_instance("shop1")
    _, token = hidden_api.create_instance("shop2")

    own = fetch(hidden_api, token)
    other = fetch(hidden_api, token, "?instanceName=shop1")

    assert own.status_code == 200
    assert [listed["name"] for listed in own.get_json()] == ["shop2"]
    assert other.status_code == 403


def test_connection_state_starts_open(api):
    _, token = api.create_instance("shop1")

    response = api.request("GET", "/instance/connectionState/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}


def test_logout_closes_instance(api):
    _, token = api.create_instance("shop1")

    response = api.request("DELETE", "/instance/logout/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"status": "SUCCESS", "error": False, "response": {"message": "Instance logged out"}}
    assert state_of(api, "shop1") == "close"
    assert fetch(api).get_json()[0]["connectionStatus"] == "close"


def test_logout_twice_already_disconnected(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = api.request("DELETE", "/instance/logout/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "SUCCESS", "error": False, "response": {"message": "Instance was already disconnected"},
    }
    assert state_of(api, "shop1") == "close"


def test_logout_keeps_instance_and_token(api):
    _, token = api.create_instance("shop1")

    api.request("DELETE", "/instance/logout/shop1", token)

    assert api.request("GET", "/instance/connectionState/shop1", token).status_code == 200
    assert [listed["name"] for listed in fetch(api).get_json()] == ["shop1"]


def test_logout_leaves_other_instances_open(api):
    api.create_instance("shop1")
    api.create_instance("shop2")

    api.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY)

    assert state_of(api, "shop2") == "open"


def test_connect_opens_closed_instance(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = api.request("GET", "/instance/connect/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}
    assert state_of(api, "shop1") == "open"


def test_connect_keeps_open_instance_open(api):
    _, token = api.create_instance("shop1")

    response = api.request("GET", "/instance/connect/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}


def test_restart_keeps_open_instance_open(api):
    _, token = api.create_instance("shop1")

    response = api.request("POST", "/instance/restart/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}
    assert state_of(api, "shop1") == "open"


def test_restart_keeps_closed_instance_closed(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = api.request("POST", "/instance/restart/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "close"}}
    assert state_of(api, "shop1") == "close"


@pytest.mark.parametrize("presence", ["available", "unavailable", "composing", "recording", "paused"])
def test_set_presence_echoes_presence(api, presence):
    _, token = api.create_instance("shop1")

    response = api.request("POST", "/instance/setPresence/shop1", token, json={"presence": presence})

    assert response.status_code == 201
    assert response.get_json() == {"presence": presence}


def test_set_presence_on_closed_instance(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = api.request("POST", "/instance/setPresence/shop1", token, json={"presence": "unavailable"})

    assert response.status_code == 201
    assert response.get_json() == {"presence": "unavailable"}
    assert state_of(api, "shop1") == "close"


@pytest.mark.parametrize("caller", ["global key", "own token"])
def test_rotate_generates_new_token(api, caller):
    created, old_token = api.create_instance("shop1")

    response = api.request("POST", "/instance/rotateToken/shop1", GLOBAL_KEY if caller == "global key" else old_token)

    assert response.status_code == 200
    body = response.get_json()
    assert body["instance"] == created["instance"]
    assert TOKEN_PATTERN.fullmatch(body["hash"])
    assert body["hash"] != old_token
    assert response.headers["Cache-Control"] == "no-store"


def test_rotate_old_token_fails_at_once(api):
    _, old_token = api.create_instance("shop1")

    new_token = api.request("POST", "/instance/rotateToken/shop1", old_token).get_json()["hash"]

    assert api.request("GET", "/instance/connectionState/shop1", old_token).status_code == 401
    assert api.request("GET", "/instance/connectionState/shop1", new_token).status_code == 200
    assert fetch(api, old_token).status_code == 401


def test_rotate_to_custom_token(api):
    _, old_token = api.create_instance("shop1")

    response = api.request("POST", "/instance/rotateToken/shop1", GLOBAL_KEY, json={"token": CUSTOM_TOKEN})

    assert response.status_code == 200
    assert response.get_json()["hash"] == CUSTOM_TOKEN
    assert response.headers["Cache-Control"] == "no-store"
    assert api.request("GET", "/instance/connectionState/shop1", CUSTOM_TOKEN).status_code == 200
    assert api.request("GET", "/instance/connectionState/shop1", old_token).status_code == 401


@pytest.mark.parametrize("body", [{"token": ""}, {"token": None}, {}], ids=["empty", "null", "absent"])
def test_rotate_without_custom_token_generates(api, body):
    api.create_instance("shop1")

    response = api.request("POST", "/instance/rotateToken/shop1", GLOBAL_KEY, json=body)

    assert response.status_code == 200
    assert TOKEN_PATTERN.fullmatch(response.get_json()["hash"])


def test_rotate_keeps_state_and_settings(api):
    api.create_instance("shop1", readMessages=True, number="5511912345678")
    api.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY)

    response = api.request("POST", "/instance/rotateToken/shop1", GLOBAL_KEY)

    assert response.status_code == 200
    assert response.get_json()["instance"]["status"] == "close"
    listed = fetch(api).get_json()[0]
    assert listed["settings"]["readMessages"] is True
    assert listed["ownerJid"] == "5511912345678@s.whatsapp.net"


def test_rotate_clash_with_other_token(api, app):
    _, first_token = api.create_instance("shop1")
    _, second_token = api.create_instance("shop2", token=OTHER_CUSTOM_TOKEN)

    response = api.request("POST", "/instance/rotateToken/shop1", GLOBAL_KEY, json={"token": OTHER_CUSTOM_TOKEN})

    assert response.status_code == 400
    assert response.get_json() == {"statusCode": 400, "error": "Bad Request", "message": "Token already exists"}
    assert api.request("GET", "/instance/connectionState/shop1", first_token).status_code == 200
    owned = api.request("GET", "/instance/connectionState/shop2", second_token)
    assert owned.get_json()["instance"]["instanceName"] == "shop2"


def test_rotate_clash_with_generated_token(api):
    _, first_token = api.create_instance("shop1")
    _, second_token = api.create_instance("shop2")

    response = api.request("POST", "/instance/rotateToken/shop2", GLOBAL_KEY, json={"token": first_token})

    assert response.status_code == 400
    assert response.get_json()["message"] == "Token already exists"
    assert api.request("GET", "/instance/connectionState/shop2", second_token).status_code == 200


def test_rotate_clash_with_global_key(api):
    _, token = api.create_instance("shop1")

    response = api.request("POST", "/instance/rotateToken/shop1", token, json={"token": GLOBAL_KEY})

    assert response.status_code == 400
    assert response.get_json() == {"statusCode": 400, "error": "Bad Request", "message": "Token already exists"}
    assert api.request("GET", "/instance/connectionState/shop1", token).status_code == 200


def test_create_with_custom_token(api):
    response = api.create("shop1", token=CUSTOM_TOKEN)

    assert response.status_code == 201
    assert response.get_json()["hash"] == CUSTOM_TOKEN
    assert api.request("GET", "/instance/connectionState/shop1", CUSTOM_TOKEN).status_code == 200


@pytest.mark.parametrize("token", ["", None], ids=["empty", "null"])
def test_create_without_custom_token_generates(api, token):
    response = api.create("shop1", token=token)

    assert response.status_code == 201
    assert TOKEN_PATTERN.fullmatch(response.get_json()["hash"])


def test_create_token_clash_with_other_token(api, app):
    api.create_instance("shop1", token=CUSTOM_TOKEN)
    before = table_counts(app)

    response = api.create("shop2", token=CUSTOM_TOKEN)

    assert response.status_code == 400
    assert response.get_json() == {"statusCode": 400, "error": "Bad Request", "message": "Token already exists"}
    assert table_counts(app) == before


def test_create_token_clash_with_global_key(api, app):
    response = api.create("shop1", token=GLOBAL_KEY)

    assert response.status_code == 400
    assert response.get_json() == {"statusCode": 400, "error": "Bad Request", "message": "Token already exists"}
    assert table_counts(app) == (0, 0)


def test_duplicate_name_409(api, app):
    first, token = api.create_instance("shop1")
    before = table_counts(app)

    response = api.create("shop1", token=CUSTOM_TOKEN)

    assert response.status_code == 409
    assert response.get_json() == {
        "statusCode": 409, "error": "Conflict", "message": 'This name "shop1" is already in use.',
    }
    assert table_counts(app) == before
    assert api.request("GET", "/instance/connectionState/shop1", token).status_code == 200
    assert api.request("GET", "/instance/connectionState/shop1", CUSTOM_TOKEN).status_code == 401


def test_duplicate_name_and_token_409(api):
    api.create_instance("shop1", token=CUSTOM_TOKEN)

    response = api.create("shop1", token=CUSTOM_TOKEN)

    assert response.status_code == 409
    assert response.get_json()["message"] == 'This name "shop1" is already in use.'


def test_names_case_sensitive(api):
    api.create_instance("shop1")

    response = api.create("Shop1")

    assert response.status_code == 201
    assert [listed["name"] for listed in fetch(api).get_json()] == ["shop1", "Shop1"]


@pytest.mark.parametrize("name", ["a", "A" * 64, "0shop", "shop_1.test-2", "9"])
def test_name_rule_accepts_valid_names(api, name):
    response = api.create(name)

    assert response.status_code == 201
    assert response.get_json()["instance"]["instanceName"] == name
    assert state_of(api, name) == "open"


def test_delete_removes_instance(api):
    _, token = api.create_instance("shop1")

    response = api.request("DELETE", "/instance/delete/shop1", token)

    assert response.status_code == 200
    assert response.get_json() == {"status": "SUCCESS", "error": False, "response": {"message": "Instance deleted"}}
    assert fetch(api).get_json() == []
    missing = api.request("GET", "/instance/connectionState/shop1", GLOBAL_KEY)
    assert missing.status_code == 404
    assert missing.get_json()["message"] == 'The "shop1" instance does not exist'


def test_delete_token_fails_at_once(api):
    _, token = api.create_instance("shop1")

    api.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)

    assert api.request("GET", "/instance/connectionState/shop1", token).status_code == 401
    assert fetch(api, token).status_code == 401


def test_delete_removes_messages(api, app):
    deleted, token = api.create_instance("shop1")
    surviving, surviving_token = api.create_instance("shop2")
    for text in ("one", "two", "three"):
        assert send_text(api, "shop1", token, text).status_code == 201
    assert send_text(api, "shop2", surviving_token, "survives").status_code == 201

    response = api.request("DELETE", "/instance/delete/shop1", token)

    assert response.status_code == 200
    assert messages_of(app, deleted["instance"]["instanceId"]) == []
    assert [message.text for message in messages_of(app, surviving["instance"]["instanceId"])] == ["survives"]
    assert table_counts(app) == (1, 1)


def test_delete_twice_404(api):
    api.create_instance("shop1")
    api.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)

    response = api.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)

    assert response.status_code == 404
    assert response.get_json()["message"] == 'The "shop1" instance does not exist'


def test_deleted_name_created_again(api, app):
    old, old_token = api.create_instance("shop1")
    assert send_text(api, "shop1", old_token).status_code == 201
    api.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)

    new, new_token = api.create_instance("shop1")

    assert new["instance"]["instanceId"] != old["instance"]["instanceId"]
    assert new_token != old_token
    assert api.request("GET", "/instance/connectionState/shop1", old_token).status_code == 401
    assert api.request("GET", "/instance/connectionState/shop1", new_token).status_code == 200
    assert messages_of(app, new["instance"]["instanceId"]) == []


def test_deleted_custom_token_reusable(api):
    api.create_instance("shop1", token=CUSTOM_TOKEN)
    api.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)

    response = api.create("shop2", token=CUSTOM_TOKEN)

    assert response.status_code == 201
    owned = api.request("GET", "/instance/connectionState/shop2", CUSTOM_TOKEN)
    assert owned.status_code == 200
    assert api.request("GET", "/instance/connectionState/shop1", CUSTOM_TOKEN).status_code == 403


def test_send_text_answer_shape(api):
    created, token = api.create_instance("shop1")
    before = int(time.time())

    response = send_text(api, "shop1", token, "hello")

    after = int(time.time())
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"key", "status", "message", "messageType", "messageTimestamp", "instanceId"}
    assert body["key"]["remoteJid"] == f"{RECIPIENT}@s.whatsapp.net"
    assert body["key"]["fromMe"] is True
    assert isinstance(body["key"]["id"], str)
    assert body["key"]["id"]
    assert body["status"] == "PENDING"
    assert body["message"] == {"conversation": "hello"}
    assert body["messageType"] == "conversation"
    assert before <= body["messageTimestamp"] <= after
    assert body["instanceId"] == created["instance"]["instanceId"]


def test_send_text_stores_row(api, app):
    created, token = api.create_instance("shop1")

    body = send_text(api, "shop1", token, "stored text").get_json()

    stored = messages_of(app, created["instance"]["instanceId"])
    assert len(stored) == 1
    assert stored[0].key_id == body["key"]["id"]
    assert stored[0].remote_jid == f"{RECIPIENT}@s.whatsapp.net"
    assert stored[0].from_me is True
    assert stored[0].text == "stored text"
    assert stored[0].status == "PENDING"
    assert stored[0].message_type == "conversation"
    assert stored[0].message_timestamp == body["messageTimestamp"]


def test_send_text_ids_unique(api):
    _, token = api.create_instance("shop1")

    ids = {send_text(api, "shop1", token, f"message {index}").get_json()["key"]["id"] for index in range(5)}

    assert len(ids) == 5


def test_send_text_with_global_key(api, app):
    created, _ = api.create_instance("shop1")

    response = send_text(api, "shop1", GLOBAL_KEY)

    assert response.status_code == 201
    assert response.get_json()["instanceId"] == created["instance"]["instanceId"]
    assert len(messages_of(app, created["instance"]["instanceId"])) == 1


def test_send_text_delay_does_not_wait(api, app):
    created, token = api.create_instance("shop1")
    started = time.monotonic()

    response = api.request("POST", "/message/sendText/shop1", token,
                           json={"number": RECIPIENT, "text": "later", "delay": 300_000})

    assert response.status_code == 201
    assert time.monotonic() - started < 10
    assert response.get_json()["status"] == "PENDING"
    assert len(messages_of(app, created["instance"]["instanceId"])) == 1


def test_send_text_on_closed_instance_400(api, app):
    created, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = send_text(api, "shop1", token)

    assert response.status_code == 400
    assert response.get_json() == {
        "statusCode": 400, "error": "Bad Request", "message": 'The "shop1" instance is not connected',
    }
    assert messages_of(app, created["instance"]["instanceId"]) == []


def test_send_text_after_reconnect(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)
    api.request("GET", "/instance/connect/shop1", token)

    response = send_text(api, "shop1", token)

    assert response.status_code == 201


def test_closed_instance_validates_body_first(api):
    _, token = api.create_instance("shop1")
    api.request("DELETE", "/instance/logout/shop1", token)

    response = api.request("POST", "/message/sendText/shop1", token, json={"number": RECIPIENT, "text": ""})

    assert response.status_code == 400
    assert "text" in response.get_json()["message"]


def test_listing_dump_matches_schema(app, api):
    """fetchInstances' hand-written dump gives exactly what InstanceSchema gives, key order included."""
    from models import INSTANCE_LISTING_COLUMNS, listing_values
    from schemas import dump_instance_listing, instances_schema

    api.create_instance("listed-plain")
    api.create_instance("listed-custom", number="5511912345678", **CUSTOM_SETTINGS)
    with app.app_context():
        objects = list(db.session.scalars(select(Instance).order_by(Instance.pk)))
        rows = list(db.session.execute(select(*INSTANCE_LISTING_COLUMNS).order_by(Instance.pk)))
        expected = instances_schema.dump(objects)
        assert len(expected) == 2
        assert dump_instance_listing([listing_values(instance) for instance in objects]) == expected
        assert dump_instance_listing(rows) == expected
        assert [list(entry) for entry in dump_instance_listing(rows)] == [list(entry) for entry in expected]
        assert [list(entry["settings"]) for entry in dump_instance_listing(rows)] == [
            list(entry["settings"]) for entry in expected
        ]


def test_listing_in_chunks_matches_whole(app, api, monkeypatch):
    """A listing longer than one chunk is streamed, with the same bytes as a listing sent whole."""
    import instances
    import routes.instances

    for index in range(5):
        api.create_instance(f"chunked-{index}")
    whole = api.request("GET", "/instance/fetchInstances", GLOBAL_KEY)
    monkeypatch.setattr(routes.instances, "LISTING_CHUNK_SIZE", 2)
    monkeypatch.setattr(instances, "LISTING_BATCH_SIZE", 3)
    chunked = api.request("GET", "/instance/fetchInstances", GLOBAL_KEY)

    assert whole.status_code == 200
    assert chunked.status_code == 200
    assert chunked.is_streamed
    assert chunked.mimetype == "application/json"
    assert len(whole.get_json()) == 5
    assert chunked.get_data() == whole.get_data()
