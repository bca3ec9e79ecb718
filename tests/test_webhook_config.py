"""Webhook configuration, the inbound EVOLUTION webhook and findMessages, through the test client.

The test client's app delivers nothing (its delivery worker is off), so these tests look at
what requests store: configurations, messages and the outbox rows in the events table.
"""

import json
import re

import pytest
from sqlalchemy import select

import messages
from models import Event, Message, db
from tests.conftest import GLOBAL_KEY

RECEIVER_URL = "https://hooks.example.test/evogate"
RECIPIENT = "5511999990001"
RECIPIENT_JID = RECIPIENT + "@s.whatsapp.net"
OTHER_JID = "5511999990002@s.whatsapp.net"
WEBHOOK_ANSWER_FIELDS = {"id", "url", "headers", "enabled", "events", "webhookByEvents", "webhookBase64", "secret",
                         "createdAt", "updatedAt", "instanceId"}
MESSAGE_FIELDS = {"key", "status", "message", "messageType", "messageTimestamp", "instanceId"}
ISO_UTC_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")


def set_webhook(api, name: str, webhook, key: str = GLOBAL_KEY):
    return api.request("POST", f"/webhook/set/{name}", key, json={"webhook": webhook})


def find_webhook(api, name: str, key: str = GLOBAL_KEY):
    response = api.request("GET", f"/webhook/find/{name}", key)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def inbound(api, name: str, key_id: str, text: str = "hello", key: str = GLOBAL_KEY, **fields):
    body = {"key": {"remoteJid": RECIPIENT_JID, "id": key_id}, "message": {"conversation": text}, **fields}
    return api.request("POST", f"/webhook/evolution/{name}", key, json=body)


def find_messages(api, name: str, body=None, key: str = GLOBAL_KEY):
    return api.request("POST", f"/chat/findMessages/{name}", key, json=body)


def send_text(api, name: str, number: str = RECIPIENT, text: str = "hello"):
    return api.request("POST", f"/message/sendText/{name}", GLOBAL_KEY, json={"number": number, "text": text})


def event_rows(app) -> list[tuple[str, str]]:
    """Return every outbox row as (event name, instance name), in insertion order."""
    with app.app_context():
        return [(event.name, event.instance_name) for event in db.session.scalars(select(Event).order_by(Event.pk))]


def message_count(app) -> int:
    with app.app_context():
        return len(db.session.scalars(select(Message)).all())


# webhook/set validation

def test_set_requires_enabled(api):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"url": RECEIVER_URL})
    assert response.status_code == 400
    assert "webhook.enabled" in response.get_json()["errors"]
    for value in ("true", 1, None):
        response = set_webhook(api, "shop1", {"enabled": value, "url": RECEIVER_URL})
        assert response.status_code == 400, value
    assert find_webhook(api, "shop1") is None


@pytest.mark.parametrize("webhook", [
    {"enabled": True},
    {"enabled": True, "url": ""},
    {"enabled": True, "url": None},
])
def test_set_requires_url_when_enabled(api, webhook):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", webhook)
    assert response.status_code == 400
    assert "url" in response.get_json()["message"].lower()
    assert find_webhook(api, "shop1") is None


def test_set_disabled_without_url(api):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": False})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["enabled"] is False
    assert response.get_json()["url"] is None


@pytest.mark.parametrize("url", [
    "ftp://hooks.example.test/evogate",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "ws://hooks.example.test/socket",
    "hooks.example.test/evogate",
    "http://",
    "https:///no-host",
    "http://hooks.example.test:99999/",
    "http://hooks example.test/",
    "http://hooks.example.test/a\nb",
    42,
])
def test_set_rejects_url(api, url):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": url})
    assert response.status_code == 400, response.get_json()
    assert find_webhook(api, "shop1") is None


@pytest.mark.parametrize("url", ["http://hooks.example.test/evogate", "https://user:pass@hooks.example.test:8443/x?y=1"])
def test_set_accepts_http_and_https(api, url):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": url})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["url"] == url


