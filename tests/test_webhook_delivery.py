"""Webhook delivery through real gunicorn servers and a local receiver.

Every test starts its own gunicorn (two workers) on a fresh database and points instances at
receivers on 127.0.0.1. Retry delays and request timeouts are set to fractions of a second or
a few seconds, so retries, lease expiry and back-off are observed within the test's time.
"""

import base64
import hashlib
import hmac
import math
import re
import secrets
import signal
import time
from datetime import datetime, timezone
from email.utils import formatdate

import pytest

from tests.conftest import GLOBAL_KEY

# Short delays, so a retried delivery is seen within a second or two. A claimed delivery's
# lease is the request timeout plus the 1-second batch window plus 5 seconds, so 8 seconds here.
FAST_RETRIES = {
    "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "1",
    "WEBHOOK_REQUEST_TIMEOUT_MS": "2000",
}
RECIPIENT = "5511999990001"
RECIPIENT_JID = RECIPIENT + "@s.whatsapp.net"
OWNER_NUMBER = "5511988887777"
ENVELOPE_FIELDS = {"event", "instance", "data", "destination", "date_time", "sender", "server_url", "apikey"}
MESSAGE_FIELDS = {"key", "status", "message", "messageType", "messageTimestamp", "instanceId"}
DATE_TIME_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DOTTED_EVENT_PATTERN = re.compile(r"[a-z]+(\.[a-z]+)+")


# API helpers: each fails the test when the server does not respond as the contract requires.

def create_instance(server, name: str, **fields) -> tuple[dict, str]:
    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": name, **fields})
    assert status == 201, body
    return body, body["hash"]


def set_webhook(server, name: str, **webhook) -> dict:
    status, _, body = server.request("POST", f"/webhook/set/{name}", GLOBAL_KEY, {"webhook": {"enabled": True, **webhook}})
    assert status == 201, body
    return body


def find_webhook(server, name: str) -> dict:
    status, _, body = server.request("GET", f"/webhook/find/{name}", GLOBAL_KEY)
    assert status == 200, body
    return body


def send_text(server, name: str, text: str, **fields) -> dict:
    status, _, body = server.request("POST", f"/message/sendText/{name}", GLOBAL_KEY,
                                     {"number": RECIPIENT, "text": text, **fields})
    assert status == 201, body
    return body


def message_statuses(server, name: str) -> dict[str, str]:
    """Return every stored message of the instance as {key.id: status}."""
    status, _, body = server.request("POST", f"/chat/findMessages/{name}", GLOBAL_KEY, {"offset": 1000})
    assert status == 200, body
    return {record["key"]["id"]: record["status"] for record in body["messages"]["records"]}


