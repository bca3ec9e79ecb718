"""Bad input: every body field of create, rotateToken, setPresence and sendText, and the body rules.

Each rejected request gets a 400 in the shared error shape whose message names the field,
and it writes nothing: the row counts of both tables and the instance's stored columns stay
as they were.
"""

import json

import pytest
from sqlalchemy import func, select

from models import Instance, Message, db
from tests.conftest import GLOBAL_KEY

EXISTING = "existing-shop"
FRESH = "fresh-shop"
RECIPIENT = "5511987654321"
ONE_MIB = 1024 * 1024
CUSTOM_TOKEN = "custom-token-7f3a9c2e4b6d8f10"


def table_counts(app) -> tuple[int, int]:
    """Return the number of rows in the instances and messages tables."""
    with app.app_context():
        instances = db.session.scalar(select(func.count()).select_from(Instance))
        messages = db.session.scalar(select(func.count()).select_from(Message))
    return instances, messages


def stored_instance(app, name: str) -> dict | None:
    """Return every stored column of the named instance, or None when it does not exist."""
    with app.app_context():
        instance = db.session.scalar(select(Instance).where(Instance.name == name))
        if instance is None:
            return None
        return {column.key: getattr(instance, column.key) for column in Instance.__table__.columns}


def stored_messages(app) -> list[tuple]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(select(Message.remote_jid, Message.text)).all()]