def test_set_rejects_unknown_event(api):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL,
                                          "events": ["SEND_MESSAGE", "MESSAGE_TELEPORTED"]})
    assert response.status_code == 400
    assert "MESSAGE_TELEPORTED" in response.get_json()["message"]
    assert find_webhook(api, "shop1") is None


def test_set_stores_dotted_events_canonical(api):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL,
                                          "events": ["send.message", "messages.update", "CONNECTION_UPDATE"]})
    assert response.status_code == 201, response.get_json()
    expected = ["CONNECTION_UPDATE", "MESSAGES_UPDATE", "SEND_MESSAGE"]
    assert sorted(response.get_json()["events"]) == expected
    assert sorted(find_webhook(api, "shop1")["events"]) == expected


@pytest.mark.parametrize("events", [None, []])
def test_set_without_events_means_all(api, app, events):
    api.create_instance("shop1")
    webhook = {"enabled": True, "url": RECEIVER_URL}
    if events is not None:
        webhook["events"] = events

    response = set_webhook(api, "shop1", webhook)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["events"] == []
    assert send_text(api, "shop1").status_code == 201
    assert api.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY).status_code == 200
    assert sorted(name for name, _ in event_rows(app)) == ["CONNECTION_UPDATE", "LOGOUT_INSTANCE", "SEND_MESSAGE"]


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},
    {"content-type": "text/plain"},
    {"X-Webhook-Signature": "v1=forged"},
    {"x-webhook-id": "1"},
    {"X-WEBHOOK-TIMESTAMP": "0"},
    {"X-Webhook-Anything": "x"},
    {"X-Count": 5},
    {"X-Broken": "a\r\nInjected: yes"},
    {"Bad Name": "x"},
])
def test_set_rejects_header(api, headers):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "headers": headers})
    assert response.status_code == 400, response.get_json()
    assert find_webhook(api, "shop1") is None


def test_set_stores_custom_headers(api):
    api.create_instance("shop1")
    headers = {"X-Tenant": "acme", "Authorization": "Bearer receiver-side-token"}

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "headers": headers})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["headers"] == headers
    assert find_webhook(api, "shop1")["headers"] == headers


@pytest.mark.parametrize("secret", ["Sh0rtSecret", "has white space 1234567890", "tab\tseparated-secret-value",
                                    "ünïcödé-secret-value-1234", "x" * 257, 12345678901234567])
def test_set_rejects_secret(api, secret):
    api.create_instance("shop1")

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "secret": secret})
    assert response.status_code == 400, response.get_json()
    if isinstance(secret, str):
        assert secret not in json.dumps(response.get_json())  # a signing key is never echoed
    assert find_webhook(api, "shop1") is None


def test_set_secret_generated_chosen_and_kept(api):
    api.create_instance("shop1")
    api.create_instance("shop2")

    generated = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL}).get_json()["secret"]
    other = set_webhook(api, "shop2", {"enabled": True, "url": RECEIVER_URL}).get_json()["secret"]
    assert isinstance(generated, str)
    assert len(generated) >= 32
    assert generated != other

    again = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL + "/v2"})
    assert again.status_code == 201
    assert again.get_json()["secret"] == generated
    assert find_webhook(api, "shop1")["secret"] == generated

    chosen = "chosen-secret-0123456789abcdef"
    assert set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "secret": chosen}).get_json()["secret"] == chosen
    assert set_webhook(api, "shop1", {"enabled": False}).get_json()["secret"] == chosen
    assert find_webhook(api, "shop1")["secret"] == chosen


def test_set_again_replaces_configuration(api):
    api.create_instance("shop1")
    set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "events": ["SEND_MESSAGE"], "byEvents": True,
                               "base64": True, "headers": {"X-Tenant": "acme"}})

    response = set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL + "/v2"})
    assert response.status_code == 201
    found = find_webhook(api, "shop1")
    assert found["url"] == RECEIVER_URL + "/v2"
    assert found["events"] == []
    assert found["webhookByEvents"] is False
    assert found["webhookBase64"] is False
    assert found["headers"] == {}