def wait_for_statuses(server, name: str, key_ids: list[str], expected: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        statuses = message_statuses(server, name)
        if all(statuses.get(key_id) == expected for key_id in key_ids):
            return
        assert time.monotonic() < deadline, f"messages of {name} did not all become {expected}: {statuses}"
        time.sleep(0.1)


def expected_signature(secret: str, delivery) -> str:
    """Recompute X-Webhook-Signature: HMAC-SHA256 over `TIMESTAMP.BODY`."""
    signed = delivery.headers["x-webhook-timestamp"].encode() + b"." + delivery.body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def message_key_id(delivery) -> str | None:
    """Return the message id a send.message, messages.update or messages.upsert delivery is about."""
    data = delivery.json["data"]
    return data.get("keyId") or (data.get("key") or {}).get("id")


def sequence(deliveries) -> list[tuple[str, str | None]]:
    return [(delivery.event, message_key_id(delivery)) for delivery in deliveries]


def created_sent_then_acknowledged(key_ids: list[str]) -> list[tuple[str, str | None]]:
    """Return the `sequence` of an instance created, then sent these messages, each acknowledged."""
    return (
        [("instance.create", None)]
        + [("send.message", key_id) for key_id in key_ids]
        + [("messages.update", key_id) for key_id in key_ids]
    )


def kebab(event: str) -> str:
    return event.replace(".", "-")


# 1. Envelope, headers and signature

def test_envelope_headers_and_signature(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    name = "shop1"
    body, token = create_instance(server, name, number=OWNER_NUMBER, webhook={
        "url": receiver.url("/hooks/?tenant=7", userinfo="hook-user:p%40ss"),
        "byEvents": True,
        "headers": {"X-Tenant": "acme", "X-Api-Version": "2"},
    })
    instance_id = body["instance"]["instanceId"]
    identity = {"instanceName": name, "instanceId": instance_id}
    secret = find_webhook(server, name)["secret"]
    receiver.wait_for_count(1, 10, event="instance.create")

    sent = send_text(server, name, "hello envelope")
    receiver.wait_for_count(1, 10, event="messages.update")

    status, _, body = server.request("DELETE", f"/instance/logout/{name}", GLOBAL_KEY)
    assert (status, body["response"]["message"]) == (200, "Instance logged out")
    receiver.wait_for_count(1, 10, event="connection.update")
    status, _, body = server.request("DELETE", f"/instance/logout/{name}", GLOBAL_KEY)
    assert (status, body["response"]["message"]) == (200, "Instance was already disconnected")
    for _ in range(2):  # the second connect changes nothing, so it emits nothing
        status, _, body = server.request("GET", f"/instance/connect/{name}", GLOBAL_KEY)
        assert (status, body["instance"]["state"]) == (200, "open")
    receiver.wait_for_count(2, 10, event="connection.update")

    inbound_body = {"key": {"remoteJid": RECIPIENT_JID, "id": "INBOUND-ENVELOPE-1"}, "pushName": "Ana",
                    "message": {"conversation": "hi back"}, "messageTimestamp": 1700000000}
    status, _, inbound = server.request("POST", f"/webhook/evolution/{name}", GLOBAL_KEY, inbound_body)
    assert status == 201, inbound
    receiver.wait_for_count(1, 10, event="messages.upsert")

    status, _, body = server.request("DELETE", f"/instance/delete/{name}", GLOBAL_KEY)
    assert status == 200, body
    # INSTANCE_DELETE is the last event queued, and a queue is delivered in order.
    receiver.wait_for_count(1, 10, event="instance.delete")
    deliveries = receiver.snapshot()

    events = [delivery.event for delivery in deliveries]
    assert events[:3] == ["instance.create", "send.message", "messages.update"]
    assert sorted(events[3:5]) == ["connection.update", "logout.instance"]
    assert events[5:] == ["connection.update", "messages.upsert", "instance.delete"]

    expected_data = {
        "instance.create": [identity],
        "send.message": [sent],
        "messages.update": [{"keyId": sent["key"]["id"], "remoteJid": RECIPIENT_JID, "fromMe": True,
                             "status": "SERVER_ACK", "instanceId": instance_id}],
        "logout.instance": [identity],
        "connection.update": [{"instance": name, "state": "close"}, {"instance": name, "state": "open"}],
        "instance.delete": [identity],
    }
    for event, data_list in expected_data.items():
        assert [delivery.json["data"] for delivery in deliveries if delivery.event == event] == data_list, event

    upsert = next(delivery.json["data"] for delivery in deliveries if delivery.event == "messages.upsert")
    assert MESSAGE_FIELDS <= set(upsert)
    assert {field: upsert[field] for field in MESSAGE_FIELDS} == {field: inbound[field] for field in MESSAGE_FIELDS}
    assert upsert["key"] == {"remoteJid": RECIPIENT_JID, "fromMe": False, "id": "INBOUND-ENVELOPE-1"}
    assert upsert["message"] == {"conversation": "hi back"}
    assert upsert["messageTimestamp"] == 1700000000

    basic_auth = "Basic " + base64.b64encode(b"hook-user:p@ss").decode()
    for delivery in deliveries:
        envelope = delivery.json
        event = delivery.event
        assert DOTTED_EVENT_PATTERN.fullmatch(event), event
        assert set(envelope) == ENVELOPE_FIELDS, event
        assert envelope["instance"] == name
        assert delivery.target == f"/hooks/{kebab(event)}?tenant=7"
        assert envelope["destination"] == receiver.url(f"/hooks/{kebab(event)}?tenant=7")
        assert DATE_TIME_PATTERN.fullmatch(envelope["date_time"]), envelope["date_time"]
        sent_at = datetime.strptime(envelope["date_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs(sent_at.timestamp() - delivery.arrived_wall) < 30
        assert envelope["sender"] == OWNER_NUMBER + "@s.whatsapp.net"
        assert envelope["server_url"] is None
        assert envelope["apikey"] is None

        assert delivery.headers["content-type"].startswith("application/json")
        assert delivery.headers["x-tenant"] == "acme"
        assert delivery.headers["x-api-version"] == "2"
        assert delivery.headers["authorization"] == basic_auth
        assert delivery.headers["x-webhook-timestamp"].isdigit()
        assert abs(int(delivery.headers["x-webhook-timestamp"]) - delivery.arrived_wall) < 30
        assert delivery.headers["x-webhook-signature"] == expected_signature(secret, delivery)

        for forbidden in (token, GLOBAL_KEY, "p@ss", "p%40ss", "hook-user"):
            assert forbidden.encode() not in delivery.body, (event, forbidden)
        for header, value in delivery.headers.items():
            assert token not in value, (event, header)
            assert GLOBAL_KEY not in value, (event, header)

    webhook_ids = [delivery.webhook_id for delivery in deliveries]
    assert all(webhook_ids)
    assert len(set(webhook_ids)) == len(webhook_ids)

    server_log = server.log()
    for forbidden in (secret, token, GLOBAL_KEY, "p@ss", "p%40ss"):
        assert forbidden not in server_log, forbidden


def test_sender_server_url_and_plain_path(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, SERVER_URL="https://evogate.example.test", **FAST_RETRIES)
    create_instance(server, "owned", number=OWNER_NUMBER, webhook={"url": receiver.url("/owned")})
    create_instance(server, "unowned", webhook={"url": receiver.url("/in/unowned?x=1&y=2")})
    owned = receiver.wait_for_count(1, 10, event="instance.create", instance="owned")[0]
    unowned = receiver.wait_for_count(1, 10, event="instance.create", instance="unowned")[0]

    assert owned.json["sender"] == OWNER_NUMBER + "@s.whatsapp.net"
    assert "sender" not in unowned.json
    assert owned.json["server_url"] == "https://evogate.example.test"
    assert unowned.json["server_url"] == "https://evogate.example.test"
    # Without byEvents the configured URL is posted to unchanged.
    assert owned.target == "/owned"
    assert unowned.target == "/in/unowned?x=1&y=2"
    assert unowned.json["destination"] == receiver.url("/in/unowned?x=1&y=2")
    assert "authorization" not in unowned.headers


def test_by_events_path_without_trailing_slash(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url("/hooks?k=v"), "byEvents": True})
    send_text(server, "shop1", "hello")

    deliveries = receiver.wait_for_count(3, 10)
    assert [delivery.target for delivery in deliveries[:3]] == [
        "/hooks/instance-create?k=v", "/hooks/send-message?k=v", "/hooks/messages-update?k=v",
    ]


def test_events_filter_limits_deliveries(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url(), "events": ["send.message", "CONNECTION_UPDATE"]})
    sent = send_text(server, "shop1", "filtered")
    assert server.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY)[0] == 200

    receiver.wait_for_count(1, 10, event="connection.update")
    wait_for_statuses(server, "shop1", [sent["key"]["id"]], "SERVER_ACK", 10)
    assert [delivery.event for delivery in receiver.snapshot()] == ["send.message", "connection.update"]


# 2. A receiver that is down

def test_receiver_down_gets_every_event_later(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")

    receiver.down()
    key_ids = [send_text(server, "shop1", f"message {number}")["key"]["id"] for number in range(5)]
    time.sleep(1)  # several attempts fail with "connection refused" meanwhile
    assert set(message_statuses(server, "shop1").values()) == {"PENDING"}
    receiver.up()

    receiver.wait_for_count(5, 20, event="messages.update")
    wait_for_statuses(server, "shop1", key_ids, "SERVER_ACK", 10)
    deliveries = receiver.snapshot()
    assert sequence(deliveries) == created_sent_then_acknowledged(key_ids)
    assert [delivery.json["data"]["status"] for delivery in deliveries[6:]] == ["SERVER_ACK"] * 5
    webhook_ids = [delivery.webhook_id for delivery in deliveries]
    assert len(set(webhook_ids)) == len(webhook_ids)


def test_queued_events_keep_their_configuration(backend, server_factory, receivers):
    first, second = receivers(), receivers()
    server = server_factory(backend, **FAST_RETRIES)
    first_secret, second_secret = "first-secret-" + secrets.token_hex(8), "second-secret-" + secrets.token_hex(8)
    create_instance(server, "shop1", webhook={"url": first.url(), "secret": first_secret,
                                              "headers": {"X-Tenant": "first"}})
    first.wait_for_count(1, 10, event="instance.create")

    first.down()
    queued_ids = [send_text(server, "shop1", f"queued {number}")["key"]["id"] for number in range(2)]
    set_webhook(server, "shop1", url=second.url(), secret=second_secret, headers={"X-Tenant": "second"})
    later_id = send_text(server, "shop1", "after the change")["key"]["id"]
    assert server.request("DELETE", "/instance/delete/shop1", GLOBAL_KEY)[0] == 200
    # The instance's events form one queue, so the new receiver's wait behind the old one's.
    first.up()

    queued = first.wait_for_count(2, 15, event="send.message")
    second.wait_for_count(1, 15, event="instance.delete")
    assert [message_key_id(delivery) for delivery in queued] == queued_ids
    for delivery in queued:
        assert delivery.headers["x-webhook-signature"] == expected_signature(first_secret, delivery)
        assert delivery.headers["x-tenant"] == "first"
        assert delivery.json["destination"] == first.url()
    # The messages were deleted with the instance before their deliveries, so no MESSAGES_UPDATE.
    assert sequence(second.snapshot()) == [("send.message", later_id), ("instance.delete", None)]
    for delivery in second.snapshot():
        assert delivery.headers["x-webhook-signature"] == expected_signature(second_secret, delivery)
        assert delivery.headers["x-tenant"] == "second"
        assert delivery.json["destination"] == second.url()


# 3. SIGKILL of the whole server

def test_backlog_delivered_after_sigkill(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")

    receiver.down()
    key_ids = [send_text(server, "shop1", f"backlog {number}")["key"]["id"] for number in range(5)]
    time.sleep(0.5)
    server.stop(signal.SIGKILL)
    receiver.up()
    server.start()

    # A delivery claimed at the moment of the kill waits for its 8-second lease to run out.
    receiver.wait_for_count(5, 30, event="messages.update")
    wait_for_statuses(server, "shop1", key_ids, "SERVER_ACK", 10)
    deliveries = receiver.snapshot()
    assert sequence(deliveries) == created_sent_then_acknowledged(key_ids)
    webhook_ids = [delivery.webhook_id for delivery in deliveries]
    assert len(set(webhook_ids)) == len(webhook_ids)


def test_sigkill_mid_delivery_repeats_it(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    _, token = create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")
    secret = find_webhook(server, "shop1")["secret"]

    receiver.hang(60)
    sent = send_text(server, "shop1", "cut short")
    cut_short = receiver.wait_for_count(1, 10, event="send.message")[0]
    # Kill well within the 2-second request timeout, while the receiver keeps the request open.
    server.stop(signal.SIGKILL)
    receiver.respond(200)
    assert message_key_id(cut_short) == sent["key"]["id"]
    restarted_at = time.monotonic()
    server.start()

    repeated = receiver.wait_for_count(2, 30, event="send.message")[1]
    assert repeated.webhook_id == cut_short.webhook_id
    assert repeated.body == cut_short.body
    assert repeated.headers["x-webhook-signature"] == expected_signature(secret, repeated)
    assert repeated.arrived_at - restarted_at < 15
    wait_for_statuses(server, "shop1", [sent["key"]["id"]], "SERVER_ACK", 10)
    update = receiver.wait_for_count(1, 10, event="messages.update")[0]
    assert update.json["data"]["status"] == "SERVER_ACK"
    assert token.encode() not in repeated.body


# 4. One instance's slow or failing receiver does not hold up another's

def test_slow_receiver_isolated_from_others(backend, server_factory, receivers):
    hanging, failing, healthy = receivers(), receivers(), receivers()
    hanging.hang(30)
    failing.respond(500)
    server = server_factory(backend, WEBHOOK_RETRY_INITIAL_DELAY_SECONDS="0.2", WEBHOOK_RETRY_MAX_DELAY_SECONDS="1",
                            WEBHOOK_REQUEST_TIMEOUT_MS="10000")
    # Three instances share the hanging receiver, so more deliveries hang than there are workers.
    hanging_names = [f"hanging{number}" for number in range(3)]
    for name in hanging_names:
        create_instance(server, name, webhook={"url": hanging.url()})
    create_instance(server, "failing", webhook={"url": failing.url()})
    create_instance(server, "healthy", webhook={"url": healthy.url(), "events": ["SEND_MESSAGE"]})
    for number in range(5):
        for name in hanging_names:
            send_text(server, name, f"stuck {number}")
        send_text(server, "failing", f"refused {number}")
    hanging.wait_for_count(3, 10)
    failing.wait_for_count(3, 10)  # retrying

    latencies = []
    for number in range(5):
        sent_at = time.monotonic()
        key_id = send_text(server, "healthy", f"fast {number}")["key"]["id"]
        delivery = healthy.wait_for_count(number + 1, 10, event="send.message")[number]
        assert message_key_id(delivery) == key_id
        latencies.append(delivery.arrived_at - sent_at)
    # Each hanging queue holds only its first delivery open within the 10-second timeout.
    assert len(hanging.snapshot()) == 3
    assert max(latencies) <= 1.0, [round(latency, 3) for latency in latencies]


# 5. Retries, back-off and Retry-After

RETRY_SETTINGS = {
    "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS": "0.1",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "0.5",
    "WEBHOOK_RETRY_MAX_ATTEMPTS": "4",
    "WEBHOOK_REQUEST_TIMEOUT_MS": "2000",
    "WEBHOOK_GLOBAL_ENABLED": "true",
    "WEBHOOK_GLOBAL_SECRET": "global-secret-" + secrets.token_hex(8),
}


def start_failing_instances(server, receivers, statuses: dict[str, tuple[int, dict]]) -> dict[str, tuple]:
    """Create one instance per case, whose receiver responds to SEND_MESSAGE with the case's status.

    Returns {case: (receiver, secret, message key id)}.
    """
    cases = {}
    for case, (status, headers) in statuses.items():
        receiver = receivers()
        receiver.respond(status, headers)
        create_instance(server, case, webhook={"url": receiver.url(), "events": ["SEND_MESSAGE"]})
        secret = find_webhook(server, case)["secret"]
        key_id = send_text(server, case, f"receiver responds {status}")["key"]["id"]
        cases[case] = (receiver, secret, key_id)
    return cases


def wait_for_error_updates(global_receiver, cases: dict) -> None:
    def all_failed(deliveries):
        failed = {
            message_key_id(delivery) for delivery in deliveries
            if delivery.event == "messages.update" and delivery.json["data"]["status"] == "ERROR"
        }
        return all(key_id in failed for _, _, key_id in cases.values())

    global_receiver.wait_for(all_failed, 20, "MESSAGES_UPDATE with status ERROR for every case")


def test_retryable_statuses_retried_to_max_attempts(backend, server_factory, receivers):
    global_receiver = receivers()
    server = server_factory(backend, WEBHOOK_GLOBAL_URL=global_receiver.url("/global"), **RETRY_SETTINGS)
    cases = start_failing_instances(server, receivers, {
        "status500": (500, {}), "status503": (503, {}), "status408": (408, {}), "status429": (429, {}),
    })

    wait_for_error_updates(global_receiver, cases)
    time.sleep(1)  # longer than the maximum delay: a fifth attempt would arrive meanwhile
    for case, (receiver, secret, key_id) in cases.items():
        attempts = receiver.snapshot()
        assert len(attempts) == 4, case
        assert {attempt.webhook_id for attempt in attempts} == {attempts[0].webhook_id}, case
        assert {attempt.body for attempt in attempts} == {attempts[0].body}, case
        for attempt in attempts:
            assert attempt.headers["x-webhook-signature"] == expected_signature(secret, attempt), case
        assert message_statuses(server, case) == {key_id: "ERROR"}, case


def test_client_errors_get_one_attempt(backend, server_factory, receivers):
    global_receiver = receivers()
    server = server_factory(backend, WEBHOOK_GLOBAL_URL=global_receiver.url("/global"), **RETRY_SETTINGS)
    cases = start_failing_instances(server, receivers, {
        "status400": (400, {}), "status401": (401, {}), "status404": (404, {}), "status410": (410, {}),
    })

    wait_for_error_updates(global_receiver, cases)
    time.sleep(1)
    for case, (receiver, _, key_id) in cases.items():
        assert len(receiver.snapshot()) == 1, case
        assert message_statuses(server, case) == {key_id: "ERROR"}, case


def test_redirect_fails_without_following(backend, server_factory, receivers):
    global_receiver, redirect_target = receivers(), receivers()
    server = server_factory(backend, WEBHOOK_GLOBAL_URL=global_receiver.url("/global"), **RETRY_SETTINGS)
    location = {"Location": redirect_target.url("/moved")}
    cases = start_failing_instances(server, receivers, {
        "status301": (301, location), "status302": (302, location),
        "status307": (307, location), "status308": (308, location),
    })

    wait_for_error_updates(global_receiver, cases)
    time.sleep(1)
    assert redirect_target.snapshot() == []
    for case, (receiver, _, key_id) in cases.items():
        assert 1 <= len(receiver.snapshot()) <= 4, case
        assert message_statuses(server, case) == {key_id: "ERROR"}, case


def test_retry_after_honoured_within_max_delay(backend, server_factory, receivers):
    global_receiver = receivers()
    settings = {**RETRY_SETTINGS, "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "3", "WEBHOOK_RETRY_MAX_ATTEMPTS": "2"}
    server = server_factory(backend, WEBHOOK_GLOBAL_URL=global_receiver.url("/global"), **settings)
    # An HTTP date has whole seconds. This one is 1.5 to 2.5 seconds away, below the 3-second maximum delay.
    retry_at = math.ceil(time.time() + 1.5)
    cases = start_failing_instances(server, receivers, {
        "seconds": (429, {"Retry-After": "1"}),
        "capped": (429, {"Retry-After": "60"}),
        "date": (503, {"Retry-After": formatdate(retry_at, usegmt=True)}),
    })

    wait_for_error_updates(global_receiver, cases)
    attempts = {case: receiver.snapshot() for case, (receiver, _, _) in cases.items()}
    for case, case_attempts in attempts.items():
        assert len(case_attempts) == 2, case
    assert attempts["seconds"][1].arrived_at - attempts["seconds"][0].arrived_at >= 1.0
    # Sixty seconds requested, capped by WEBHOOK_RETRY_MAX_DELAY_SECONDS=3, with one second of slack.
    capped_gap = attempts["capped"][1].arrived_at - attempts["capped"][0].arrived_at
    assert 3.0 <= capped_gap <= 4.0, capped_gap
    assert attempts["date"][1].arrived_wall >= retry_at, (attempts["date"][1].arrived_wall, retry_at)


# 6. A slow receiver does not slow requests down

def test_hanging_receiver_keeps_send_text_fast(backend, server_factory, receivers):
    receiver = receivers()
    receiver.hang(10)
    server = server_factory(backend, WEBHOOK_REQUEST_TIMEOUT_MS="15000")
    for number in range(3):
        create_instance(server, f"shop{number}", webhook={"url": receiver.url()})
    receiver.wait_for_count(3, 10)  # one delivery held open per instance

    durations = []
    for number in range(10):
        started = time.monotonic()
        send_text(server, f"shop{number % 3}", f"while hanging {number}")
        durations.append(time.monotonic() - started)
    receiver.respond(200)
    assert max(durations) <= 1.0, [round(duration, 3) for duration in durations]


# 7. Several servers on one PostgreSQL database

def test_two_servers_deliver_each_event_once(databases, server_factory, receivers):
    receiver = receivers()
    receiver.down()
    url = databases.create("postgresql")
    servers = [server_factory("postgresql", database_url=url, **FAST_RETRIES) for _ in range(2)]
    names = [f"shop{number}" for number in range(20)]
    for index, name in enumerate(names):
        create_instance(servers[index % 2], name, webhook={"url": receiver.url()})
    key_ids = {name: [] for name in names}
    for number in range(9):
        for index, name in enumerate(names):
            key_ids[name].append(send_text(servers[(index + number) % 2], name, f"message {number}")["key"]["id"])
    # 20 INSTANCE_CREATE and 180 SEND_MESSAGE deliveries are queued; 180 MESSAGES_UPDATE follow.
    receiver.up()

    receiver.wait_for_count(380, 90)
    time.sleep(1)
    deliveries = receiver.snapshot()
    webhook_ids = [delivery.webhook_id for delivery in deliveries]
    repeated = {webhook_id for webhook_id in webhook_ids if webhook_ids.count(webhook_id) > 1}
    assert repeated == set()
    assert len(deliveries) == 380
    for name in names:
        per_instance = [delivery for delivery in deliveries if delivery.json["instance"] == name]
        assert sequence(per_instance) == created_sent_then_acknowledged(key_ids[name]), name
        assert set(message_statuses(servers[0], name).values()) == {"SERVER_ACK"}, name


# 8. delay on sendText

def test_delay_defers_delivery_not_response(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url(), "events": ["SEND_MESSAGE"]})

    started = time.monotonic()
    delayed = send_text(server, "shop1", "later", delay=2000)
    response_seconds = time.monotonic() - started
    assert delayed["status"] == "PENDING"
    immediate_sent_at = time.monotonic()
    immediate = send_text(server, "shop1", "now")

    deliveries = receiver.wait_for_count(2, 10, event="send.message")
    assert response_seconds < 1.0
    # The delayed message becomes due later, so the one sent after it arrives first.
    assert [message_key_id(delivery) for delivery in deliveries] == [immediate["key"]["id"], delayed["key"]["id"]]
    assert deliveries[0].arrived_at - immediate_sent_at < 1.0
    assert deliveries[1].arrived_at - started >= 2.0
    assert deliveries[1].arrived_at - started < 5.0
    assert deliveries[1].json["data"] == delayed


# 9. The global receiver

def test_global_receiver_gets_every_instance(backend, server_factory, receivers):
    global_receiver, own_receiver = receivers(), receivers()
    global_secret = "global-secret-" + secrets.token_hex(8)
    server = server_factory(
        backend, WEBHOOK_GLOBAL_ENABLED="true", WEBHOOK_GLOBAL_URL=global_receiver.url("/global/?src=evogate"),
        WEBHOOK_GLOBAL_SECRET=global_secret, WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS="true", **FAST_RETRIES,
    )
    _, hooked_token = create_instance(server, "hooked", webhook={"url": own_receiver.url(), "headers": {"X-Own": "1"}})
    _, bare_token = create_instance(server, "bare")
    hooked_id = send_text(server, "hooked", "to own receiver")["key"]["id"]
    bare_id = send_text(server, "bare", "global only")["key"]["id"]

    global_receiver.wait_for_count(1, 10, event="messages.update", instance="hooked")
    bare_delivery = global_receiver.wait_for_count(1, 10, event="send.message", instance="bare")[0]
    global_receiver.wait_for(lambda _: bare_delivery.response_status == 200, 5, "the response to bare's send.message")
    time.sleep(1)
    assert message_statuses(server, "bare") == {bare_id: "PENDING"}
    assert message_statuses(server, "hooked") == {hooked_id: "SERVER_ACK"}

    deliveries = global_receiver.snapshot()
    assert sorted((delivery.json["instance"], delivery.event) for delivery in deliveries) == [
        ("bare", "instance.create"), ("bare", "send.message"),
        ("hooked", "instance.create"), ("hooked", "messages.update"), ("hooked", "send.message"),
    ]
    own_ids = {delivery.webhook_id for delivery in own_receiver.snapshot()}
    for delivery in deliveries:
        assert delivery.headers["x-webhook-signature"] == expected_signature(global_secret, delivery)
        assert delivery.target == f"/global/{kebab(delivery.event)}?src=evogate"
        assert delivery.json["destination"] == global_receiver.url(f"/global/{kebab(delivery.event)}?src=evogate")
        assert delivery.webhook_id not in own_ids
        assert "x-own" not in delivery.headers
        for forbidden in (hooked_token, bare_token, GLOBAL_KEY, global_secret):
            assert forbidden.encode() not in delivery.body

    # A global receiver that fails for good changes no status either.
    global_receiver.respond(400)
    second_hooked_id = send_text(server, "hooked", "global refuses")["key"]["id"]
    second_bare_id = send_text(server, "bare", "global refuses")["key"]["id"]
    global_receiver.wait_for_count(2, 10, event="send.message", instance="bare")
    wait_for_statuses(server, "hooked", [second_hooked_id], "SERVER_ACK", 10)
    time.sleep(1)
    assert message_statuses(server, "bare") == {bare_id: "PENDING", second_bare_id: "PENDING"}
    assert message_statuses(server, "hooked")[second_hooked_id] == "SERVER_ACK"


# 10. WEBHOOK_BLOCK_PRIVATE_NETWORKS

PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "http://192.168.1.10/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://0.0.0.0/hook",
]


def test_block_private_networks_refuses_urls(backend, server_factory):
    server = server_factory(backend, WEBHOOK_BLOCK_PRIVATE_NETWORKS="true")
    create_instance(server, "shop1")

    for url in PRIVATE_URLS:
        status, _, body = server.request("POST", "/webhook/set/shop1", GLOBAL_KEY,
                                         {"webhook": {"enabled": True, "url": url}})
        assert status == 400, (url, body)
        status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY,
                                         {"instanceName": "shop2", "webhook": {"url": url}})
        assert status == 400, (url, body)
    assert find_webhook(server, "shop1") is None
    status, _, _ = server.request("GET", "/instance/fetchInstances?instanceName=shop2", GLOBAL_KEY)
    assert status == 404


def test_blocked_networks_stop_queued_deliveries(backend, databases, server_factory, receivers):
    receiver = receivers()
    receiver.down()
    url = databases.create(backend)
    server = server_factory(backend, database_url=url, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    key_id = send_text(server, "shop1", "queued to loopback")["key"]["id"]
    server.stop()

    server = server_factory(backend, database_url=url, WEBHOOK_BLOCK_PRIVATE_NETWORKS="true", **FAST_RETRIES)
    receiver.up()
    wait_for_statuses(server, "shop1", [key_id], "ERROR", 15)
    time.sleep(1)
    assert receiver.snapshot() == []


# Header values that HTTP cannot carry

def test_unencodable_header_value_stalls_nothing(server_factory, receivers):
    """A header value outside Latin-1 is refused at set time, or its delivery ends.

    SQLite only: the failure is in sending, not in the database.
    """
    receiver = receivers()
    server = server_factory("sqlite", WEBHOOK_RETRY_MAX_ATTEMPTS="1", WEBHOOK_REQUEST_TIMEOUT_MS="1000")
    create_instance(server, "shop1")

    status, _, body = server.request("POST", "/webhook/set/shop1", GLOBAL_KEY, {"webhook": {
        "enabled": True, "url": receiver.url(), "headers": {"X-Label": "日本"},
    }})
    if status == 400:
        return  # rejected where the caller can fix it
    assert status == 201, body
    key_id = send_text(server, "shop1", "label outside Latin-1")["key"]["id"]

    # One attempt is allowed, so the message settles at once, or when a 7-second lease ends.
    deadline = time.monotonic() + 8
    while message_statuses(server, "shop1")[key_id] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert message_statuses(server, "shop1")[key_id] in ("SERVER_ACK", "ERROR")


def test_request_timeout_bounds_slow_response(server_factory, receivers):
    """WEBHOOK_REQUEST_TIMEOUT_MS bounds a whole attempt, also while the receiver is still sending its response.

    SQLite only: the timeout is the sender's, not the database's.
    """
    receiver = receivers()
    receiver.trickle(12)  # a 200 response that takes 12 seconds to arrive
    server = server_factory("sqlite", WEBHOOK_REQUEST_TIMEOUT_MS="2000", WEBHOOK_RETRY_MAX_ATTEMPTS="2",
                            WEBHOOK_RETRY_INITIAL_DELAY_SECONDS="0.2", WEBHOOK_RETRY_MAX_DELAY_SECONDS="1")
    create_instance(server, "shop1", webhook={"url": receiver.url(), "events": ["SEND_MESSAGE"]})
    key_id = send_text(server, "shop1", "slow response")["key"]["id"]

    # Two attempts of at most 2 seconds each, with one back-off delay between them.
    deadline = time.monotonic() + 10
    while message_statuses(server, "shop1")[key_id] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert message_statuses(server, "shop1")[key_id] == "ERROR"
    assert len(receiver.snapshot()) == 2


def test_new_instance_not_queued_behind_deleted_one(server_factory, receivers):
    """SQLite may give a new instance the row id of a deleted one; their queues stay apart.

    SQLite only: PostgreSQL never reuses a sequence value.
    """
    down_receiver, up_receiver = receivers(), receivers()
    down_receiver.down()
    server = server_factory("sqlite", WEBHOOK_RETRY_INITIAL_DELAY_SECONDS="30", WEBHOOK_RETRY_MAX_DELAY_SECONDS="30")
    create_instance(server, "old-shop", webhook={"url": down_receiver.url(), "events": ["SEND_MESSAGE"]})
    send_text(server, "old-shop", "stuck behind a receiver that is down")
    assert server.request("DELETE", "/instance/delete/old-shop", GLOBAL_KEY)[0] == 200

    create_instance(server, "new-shop", webhook={"url": up_receiver.url(), "events": ["INSTANCE_CREATE"]})

    created = up_receiver.wait_for_count(1, 10, event="instance.create", instance="new-shop")
    assert len(created) == 1


# 11. Batches: a queue's due events are leased together and sent in order by one thread

def test_backlog_longer_than_batch_in_order(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url(), "events": ["SEND_MESSAGE"]})

    receiver.down()
    # More than the 20 events one batch takes, so the queue goes over several batches.
    key_ids = [send_text(server, "shop1", f"backlog {number}")["key"]["id"] for number in range(45)]
    receiver.up()

    deliveries = receiver.wait_for_count(45, 30, event="send.message")
    wait_for_statuses(server, "shop1", key_ids, "SERVER_ACK", 10)
    time.sleep(0.5)
    deliveries = receiver.snapshot()
    assert [message_key_id(delivery) for delivery in deliveries] == key_ids
    assert len({delivery.webhook_id for delivery in deliveries}) == 45


def test_sigkill_mid_batch_repeats_unrecorded(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url(), "events": ["SEND_MESSAGE"]})

    receiver.down()
    key_ids = [send_text(server, "shop1", f"batched {number}")["key"]["id"] for number in range(3)]
    receiver.hang(60)
    receiver.up()
    # The three events are leased as one batch once the receiver is up again. The first gets a
    # 200 response, and the second is held open while the server is killed.
    first = receiver.wait_for_count(1, 10, event="send.message")[0]
    receiver.hang(60)
    second = receiver.wait_for_count(2, 10, event="send.message")[1]
    server.stop(signal.SIGKILL)
    receiver.respond(200)
    assert [message_key_id(first), message_key_id(second)] == key_ids[:2]
    server.start()

    wait_for_statuses(server, "shop1", key_ids, "SERVER_ACK", 30)
    time.sleep(0.5)
    repeated = receiver.snapshot()[2:]
    # Whatever was not recorded before the kill is sent again, in order, with its own X-Webhook-Id.
    assert [message_key_id(delivery) for delivery in repeated] in (key_ids, key_ids[1:])
    first_ids = {message_key_id(delivery): delivery.webhook_id for delivery in (first, second)}
    for delivery in repeated:
        key_id = message_key_id(delivery)
        if key_id in first_ids:
            assert delivery.webhook_id == first_ids[key_id], key_id
        assert delivery.body == next(d.body for d in receiver.snapshot() if message_key_id(d) == key_id)
