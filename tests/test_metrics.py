"""GET /metrics through the test client: access rules, label values and the gauges of stored state."""

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select, update

import delivery
from app import create_app
from config import ConfigError, load_settings
from models import DELIVERED, FAILED, Event, db, utc_now
from tests.conftest import GLOBAL_KEY, POSTGRES_URL, app_settings
from tests.scrape import Samples, parse_samples, sample_value, series_of

ALLOW_LIST = "10.0.0.0/8,192.0.2.7,2001:db8::/32"
RECEIVER = "http://127.0.0.1:9/hook"
UNAUTHORIZED = {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"}
FORBIDDEN = {"statusCode": 403, "error": "Forbidden", "message": "Forbidden"}


def scrape(client) -> Samples:
    response = client.get("/metrics", headers={"apikey": GLOBAL_KEY})
    assert response.status_code == 200, response.get_data(as_text=True)
    return parse_samples(response.get_data(as_text=True))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample_value(after, name, **labels) - sample_value(before, name, **labels)


@pytest.fixture
def make_app(app, tmp_path):
    """Build another app with extra settings on the test database, which the `app` fixture empties."""
    made = []

    def make(**settings: str):
        other = create_app(app_settings(app.config["SQLALCHEMY_DATABASE_URI"], **settings), instance_path=str(tmp_path))
        other.config["WEBHOOK_DELIVERY_WORKER"] = False
        made.append(other)
        return other

    yield make
    for other in made:
        with other.app_context():
            db.engine.dispose()


def test_metrics_need_global_key(api):
    _, token = api.create_instance("shop1")

    missing = api.request("GET", "/metrics")
    assert missing.status_code == 401
    assert missing.get_json() == UNAUTHORIZED

    unknown = api.request("GET", "/metrics", "not-a-key-" + secrets.token_hex(8))
    assert unknown.status_code == 401
    assert unknown.get_json() == UNAUTHORIZED

    instance_token = api.request("GET", "/metrics", token)
    assert instance_token.status_code == 403
    assert instance_token.get_json() == FORBIDDEN

    allowed = api.request("GET", "/metrics", GLOBAL_KEY)
    assert allowed.status_code == 200
    assert allowed.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert token not in allowed.get_data(as_text=True)
    assert GLOBAL_KEY not in allowed.get_data(as_text=True)


def test_openmetrics_when_scraper_asks(api):
    response = api.request(
        "GET", "/metrics", GLOBAL_KEY, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_authentication_failures_counted_by_reason(client, api):
    _, token = api.create_instance("shop1")
    before = scrape(client)

    for _ in range(2):
        api.request("GET", "/instance/fetchInstances")
    for _ in range(3):
        api.request("GET", "/instance/fetchInstances", "not-a-key-" + secrets.token_hex(8))
    api.create("shop2", key=token)
    api.request("GET", "/instance/connectionState/shop2", token)

    after = scrape(client)
    assert delta(before, after, "evogate_authentication_failures_total", reason="missing") == 2
    assert delta(before, after, "evogate_authentication_failures_total", reason="unknown") == 3
    assert delta(before, after, "evogate_authentication_failures_total", reason="forbidden") == 2


def test_requests_counted_by_route_template(client, api):
    _, token = api.create_instance("shop1")
    before = scrape(client)

    for _ in range(2):
        api.request("GET", "/instance/connectionState/shop1", token)
    assert api.request("GET", "/no/such/path/shop1").status_code == 404
    assert api.request("DELETE", "/instance/create", GLOBAL_KEY).status_code == 405
    assert client.open("/", method="BREW").status_code == 405

    after = scrape(client)
    route = "/instance/connectionState/<name>"
    requests = "evogate_http_requests_total"
    assert delta(before, after, requests, route=route, method="GET", status="200") == 2
    assert delta(before, after, "evogate_http_request_duration_seconds_count", route=route, method="GET") == 2
    assert delta(before, after, requests, route="unmatched", method="GET", status="404") == 1
    assert delta(before, after, requests, route="unmatched", method="DELETE", status="405") == 1
    assert delta(before, after, requests, route="unmatched", method="other", status="405") == 1
    assert not any("shop1" in value for labels in series_of(after, requests) for _, value in labels)


def test_instances_gauge_by_state(client, api):
    api.create_instance("shop1")
    api.create_instance("shop2")
    api.create_instance("shop3")
    api.request("DELETE", "/instance/logout/shop2", GLOBAL_KEY)

    samples = scrape(client)

    assert sample_value(samples, "evogate_database_up") == 1
    assert sample_value(samples, "evogate_instances", state="open") == 2
    assert sample_value(samples, "evogate_instances", state="close") == 1
    assert ("evogate_instances", frozenset({("state", "connecting")})) in samples
    assert sample_value(samples, "evogate_instances", state="connecting") == 0


def test_outbox_gauges_count_pending_and_failed(app, client, api):
    # Each instance queues INSTANCE_CREATE for its receiver; nothing delivers in the test process.
    for name in ("shop1", "shop2", "shop3", "shop4"):
        api.create_instance(name, webhook={"url": RECEIVER})
    with app.app_context():
        first, second = db.session.scalars(select(Event.pk).order_by(Event.pk).limit(2))
        db.session.execute(update(Event).where(Event.pk == first).values(status=FAILED))
        db.session.execute(update(Event).where(Event.pk == second).values(status=DELIVERED))
        db.session.commit()

    samples = scrape(client)

    assert sample_value(samples, "evogate_outbox_pending_events") == 2
    assert sample_value(samples, "evogate_outbox_failed_events") == 1


def test_delivery_attempts_counted_by_outcome(app, client, api):
    api.create_instance("shop1", webhook={"url": RECEIVER})
    api.request("DELETE", "/instance/logout/shop1", GLOBAL_KEY)
    before = scrape(client)

    with app.app_context():
        def claim() -> delivery.Batch:
            [batch] = delivery.record_and_claim([], max_queues=10, batch_size=1, lease_seconds=30)
            return batch

        def record(batch: delivery.Batch, outcome: delivery.Outcome) -> None:
            delivery.record_and_claim([(batch, [outcome])], max_queues=0, batch_size=1, lease_seconds=30)

        first = claim()
        record(first, delivery.Outcome(delivered=False, retryable=True, error="timed out"))
        event_pk = first.claims[0].pk
        db.session.execute(update(Event).where(Event.pk == event_pk).values(next_attempt_at=utc_now() - timedelta(1)))
        db.session.commit()
        retry = claim()
        assert retry.claims[0].pk == event_pk
        record(retry, delivery.Outcome(delivered=False, retryable=False, status_code=404))
        record(claim(), delivery.Outcome(delivered=True, retryable=False, status_code=200))

    after = scrape(client)
    attempts = "evogate_webhook_delivery_attempts_total"
    assert delta(before, after, attempts, outcome="will_retry") == 1
    assert delta(before, after, attempts, outcome="gave_up") == 1
    assert delta(before, after, attempts, outcome="delivered") == 1
    assert sample_value(after, "evogate_outbox_failed_events") == 1


@pytest.mark.parametrize("address", ["10.1.2.3", "192.0.2.7", "2001:db8::5", "::ffff:10.9.9.9"])
def test_allowed_address_needs_no_key(make_app, address):
    client = make_app(METRICS_ALLOWED_IPS=ALLOW_LIST).test_client()

    response = client.get("/metrics", environ_base={"REMOTE_ADDR": address})

    assert response.status_code == 200
    assert "evogate_http_requests_total" in response.get_data(as_text=True)


@pytest.mark.parametrize("address", ["192.0.2.8", "11.0.0.1", "2001:db9::1", "127.0.0.1"])
def test_other_address_needs_key(make_app, address):
    client = make_app(METRICS_ALLOWED_IPS=ALLOW_LIST).test_client()

    response = client.get("/metrics", environ_base={"REMOTE_ADDR": address})

    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


def test_allowed_address_with_key_is_checked(make_app):
    app = make_app(METRICS_ALLOWED_IPS=ALLOW_LIST)
    client = app.test_client()
    created = client.post("/instance/create", json={"instanceName": "shop1"}, headers={"apikey": GLOBAL_KEY})
    token = created.get_json()["hash"]
    scraper = {"REMOTE_ADDR": "10.1.2.3"}

    assert client.get("/metrics", headers={"apikey": "not-a-key-123456"}, environ_base=scraper).status_code == 401
    assert client.get("/metrics", headers={"apikey": token}, environ_base=scraper).status_code == 403
    assert client.get("/metrics", headers={"apikey": GLOBAL_KEY}, environ_base=scraper).status_code == 200


def test_allowed_address_opens_only_metrics(make_app):
    client = make_app(METRICS_ALLOWED_IPS=ALLOW_LIST).test_client()

    response = client.get("/instance/fetchInstances", environ_base={"REMOTE_ADDR": "10.1.2.3"})

    assert response.status_code == 401


@pytest.mark.parametrize(("proxy_count", "status"), [("1", 200), ("0", 401)])
def test_allowed_address_behind_proxy(make_app, proxy_count, status):
    client = make_app(METRICS_ALLOWED_IPS="10.0.0.0/8", TRUSTED_PROXY_COUNT=proxy_count).test_client()

    response = client.get(
        "/metrics", headers={"X-Forwarded-For": "10.1.2.3"}, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    )

    assert response.status_code == status


def test_scrape_survives_database_outage(tmp_path):
    absent = POSTGRES_URL.rsplit("/", 1)[0] + "/evogate_absent_" + secrets.token_hex(6)
    app = create_app(app_settings(absent), instance_path=str(tmp_path))
    app.config["WEBHOOK_DELIVERY_WORKER"] = False

    response = app.test_client().get("/metrics", headers={"apikey": GLOBAL_KEY})

    assert response.status_code == 200
    samples = parse_samples(response.get_data(as_text=True))
    assert sample_value(samples, "evogate_database_up") == 0
    assert series_of(samples, "evogate_instances") == set()
    with app.app_context():
        db.engine.dispose()


def test_allow_list_parsed_as_networks():
    networks = load_settings({"METRICS_ALLOWED_IPS": " 10.0.0.0/8, 192.0.2.7 ,::1,"})["METRICS_ALLOWED_IPS"]
    assert [str(network) for network in networks] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]
    assert load_settings({})["METRICS_ALLOWED_IPS"] == ()


@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "1.2.3", "10.0.0.0/8;127.0.0.1"])
def test_bad_allow_list_rejected(value):
    with pytest.raises(ConfigError) as raised:
        load_settings({"METRICS_ALLOWED_IPS": value})
    message = str(raised.value)
    assert message.startswith("METRICS_ALLOWED_IPS contains ")
    assert "\n" not in message


def test_metrics_directory_must_be_directory(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert load_settings({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert load_settings({"PROMETHEUS_MULTIPROC_DIR": " "})["PROMETHEUS_MULTIPROC_DIR"] is None
    for path in (tmp_path / "absent", a_file):
        with pytest.raises(ConfigError, match="^PROMETHEUS_MULTIPROC_DIR="):
            load_settings({"PROMETHEUS_MULTIPROC_DIR": str(path)})