@pytest.mark.parametrize("body", [{}, {"webhook": None}, {"webhook": "on"}, {"webhook": []},
                                  {"enabled": True, "url": RECEIVER_URL}])
def test_set_rejects_body_without_webhook_object(api, body):
    api.create_instance("shop1")

    response = api.request("POST", "/webhook/set/shop1", GLOBAL_KEY, json=body)
    assert response.status_code == 400, response.get_json()
    assert find_webhook(api, "shop1") is None


def test_set_and_find_guarded(api):
    _, token = api.create_instance("shop1")
    _, other_token = api.create_instance("shop2")
    webhook = {"enabled": True, "url": RECEIVER_URL}

    assert set_webhook(api, "shop1", webhook, key=None).status_code == 401
    assert set_webhook(api, "shop1", webhook, key="not-a-key").status_code == 401
    assert set_webhook(api, "shop1", webhook, key=other_token).status_code == 403
    assert api.request("GET", "/webhook/find/shop1", other_token).status_code == 403
    assert api.request("GET", "/webhook/find/shop1").status_code == 401
    assert set_webhook(api, "missing", webhook).status_code == 404
    assert set_webhook(api, "shop1", webhook, key=token).status_code == 201
    assert find_webhook(api, "shop1", key=token)["url"] == RECEIVER_URL


# webhook/find

def test_find_without_configuration_is_null(api):
    api.create_instance("shop1")

    response = api.request("GET", "/webhook/find/shop1", GLOBAL_KEY)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.data.strip() == b"null"


def test_find_answer_fields(api):
    created, _ = api.create_instance("shop1")
    set_webhook(api, "shop1", {"enabled": True, "url": RECEIVER_URL, "events": ["SEND_MESSAGE"], "byEvents": True,
                               "base64": False, "headers": {"X-Tenant": "acme"}})

    found = find_webhook(api, "shop1")
    assert set(found) == WEBHOOK_ANSWER_FIELDS
    assert isinstance(found["id"], str) and found["id"]
    assert found["url"] == RECEIVER_URL
    assert found["headers"] == {"X-Tenant": "acme"}
    assert found["enabled"] is True
    assert found["events"] == ["SEND_MESSAGE"]
    assert found["webhookByEvents"] is True
    assert found["webhookBase64"] is False
    assert isinstance(found["secret"], str) and found["secret"]
    assert ISO_UTC_PATTERN.fullmatch(found["createdAt"]), found["createdAt"]
    assert ISO_UTC_PATTERN.fullmatch(found["updatedAt"]), found["updatedAt"]
    assert found["instanceId"] == created["instance"]["instanceId"]
    assert set(set_webhook(api, "shop1", {"enabled": False}).get_json()) == WEBHOOK_ANSWER_FIELDS


# The create body's webhook object

def test_create_webhook_enabled_by_default(api, app):
    created, _ = api.create_instance("shop1", webhook={"url": RECEIVER_URL, "events": ["INSTANCE_CREATE"]})

    found = find_webhook(api, "shop1")
    assert found["enabled"] is True
    assert found["url"] == RECEIVER_URL
    assert found["instanceId"] == created["instance"]["instanceId"]
    assert event_rows(app) == [("INSTANCE_CREATE", "shop1")]


@pytest.mark.parametrize("webhook", [{}, None, "", False])
def test_create_inert_webhook_configures_nothing(api, app, webhook):
    api.create_instance("shop1", webhook=webhook)

    assert find_webhook(api, "shop1") is None
    assert event_rows(app) == []


def test_create_disabled_webhook_sends_nothing(api, app):
    api.create_instance("shop1", webhook={"enabled": False})

    found = find_webhook(api, "shop1")
    assert found is None or found["enabled"] is False
    assert send_text(api, "shop1").status_code == 201
    assert event_rows(app) == []