def assert_error_shape(response, status: int, reason: str) -> dict:
    """Check the shared JSON error shape and return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["statusCode"] == status
    assert body["error"] == reason
    assert isinstance(body["message"], str)
    assert body["message"]
    assert set(body) <= {"statusCode", "error", "message", "errors"}
    for field, reasons in body.get("errors", {}).items():
        assert isinstance(field, str)
        assert all(isinstance(item, str) for item in reasons)
    return body


def assert_names_field(response, field: str) -> dict:
    body = assert_error_shape(response, 400, "Bad Request")
    assert field in body["message"]
    return body


@pytest.fixture
def existing(api):
    """Create one instance that already has one message, so that both tables hold a row."""
    body, token = api.create_instance(EXISTING, number="5511900001111")
    sent = api.request("POST", f"/message/sendText/{EXISTING}", token, json={"number": RECIPIENT, "text": "first"})
    assert sent.status_code == 201, sent.get_json()
    return {"id": body["instance"]["instanceId"], "token": token}


NOT_BOOLEANS = [("string true", "true"), ("one", 1), ("zero", 0), ("string false", "false"), ("list", [True]),
                ("object", {})]
BOOLEAN_FIELDS = ["qrcode", "rejectCall", "groupsIgnore", "alwaysOnline", "readMessages", "readStatus",
                  "syncFullHistory"]

CREATE_CASES = [
    ("instanceName", "null", None),
    ("instanceName", "number", 123),
    ("instanceName", "list", ["shop"]),
    ("instanceName", "empty", ""),
    ("instanceName", "65 characters", "a" * 65),
    ("instanceName", "leading dash", "-shop"),
    ("instanceName", "leading dot", ".shop"),
    ("instanceName", "leading underscore", "_shop"),
    ("instanceName", "space inside", "my shop"),
    ("instanceName", "surrounding spaces", " shop "),
    ("instanceName", "slash", "shop/one"),
    ("instanceName", "non-ascii letter", "schöp"),
    ("instanceName", "NUL", "shop\x00"),
    ("token", "number", 1234567890123456),
    ("token", "list", [CUSTOM_TOKEN]),
    ("token", "15 characters", "a" * 15),
    ("token", "129 characters", "a" * 129),
    ("token", "space inside", "custom token 1234567890"),
    ("token", "tab inside", "custom\ttoken1234567890"),
    ("token", "non-ascii", "jeton-sécurisé-1234567890"),
    ("token", "control character", "custom-token-\x01-123456"),
    ("integration", "baileys", "WHATSAPP-BAILEYS"),
    ("integration", "business", "WHATSAPP-BUSINESS"),
    ("integration", "lower case", "evolution"),
    ("integration", "surrounding spaces", " EVOLUTION "),
    ("integration", "empty", ""),
    ("integration", "number", 1),
    ("integration", "boolean", True),
    ("number", "7 digits", "1234567"),
    ("number", "16 digits", "1" * 16),
    ("number", "letters", "55119abc1111"),
    ("number", "plus sign", "+5511900002222"),
    ("number", "spaces", "55 11 90000 2222"),
    ("number", "jid", "5511900002222@s.whatsapp.net"),
    ("number", "fullwidth digits", "５５１１９０００２２２２"),
    ("number", "arabic-indic digits", "٥٥١١٩٠٠٠٢٢٢٢"),
    ("number", "json number", 5511900002222),
    ("number", "list", ["5511900002222"]),
    ("msgCall", "number", 123),
    ("msgCall", "boolean", True),
    ("msgCall", "object", {"text": "busy"}),
    ("msgCall", "too long", "a" * 4097),
    ("msgCall", "NUL", "busy\x00now"),
    ("msgCall", "lone surrogate", "busy\ud800now"),
    *[(field, label, value) for field in BOOLEAN_FIELDS for label, value in NOT_BOOLEANS],
]


@pytest.mark.parametrize(("field", "label", "value"), CREATE_CASES, ids=[f"{f}-{label}" for f, label, _ in CREATE_CASES])
def test_create_rejects_bad_field(api, app, existing, field, label, value):
    body = {"instanceName": FRESH, field: value}
    before = table_counts(app)

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json=body)

    assert_names_field(response, field)
    assert table_counts(app) == before
    assert stored_instance(app, FRESH) is None


def test_create_requires_instance_name(api, app, existing):
    before = table_counts(app)

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"token": CUSTOM_TOKEN, "number": "5511900002222"})

    assert_names_field(response, "instanceName")
    assert table_counts(app) == before


def test_name_error_states_rule(api, existing):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": "-shop"})

    body = assert_names_field(response, "instanceName")
    assert "64" in body["message"]
    assert "-shop" in body["message"]


@pytest.mark.parametrize("value", ["WHATSAPP-BAILEYS", "evolution", ""])
def test_integration_error_names_supported_value(api, existing, value):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": FRESH, "integration": value})

    body = assert_names_field(response, "integration")
    assert "EVOLUTION" in body["message"]


@pytest.mark.parametrize("token", [
    "short-token",
    "a" * 129,
    "custom token with spaces 1234",
    "jeton-sécurisé-1234567890",
], ids=["too short", "too long", "white space", "non-ascii"])
def test_create_error_hides_bad_token(api, existing, token):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": FRESH, "token": token})

    assert_names_field(response, "token")
    assert token not in response.get_data(as_text=True)
    assert json.dumps(token)[1:-1] not in response.get_data(as_text=True)


def test_name_error_hides_valid_token(api, existing):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": "-bad", "token": CUSTOM_TOKEN})

    assert_names_field(response, "instanceName")
    assert CUSTOM_TOKEN not in response.get_data(as_text=True)


def test_token_clash_hides_token(api, app, existing):
    before = table_counts(app)

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": FRESH, "token": existing["token"]})

    body = assert_error_shape(response, 400, "Bad Request")
    assert body["message"] == "Token already exists"
    assert existing["token"] not in response.get_data(as_text=True)
    assert table_counts(app) == before


ROTATE_CASES = [
    ("number", 1234567890123456),
    ("list", [CUSTOM_TOKEN]),
    ("object", {"value": CUSTOM_TOKEN}),
    ("boolean", True),
    ("15 characters", "a" * 15),
    ("129 characters", "a" * 129),
    ("space inside", "custom token 1234567890"),
    ("newline inside", "custom-token\n1234567890"),
    ("non-ascii", "jeton-sécurisé-1234567890"),
    ("DEL character", "custom-token-\x7f-123456"),
]


@pytest.mark.parametrize(("label", "value"), ROTATE_CASES, ids=[label for label, _ in ROTATE_CASES])
def test_rotate_rejects_bad_token(api, app, existing, label, value):
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request("POST", f"/instance/rotateToken/{EXISTING}", GLOBAL_KEY, json={"token": value})

    assert_names_field(response, "token")
    if isinstance(value, str):
        assert value not in response.get_data(as_text=True)
    assert stored_instance(app, EXISTING) == before
    assert table_counts(app) == counts
    assert api.request("GET", f"/instance/connectionState/{EXISTING}", existing["token"]).status_code == 200


PRESENCE_CASES = [
    ("null", None),
    ("empty", ""),
    ("unknown value", "online"),
    ("upper case", "AVAILABLE"),
    ("surrounding spaces", " available "),
    ("number", 1),
    ("boolean", True),
    ("list", ["available"]),
]


@pytest.mark.parametrize(("label", "value"), PRESENCE_CASES, ids=[label for label, _ in PRESENCE_CASES])
def test_presence_rejects_bad_value(api, app, existing, label, value):
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request("POST", f"/instance/setPresence/{EXISTING}", existing["token"], json={"presence": value})

    assert_names_field(response, "presence")
    assert stored_instance(app, EXISTING) == before
    assert table_counts(app) == counts


def test_presence_required(api, app, existing):
    before = stored_instance(app, EXISTING)

    response = api.request("POST", f"/instance/setPresence/{EXISTING}", existing["token"], json={"state": "available"})

    assert_names_field(response, "presence")
    assert stored_instance(app, EXISTING) == before


SEND_CASES = [
    ("number", "null", None),
    ("number", "json number", 5511987654321),
    ("number", "list", [RECIPIENT]),
    ("number", "empty", ""),
    ("number", "7 digits", "1234567"),
    ("number", "16 digits", "1" * 16),
    ("number", "letters", "55119abc4321"),
    ("number", "two plus signs", "++5511987654321"),
    ("number", "plus in middle", "55+11987654321"),
    ("number", "other jid domain", "5511987654321@c.us"),
    ("number", "jid with suffix", "5511987654321@s.whatsapp.net.example"),
    ("number", "short jid", "1234567@s.whatsapp.net"),
    ("number", "long jid", "1" * 16 + "@s.whatsapp.net"),
    ("number", "letters in jid", "abc@s.whatsapp.net"),
    ("number", "empty group", "@g.us"),
    ("number", "two dashes in group", "1-2-3@g.us"),
    ("number", "letters in group", "abc@g.us"),
    ("number", "only separators", "() - ."),
    # A WhatsApp JID is made of ASCII digits, so other Unicode digits are not phone numbers.
    ("number", "fullwidth digits", "５５１１９８７６５４３２１"),
    ("number", "arabic-indic digits", "٥٥١١٩٨٧٦٥٤٣٢١"),
    ("number", "arabic-indic jid", "٥٥١١٩٨٧٦٥٤٣٢١@s.whatsapp.net"),
    ("number", "arabic-indic group", "١٢٠٣٦٣٠٢٥٢٤٦١٢٥٤٨٦@g.us"),
    ("text", "null", None),
    ("text", "number", 42),
    ("text", "list", ["hello"]),
    ("text", "object", {"conversation": "hello"}),
    ("text", "empty", ""),
    ("text", "spaces only", "   "),
    ("text", "white space only", "\n\t \r\n"),
    ("text", "4097 characters", "a" * 4097),
    ("text", "4097 emoji", "😀" * 4097),
    ("text", "NUL", "hello\x00world"),
    ("delay", "negative", -1),
    ("delay", "over maximum", 300_001),
    ("delay", "string", "100"),
    ("delay", "decimal", 1.5),
    ("delay", "boolean", True),
    ("delay", "list", [100]),
    ("linkPreview", "string true", "true"),
    ("linkPreview", "one", 1),
    ("linkPreview", "object", {}),
    ("mentionsEveryOne", "string true", "true"),
    ("mentionsEveryOne", "zero", 0),
    ("mentioned", "string", RECIPIENT),
    ("mentioned", "object", {"number": RECIPIENT}),
    ("mentioned", "number item", [5511987654321]),
    ("mentioned", "bad item", ["not-a-number"]),
    ("mentioned", "short item", ["1234567"]),
    ("mentioned", "arabic-indic item", ["٥٥١١٩٨٧٦٥٤٣٢١"]),
    ("quoted", "string", "3EB0ABCDEF"),
    ("quoted", "list", [{"key": {"id": "3EB0ABCDEF"}}]),
    ("quoted", "empty object", {}),
    ("quoted", "key string", {"key": "3EB0ABCDEF"}),
    ("quoted", "empty key", {"key": {}}),
    ("quoted", "empty id", {"key": {"id": ""}}),
    ("quoted", "number id", {"key": {"id": 123}}),
    ("quoted", "null id", {"key": {"id": None}}),
]


@pytest.mark.parametrize(("field", "label", "value"), SEND_CASES, ids=[f"{f}-{label}" for f, label, _ in SEND_CASES])
def test_send_rejects_bad_field(api, app, existing, field, label, value):
    body = {"number": RECIPIENT, "text": "hello", field: value}
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], json=body)

    assert_names_field(response, field)
    assert table_counts(app) == counts
    assert stored_instance(app, EXISTING) == before


@pytest.mark.parametrize("field", ["number", "text"])
def test_send_requires_field(api, app, existing, field):
    body = {"number": RECIPIENT, "text": "hello"}
    del body[field]
    counts = table_counts(app)

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], json=body)

    assert_names_field(response, field)
    assert table_counts(app) == counts


@pytest.mark.parametrize("number", ["1234567", "55119abc4321", "5511987654321@c.us", "1-2-3@g.us"])
def test_number_error_names_value(api, existing, number):
    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], json={"number": number, "text": "hi"})

    body = assert_names_field(response, "number")
    assert number in body["message"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ude00\\ud83d", "a\\ud83db"],
                         ids=["high alone", "low alone", "reversed pair", "high before letter"])
def test_text_rejects_lone_surrogate(api, app, existing, escape):
    counts = table_counts(app)
    raw = '{"number": "%s", "text": "hello %s"}' % (RECIPIENT, escape)

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], data=raw,
                           content_type="application/json")

    assert_names_field(response, "text")
    assert table_counts(app) == counts


def test_text_rejects_escaped_nul(api, app, existing):
    counts = table_counts(app)
    raw = '{"number": "%s", "text": "hello\\u0000world"}' % RECIPIENT

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], data=raw,
                           content_type="application/json")

    assert_names_field(response, "text")
    assert table_counts(app) == counts


def test_msg_call_rejects_escaped_surrogate(api, app, existing):
    counts = table_counts(app)
    raw = '{"instanceName": "%s", "msgCall": "busy \\udc00"}' % FRESH

    response = api.request("POST", "/instance/create", GLOBAL_KEY, data=raw, content_type="application/json")

    assert_names_field(response, "msgCall")
    assert table_counts(app) == counts


TEXT_LIMIT_CASES = {
    "4096 ascii": "a" * 4096,
    "4096 emoji": "😀" * 4096,
    "4095 ascii and one emoji": "a" * 4095 + "😀",
    "4096 mixed scripts": ("ж😀a中" * 1024),
}


@pytest.mark.parametrize("text", TEXT_LIMIT_CASES.values(), ids=TEXT_LIMIT_CASES.keys())
@pytest.mark.parametrize("encoding", ["escaped", "utf-8"])
def test_text_of_4096_code_points_accepted(api, app, existing, text, encoding):
    raw = json.dumps({"number": RECIPIENT, "text": text}, ensure_ascii=encoding == "escaped")

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], data=raw.encode("utf-8"),
                           content_type="application/json")

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["message"]["conversation"] == text
    assert (f"{RECIPIENT}@s.whatsapp.net", text) in stored_messages(app)


@pytest.mark.parametrize("text", ["a" * 4097, "😀" * 4097, "a" * 4096 + "😀", "😀" * 4096 + "a"],
                         ids=["ascii", "emoji", "ascii then emoji", "emoji then ascii"])
@pytest.mark.parametrize("encoding", ["escaped", "utf-8"])
def test_text_of_4097_code_points_rejected(api, app, existing, text, encoding):
    counts = table_counts(app)
    raw = json.dumps({"number": RECIPIENT, "text": text}, ensure_ascii=encoding == "escaped")

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], data=raw.encode("utf-8"),
                           content_type="application/json")

    assert_names_field(response, "text")
    assert table_counts(app) == counts


KEPT_NUMBERS = [
    ("5511987654321", "5511987654321@s.whatsapp.net"),
    # A Brazilian mobile number without the ninth digit stays without it.
    ("551187654321", "551187654321@s.whatsapp.net"),
    # A Mexican mobile number keeps its 1 after the country code.
    ("5215512345678", "5215512345678@s.whatsapp.net"),
    ("+55 (11) 98765-4321", "5511987654321@s.whatsapp.net"),
    ("+1.555.123.4567", "15551234567@s.whatsapp.net"),
    ("0044 20 7946 0958", "00442079460958@s.whatsapp.net"),
    ("12345678", "12345678@s.whatsapp.net"),
    ("123456789012345", "123456789012345@s.whatsapp.net"),
    ("5511987654321@s.whatsapp.net", "5511987654321@s.whatsapp.net"),
    ("551187654321@s.whatsapp.net", "551187654321@s.whatsapp.net"),
    ("120363025246125486@g.us", "120363025246125486@g.us"),
    ("5511987654321-1612345678@g.us", "5511987654321-1612345678@g.us"),
]


@pytest.mark.parametrize(("number", "jid"), KEPT_NUMBERS, ids=[number for number, _ in KEPT_NUMBERS])
def test_number_kept_digit_for_digit(api, app, existing, number, jid):
    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"],
                           json={"number": number, "text": "digits"})

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["key"]["remoteJid"] == jid
    assert (jid, "digits") in stored_messages(app)


def test_send_accepts_every_optional_field(api, app, existing):
    body = {
        "number": RECIPIENT, "text": "all options", "delay": 0, "linkPreview": True, "mentionsEveryOne": False,
        "mentioned": ["5511900003333", "+55 11 90000-4444"], "quoted": {"key": {"id": "3EB0ABCDEF0123456789"}},
    }

    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"], json=body)

    assert response.status_code == 201, response.get_json()
    assert (f"{RECIPIENT}@s.whatsapp.net", "all options") in stored_messages(app)


@pytest.mark.parametrize("delay", [0, 300_000])
def test_delay_bounds_accepted(api, existing, delay):
    response = api.request("POST", f"/message/sendText/{EXISTING}", existing["token"],
                           json={"number": RECIPIENT, "text": "later", "delay": delay})

    assert response.status_code == 201, response.get_json()


def test_create_ignores_unknown_fields(api, app, existing):
    before = table_counts(app)
    body = {
        "instanceName": FRESH, "futureSetting": True, "qrcodeSize": 300, "nested": {"enabled": True},
        "browser": ["evogate", "Chrome", "1"], "rejectCallReason": "busy",
    }

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json=body)

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["instance"]["instanceName"] == FRESH
    assert "futureSetting" not in response.get_json()["settings"]
    assert table_counts(app) == (before[0] + 1, before[1])


def test_other_bodies_ignore_unknown_fields(api, existing):
    token = existing["token"]
    extra = {"futureOption": {"enabled": True}, "priority": 5}

    sent = api.request("POST", f"/message/sendText/{EXISTING}", token, json={"number": RECIPIENT, "text": "x", **extra})
    presence = api.request("POST", f"/instance/setPresence/{EXISTING}", token, json={"presence": "paused", **extra})
    restarted = api.request("POST", f"/instance/restart/{EXISTING}", token, json=extra)
    rotated = api.request("POST", f"/instance/rotateToken/{EXISTING}", token, json=extra)

    assert sent.status_code == 201
    assert presence.status_code == 201
    assert restarted.status_code == 200
    assert rotated.status_code == 200


FEATURE_CASES = [
    ("websocket", {"enabled": True, "events": ["SEND_MESSAGE"]}),
    ("rabbitmq", {"enabled": True}),
    ("nats", {"enabled": True}),
    ("sqs", {"enabled": True}),
    ("kafka", {"enabled": True}),
    ("pusher", {"enabled": True, "appId": "1", "key": "k", "secret": "s", "cluster": "eu"}),
    ("webhook", "https://receiver.example/hook"),
    ("webhookUrl", "https://receiver.example/hook"),
    ("webhook_by_events", True),
    ("webhookByEvents", True),
    ("websocket", True),
    ("rabbitmq", {"enabled": True, "events": []}),
    ("proxyHost", "10.0.0.1"),
    ("proxyPort", "3128"),
    ("proxyProtocol", "http"),
    ("proxyUsername", "user"),
    ("proxyPassword", "secret"),
    ("proxy", {"host": "10.0.0.1", "port": "3128"}),
    ("chatwootAccountId", "1"),
    ("chatwootToken", "abc"),
    ("chatwootUrl", "https://chatwoot.example"),
    ("chatwootSignMsg", True),
    ("chatwootReopenConversation", True),
    ("chatwootImportMessages", True),
    ("chatwootNameInbox", "inbox"),
]


@pytest.mark.parametrize(("field", "value"), FEATURE_CASES, ids=[f"{f}-{json.dumps(v)[:20]}" for f, v in FEATURE_CASES])
def test_unimplemented_feature_rejected(api, app, existing, field, value):
    before = table_counts(app)

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": FRESH, field: value})

    assert_names_field(response, field)
    assert table_counts(app) == before
    assert stored_instance(app, FRESH) is None


FEATURE_FIELDS = ["websocket", "rabbitmq", "nats", "sqs", "kafka", "pusher", "webhook", "proxyHost", "proxyPort",
                  "proxyProtocol", "proxyUsername", "proxyPassword", "proxy", "chatwootAccountId", "chatwootToken",
                  "chatwootUrl", "chatwootSignMsg"]
INERT_VALUES = {"null": None, "empty string": "", "false": False, "empty object": {}, "disabled": {"enabled": False}}


@pytest.mark.parametrize("value", INERT_VALUES.values(), ids=INERT_VALUES.keys())
@pytest.mark.parametrize("field", FEATURE_FIELDS)
def test_inert_feature_value_accepted(api, app, field, value):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, json={"instanceName": FRESH, field: value})

    assert response.status_code == 201, response.get_json()
    assert stored_instance(app, FRESH) is not None


def test_all_inert_features_together_accepted(api):
    body = {"instanceName": FRESH, "websocket": {"enabled": False}, "rabbitmq": {}, "nats": None, "sqs": False,
            "kafka": {"enabled": False}, "pusher": None, "webhook": {}, "proxyHost": "", "proxyPort": "",
            "chatwootAccountId": None, "chatwootSignMsg": False}

    response = api.request("POST", "/instance/create", GLOBAL_KEY, json=body)

    assert response.status_code == 201, response.get_json()


JSON_ROUTES = {
    "create": ("POST", "/instance/create", {"instanceName": FRESH}),
    "sendText": ("POST", f"/message/sendText/{EXISTING}", {"number": RECIPIENT, "text": "hi"}),
    "setPresence": ("POST", f"/instance/setPresence/{EXISTING}", {"presence": "available"}),
    "rotateToken": ("POST", f"/instance/rotateToken/{EXISTING}", {"token": CUSTOM_TOKEN}),
    "restart": ("POST", f"/instance/restart/{EXISTING}", {"reason": "test"}),
}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
@pytest.mark.parametrize("route", JSON_ROUTES.keys())
def test_non_json_content_type_415(api, app, existing, route, content_type):
    method, path, body = JSON_ROUTES[route]
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, data=json.dumps(body), content_type=content_type)

    assert_error_shape(response, 415, "Unsupported Media Type")
    assert table_counts(app) == counts
    assert stored_instance(app, EXISTING) == before


MALFORMED_BODIES = {
    "truncated": '{"instanceName": ',
    "single quotes": "{'instanceName': 'x'}",
    "trailing comma": '{"instanceName": "x",}',
    "NaN": '{"instanceName": "x", "delay": NaN}',
    "Infinity": '{"instanceName": "x", "delay": Infinity}',
    "two objects": '{"instanceName": "x"}{"instanceName": "y"}',
    "bare word": "hello",
}


@pytest.mark.parametrize("raw", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
@pytest.mark.parametrize("route", JSON_ROUTES.keys())
def test_malformed_json_400(api, app, existing, route, raw):
    method, path, _ = JSON_ROUTES[route]
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, data=raw, content_type="application/json")

    assert_error_shape(response, 400, "Bad Request")
    assert table_counts(app) == counts
    assert stored_instance(app, EXISTING) == before


def test_invalid_utf8_body_400(api, app, existing):
    counts = table_counts(app)

    response = api.request("POST", "/instance/create", GLOBAL_KEY, data=b'{"instanceName": "\xff\xfe"}',
                           content_type="application/json")

    assert_error_shape(response, 400, "Bad Request")
    assert table_counts(app) == counts


NOT_OBJECTS = {"array": "[]", "array of object": '[{"instanceName": "x"}]', "string": '"x"', "null": "null",
               "number": "1", "decimal": "1.5", "boolean": "true"}


@pytest.mark.parametrize("raw", NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
@pytest.mark.parametrize("route", JSON_ROUTES.keys())
def test_json_not_object_400(api, app, existing, route, raw):
    method, path, _ = JSON_ROUTES[route]
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, data=raw, content_type="application/json")

    assert_error_shape(response, 400, "Bad Request")
    assert table_counts(app) == counts
    assert stored_instance(app, EXISTING) == before


def padded_body(body: dict, size: int) -> bytes:
    """Return `body` as JSON with an ignored padding field, exactly `size` bytes long."""
    empty = json.dumps({**body, "padding": ""}).encode()
    padded = json.dumps({**body, "padding": "x" * (size - len(empty))}).encode()
    assert len(padded) == size
    return padded


@pytest.mark.parametrize("route", JSON_ROUTES.keys())
def test_body_over_one_mib_413(api, app, existing, route):
    method, path, body = JSON_ROUTES[route]
    before = stored_instance(app, EXISTING)
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, data=padded_body(body, ONE_MIB + 1),
                           content_type="application/json")

    assert_error_shape(response, 413, "Request Entity Too Large")
    assert table_counts(app) == counts
    assert stored_instance(app, EXISTING) == before


def test_body_of_one_mib_accepted(api, app, existing):
    response = api.request("POST", "/instance/create", GLOBAL_KEY, data=padded_body({"instanceName": FRESH}, ONE_MIB),
                           content_type="application/json")

    assert response.status_code == 201, response.get_json()
    assert stored_instance(app, FRESH) is not None


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_empty_body_rotates_token(api, existing, content_type):
    response = api.request("POST", f"/instance/rotateToken/{EXISTING}", GLOBAL_KEY, data=b"", content_type=content_type)

    assert response.status_code == 200, response.get_json()
    new_token = response.get_json()["hash"]
    assert new_token != existing["token"]
    assert api.request("GET", f"/instance/connectionState/{EXISTING}", new_token).status_code == 200


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_empty_body_restarts(api, existing, content_type):
    response = api.request("POST", f"/instance/restart/{EXISTING}", existing["token"], data=b"", content_type=content_type)

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"instance": {"instanceName": EXISTING, "state": "open"}}


@pytest.mark.parametrize("content_type", [None, "application/json"])
@pytest.mark.parametrize("route", ["create", "sendText", "setPresence"])
def test_empty_body_rejected_where_required(api, app, existing, route, content_type):
    method, path, _ = JSON_ROUTES[route]
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, data=b"", content_type=content_type)

    assert_error_shape(response, 400, "Bad Request")
    assert table_counts(app) == counts


@pytest.mark.parametrize("route", ["create", "sendText", "setPresence"])
def test_empty_object_rejected_where_required(api, app, existing, route):
    method, path, _ = JSON_ROUTES[route]
    counts = table_counts(app)

    response = api.request(method, path, GLOBAL_KEY, json={})

    assert_error_shape(response, 400, "Bad Request")
    assert table_counts(app) == counts