@pytest.mark.parametrize("webhook", [
    {"url": "ftp://hooks.example.test/"},
    {"enabled": True},
    {"url": RECEIVER_URL, "events": ["NOT_AN_EVENT"]},
    {"url": RECEIVER_URL, "headers": {"Content-Type": "text/plain"}},
    {"url": RECEIVER_URL, "headers": {"X-Webhook-Id": "forged"}},
    {"url": RECEIVER_URL, "secret": "short"},
    {"url": RECEIVER_URL, "enabled": "yes"},
    "https://hooks.example.test/evogate",
    [RECEIVER_URL],
    True,
    0,
    1,
])
def test_create_bad_webhook_creates_nothing(api, app, webhook):
    response = api.create("shop1", webhook=webhook)
    assert response.status_code == 400, response.get_json()

    assert api.request("GET", "/instance/fetchInstances?instanceName=shop1", GLOBAL_KEY).status_code == 404
    assert event_rows(app) == []
    assert api.create("shop1").status_code == 201  # the name was not taken by a half-created instance


# Inbound messages: POST /webhook/evolution/{instanceName}

@pytest.mark.parametrize("body", [
    {"message": {"conversation": "hi"}},
    {"key": "ABC", "message": {"conversation": "hi"}},
    {"key": {"remoteJid": RECIPIENT_JID}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": ""}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "x" * 129}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": 12345}, "message": {"conversation": "hi"}},
    {"key": {"id": "ID1"}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": "not-a-number", "id": "ID1"}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": "1234567", "id": "ID1"}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": "5511999990001@c.us", "id": "ID1"}, "message": {"conversation": "hi"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "   "}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "x" * 4097}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "nul\x00inside"}},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "hi"}, "messageTimestamp": "1700000000"},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "hi"}, "messageTimestamp": -1},
    {"key": {"remoteJid": RECIPIENT_JID, "id": "ID1"}, "message": {"conversation": "hi"}, "pushName": "x" * 257},
])
def test_inbound_rejects_invalid_body(api, app, body):
    api.create_instance("shop1", webhook={"url": RECEIVER_URL})
    rows_before = event_rows(app)

    response = api.request("POST", "/webhook/evolution/shop1", GLOBAL_KEY, json=body)
    assert response.status_code == 400, response.get_json()
    assert message_count(app) == 0
    assert event_rows(app) == rows_before


def test_inbound_stores_message(api, app):
    created, _ = api.create_instance("shop1", webhook={"url": RECEIVER_URL})

    response = inbound(api, "shop1", "ID-" + "x" * 125, "hello there", pushName="Ana", messageTimestamp=1700000000)
    assert response.status_code == 201, response.get_json()
    stored = response.get_json()
    assert MESSAGE_FIELDS | {"id"} <= set(stored)
    assert stored["key"] == {"remoteJid": RECIPIENT_JID, "fromMe": False, "id": "ID-" + "x" * 125}
    assert stored["message"] == {"conversation": "hello there"}
    assert stored["messageType"] == "conversation"
    assert stored["messageTimestamp"] == 1700000000
    assert stored["instanceId"] == created["instance"]["instanceId"]
    assert event_rows(app) == [("INSTANCE_CREATE", "shop1"), ("MESSAGES_UPSERT", "shop1")]
    with app.app_context():
        upsert = db.session.scalars(select(Event).where(Event.name == "MESSAGES_UPSERT")).one()
        envelope = json.loads(upsert.body)
    assert envelope["event"] == "messages.upsert"
    assert {field: envelope["data"][field] for field in MESSAGE_FIELDS} == {field: stored[field] for field in MESSAGE_FIELDS}


def test_inbound_normalises_number(api):
    api.create_instance("shop1")

    body = {"key": {"remoteJid": "+55 (11) 99999-0001", "id": "ID1"}, "message": {"conversation": "hi"}}
    response = api.request("POST", "/webhook/evolution/shop1", GLOBAL_KEY, json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["key"]["remoteJid"] == RECIPIENT_JID


def test_inbound_is_idempotent(api, app):
    api.create_instance("shop1", webhook={"url": RECEIVER_URL})

    first = inbound(api, "shop1", "DUPLICATE-1", "original")
    second = inbound(api, "shop1", "DUPLICATE-1", "original")
    changed = inbound(api, "shop1", "DUPLICATE-1", "a different text")
    assert first.status_code == 201
    assert second.status_code == 200
    assert changed.status_code == 200
    assert second.get_json() == first.get_json()
    assert changed.get_json() == first.get_json()

    found = find_messages(api, "shop1", {"where": {"key": {"id": "DUPLICATE-1"}}}).get_json()["messages"]
    assert found["total"] == 1
    assert found["records"][0]["message"] == {"conversation": "original"}
    assert message_count(app) == 1
    assert [name for name, _ in event_rows(app)].count("MESSAGES_UPSERT") == 1


def test_inbound_ids_are_per_instance(api):
    api.create_instance("shop1")
    api.create_instance("shop2")

    assert inbound(api, "shop1", "SAME-ID").status_code == 201
    assert inbound(api, "shop2", "SAME-ID").status_code == 201
    outgoing_id = send_text(api, "shop1").get_json()["key"]["id"]
    # An incoming id equal to an outgoing one is a different message.
    assert inbound(api, "shop1", outgoing_id).status_code == 201


def test_inbound_accepted_in_any_state(api):
    api.create_instance("shop1")
    assert api.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY).status_code == 200

    assert inbound(api, "shop1", "WHILE-CLOSED").status_code == 201


def test_inbound_guarded(api):
    _, token = api.create_instance("shop1")
    _, other_token = api.create_instance("shop2")

    assert inbound(api, "shop1", "ID1", key=None).status_code == 401
    assert inbound(api, "shop1", "ID1", key=other_token).status_code == 403
    assert inbound(api, "missing", "ID1").status_code == 404
    assert inbound(api, "shop1", "ID1", key=token).status_code == 201


# POST /chat/findMessages/{instanceName}

def test_find_messages_filters(api):
    api.create_instance("shop1")
    api.create_instance("shop2")
    sent_ids = [send_text(api, "shop1", number).get_json()["key"]["id"] for number in (RECIPIENT, RECIPIENT, OTHER_JID)]
    inbound(api, "shop1", "IN-1")
    inbound(api, "shop1", "IN-2")
    api.request("POST", "/webhook/evolution/shop1", GLOBAL_KEY,
                json={"key": {"remoteJid": OTHER_JID, "id": "IN-3"}, "message": {"conversation": "hi"}})
    inbound(api, "shop2", "IN-OTHER-INSTANCE")

    def ids(where) -> set[str]:
        response = find_messages(api, "shop1", {"where": {"key": where}})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()["messages"]
        assert body["total"] == len(body["records"])
        return {record["key"]["id"] for record in body["records"]}

    everything = set(sent_ids) | {"IN-1", "IN-2", "IN-3"}
    assert ids({}) == everything
    assert ids({"remoteJid": RECIPIENT_JID}) == {sent_ids[0], sent_ids[1], "IN-1", "IN-2"}
    assert ids({"remoteJid": "+55 11 99999-0001"}) == {sent_ids[0], sent_ids[1], "IN-1", "IN-2"}
    assert ids({"fromMe": True}) == set(sent_ids)
    assert ids({"fromMe": False}) == {"IN-1", "IN-2", "IN-3"}
    assert ids({"id": "IN-2"}) == {"IN-2"}
    assert ids({"remoteJid": OTHER_JID, "fromMe": False}) == {"IN-3"}
    assert ids({"id": "IN-OTHER-INSTANCE"}) == set()
    assert ids({"remoteJid": None, "id": None, "fromMe": None}) == everything
    assert find_messages(api, "shop1", {"where": None}).get_json()["messages"]["total"] == 6
    assert find_messages(api, "shop1", {"where": {"key": None}}).get_json()["messages"]["total"] == 6
    assert find_messages(api, "shop1").get_json()["messages"]["total"] == 6


@pytest.mark.parametrize("where", [
    {"key": {"fromMe": "true"}},
    {"key": {"remoteJid": "abc"}},
    {"key": {"id": "x" * 129}},
    {"key": "x"},
    "x",
])
def test_find_messages_rejects_bad_filter(api, where):
    api.create_instance("shop1")

    assert find_messages(api, "shop1", {"where": where}).status_code == 400


def test_find_messages_pages(api):
    api.create_instance("shop1")
    for number in range(7):
        inbound(api, "shop1", f"IN-{number}", messageTimestamp=1700000000 + number)

    def page(number: int, size: int) -> dict:
        response = find_messages(api, "shop1", {"page": number, "offset": size})
        assert response.status_code == 200, response.get_json()
        return response.get_json()["messages"]

    first = page(1, 3)
    assert (first["total"], first["pages"], first["currentPage"]) == (7, 3, 1)
    assert [record["key"]["id"] for record in first["records"]] == ["IN-6", "IN-5", "IN-4"]
    third = page(3, 3)
    assert (third["total"], third["pages"], third["currentPage"]) == (7, 3, 3)
    assert [record["key"]["id"] for record in third["records"]] == ["IN-0"]
    beyond = page(4, 3)
    assert (beyond["total"], beyond["currentPage"], beyond["records"]) == (7, 4, [])
    assert len(page(1, 1000)["records"]) == 7

    default = find_messages(api, "shop1", {}).get_json()["messages"]
    assert (default["total"], default["pages"], default["currentPage"], len(default["records"])) == (7, 1, 1, 7)


def test_find_messages_default_page_size_is_50(api):
    api.create_instance("shop1")
    for number in range(51):
        inbound(api, "shop1", f"IN-{number}", messageTimestamp=1700000000 + number)

    found = find_messages(api, "shop1").get_json()["messages"]
    assert (found["total"], found["pages"], len(found["records"])) == (51, 2, 50)
    second = find_messages(api, "shop1", {"page": 2}).get_json()["messages"]
    assert [record["key"]["id"] for record in second["records"]] == ["IN-0"]


def test_find_messages_empty(api):
    api.create_instance("shop1")

    found = find_messages(api, "shop1").get_json()["messages"]
    assert found["total"] == 0
    assert found["records"] == []
    assert found["currentPage"] == 1


@pytest.mark.parametrize("body", [
    {"offset": 1001}, {"offset": 0}, {"offset": -1}, {"offset": 2.5}, {"offset": "10"}, {"offset": True},
    {"page": 0}, {"page": -1}, {"page": "1"}, {"page": 1.5}, {"page": False},
])
def test_find_messages_rejects_bad_paging(api, body):
    api.create_instance("shop1")

    response = find_messages(api, "shop1", body)
    assert response.status_code == 400, response.get_json()


def test_find_messages_newest_first(api):
    created, _ = api.create_instance("shop1")
    for key_id, timestamp in (("T100", 100), ("T300-FIRST", 300), ("T200", 200), ("T300-SECOND", 300)):
        assert inbound(api, "shop1", key_id, messageTimestamp=timestamp).status_code == 201
    sent = send_text(api, "shop1").get_json()

    records = find_messages(api, "shop1").get_json()["messages"]["records"]
    # Sorted by messageTimestamp, newest first; equal timestamps by arrival, latest first.
    assert [record["key"]["id"] for record in records] == [sent["key"]["id"], "T300-SECOND", "T300-FIRST", "T200", "T100"]
    newest = records[0]
    assert MESSAGE_FIELDS | {"id"} <= set(newest)
    assert {field: newest[field] for field in MESSAGE_FIELDS} == sent
    assert newest["instanceId"] == created["instance"]["instanceId"]
    assert len({record["id"] for record in records}) == 5


def test_find_messages_guarded(api):
    _, token = api.create_instance("shop1")
    _, other_token = api.create_instance("shop2")

    assert find_messages(api, "shop1", key=None).status_code == 401
    assert find_messages(api, "shop1", key=other_token).status_code == 403
    assert find_messages(api, "missing").status_code == 404
    assert find_messages(api, "shop1", key=token).status_code == 200


# Outbox rows are written in the transaction of their change

def test_event_row_written_with_create(api, app):
    created, token = api.create_instance("shop1", number="5511988887777", webhook={"url": RECEIVER_URL})

    with app.app_context():
        rows = db.session.scalars(select(Event)).all()
        assert len(rows) == 1
        row = rows[0]
        envelope = json.loads(row.body)
        assert (row.name, row.instance_name, row.url, row.status) == ("INSTANCE_CREATE", "shop1", RECEIVER_URL, "pending")
    assert envelope["event"] == "instance.create"
    assert envelope["data"] == {"instanceName": "shop1", "instanceId": created["instance"]["instanceId"]}
    assert envelope["sender"] == "5511988887777@s.whatsapp.net"
    assert token not in json.dumps(envelope)
    assert GLOBAL_KEY not in json.dumps(envelope)


def test_refused_requests_write_no_events(api, app):
    api.create_instance("shop1", webhook={"url": RECEIVER_URL})
    api.create_instance("closed", webhook={"url": RECEIVER_URL})
    assert api.request("DELETE", "/instance/logout/closed", GLOBAL_KEY).status_code == 200
    assert inbound(api, "shop1", "IN-1").status_code == 201
    rows_before = event_rows(app)
    messages_before = message_count(app)

    rejected = [
        ("sendText to a closed instance", send_text(api, "closed"), 400),
        ("sendText with a bad number", send_text(api, "shop1", number="12"), 400),
        ("sendText with blank text", send_text(api, "shop1", text="  "), 400),
        ("create with a taken name", api.create("shop1", webhook={"url": RECEIVER_URL}), 409),
        ("create with a bad webhook", api.create("shop2", webhook={"url": "ftp://x"}), 400),
        ("webhook/set invalid", set_webhook(api, "shop1", {"enabled": True}), 400),
        ("inbound invalid", inbound(api, "shop1", ""), 400),
    ]
    for description, response, status in rejected:
        assert response.status_code == status, description
    unchanged = [
        ("logout of a closed instance", api.request("DELETE", "/instance/logout/closed", GLOBAL_KEY)),
        ("connect of an open instance", api.request("GET", "/instance/connect/shop1", GLOBAL_KEY)),
        ("restart", api.request("POST", "/instance/restart/shop1", GLOBAL_KEY)),
        ("inbound duplicate", inbound(api, "shop1", "IN-1")),
    ]
    for description, response in unchanged:
        assert response.status_code == 200, description
    assert event_rows(app) == rows_before
    assert message_count(app) == messages_before


def test_failure_after_emit_stores_neither(api, app, monkeypatch):
    api.create_instance("shop1", webhook={"url": RECEIVER_URL})
    rows_before = event_rows(app)
    original_emit = messages.emit

    def emit_then_fail(*args, **kwargs):
        original_emit(*args, **kwargs)
        raise RuntimeError("simulated failure between the event and the commit")

    monkeypatch.setattr(messages, "emit", emit_then_fail)
    response = send_text(api, "shop1")
    assert response.status_code == 500
    assert message_count(app) == 0
    assert event_rows(app) == rows_before


def test_send_text_writes_event_with_message(api, app):
    api.create_instance("shop1", webhook={"url": RECEIVER_URL, "events": ["SEND_MESSAGE"]})

    sent = send_text(api, "shop1").get_json()
    with app.app_context():
        row = db.session.scalars(select(Event)).one()
        message = db.session.scalars(select(Message)).one()
        assert row.name == "SEND_MESSAGE"
        assert row.message_pk == message.pk
        assert json.loads(row.body)["data"] == sent
