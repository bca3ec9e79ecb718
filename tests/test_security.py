"""Security hardening against real gunicorn: failed-authentication throttling, rotation of the
global key, and the headers of every response.

The failure count lives in the shared Redis at 127.0.0.1:6379 and outlives a test run, so
every test sends from client addresses of its own: random `X-Forwarded-For: 10.x.y.z` values
behind TRUSTED_PROXY_COUNT=1, or random 127.x.y.z source addresses without it.
"""

import re
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

import auth
from app import create_app
from database import upgrade_schema
from tests.conftest import GLOBAL_KEY, app_settings
from tests.server import Gunicorn

REDIS_URL = "redis://127.0.0.1:6379/0"
# A per-hour window, so that the count of a slow run is not reset mid-test.
LIMIT = 5
HOURLY_LIMIT = f"{LIMIT}/hour"
FETCH = "/instance/fetchInstances"
PREVIOUS_KEY = "test-previous-key-" + secrets.token_hex(16)
# Makes gunicorn's access log name the worker process that served each request.
WORKER_PID_ACCESS_LOG = '--access-logformat "access pid=%(p)s status=%(s)s client=%(h)s"'
WORKER_PID_PATTERN = re.compile(r"access pid=<(\d+)> status=(\d+) client=(\S+)")


def random_forwarded_address() -> str:
    """Return a random 10.x.y.z address, used only as an X-Forwarded-For value."""
    return "10.{}.{}.{}".format(*(secrets.randbelow(254) + 1 for _ in range(3)))


def random_loopback_address() -> str:
    """Return a random 127.x.y.z source address outside 127.0.0.0/24, which the nginx tests use."""
    return "127.{}.{}.{}".format(*(secrets.randbelow(254) + 1 for _ in range(3)))


def forwarded_for(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def wrong_key() -> str:
    """Return a random key shaped like an instance token, which matches no key of the server."""
    return secrets.token_hex(16).upper()


def assert_throttled_answer(status: int, headers: dict, body, window_seconds: int) -> None:
    """Check a 429 in the JSON error shape with a Retry-After that lies within the window."""
    assert status == 429, body
    assert headers["Content-Type"] == "application/json"
    assert body["statusCode"] == 429
    assert body["error"] == "Too Many Requests"
    assert set(body) == {"statusCode", "error", "message"}
    assert "Retry-After" in headers, headers
    assert 0 < int(headers["Retry-After"]) <= window_seconds, headers["Retry-After"]


def auth_failure_clients(log: str) -> list[str]:
    """Return the client address of every failed-authentication line in a gunicorn log."""
    return re.findall(r"Authentication failed: reason=\w+ .* client=(\S+)", log)


@pytest.fixture
def redis_url() -> str:
    """Return the URL of the shared Redis for throttling counts, failing the test when Redis does not respond."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis at {REDIS_URL} does not respond ({error}); start redis-server on 127.0.0.1:6379")
    finally:
        client.close()
    return REDIS_URL


# Throttling


def check_throttling(server: Gunicorn, limit: int, window_seconds: int) -> None:
    """Drive one address past the limit, then check the responses to it, to health probes and to another address."""
    attacker = forwarded_for(random_forwarded_address())
    bystander = forwarded_for(random_forwarded_address())

    for attempt in range(1, limit + 1):
        status, _, body = server.request("GET", FETCH, wrong_key(), headers=attacker)
        assert status == 401, f"failure {attempt} of {limit}: {body}"
        assert body == {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"}

    assert_throttled_answer(*server.request("GET", FETCH, wrong_key(), headers=attacker), window_seconds)
    assert_throttled_answer(*server.request("GET", FETCH, GLOBAL_KEY, headers=attacker), window_seconds)
    assert_throttled_answer(
        *server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "late"}, headers=attacker),
        window_seconds,
    )
    for probe in ("/health/live", "/health/ready", "/"):
        status, _, body = server.request("GET", probe, headers=attacker)
        assert status == 200, f"{probe} from a throttled address: {body}"

    status, _, body = server.request("GET", FETCH, GLOBAL_KEY, headers=bystander)
    assert status == 200, body
    status, _, body = server.request("GET", FETCH, wrong_key(), headers=bystander)
    assert status == 401, body


def test_throttle_with_redis(backend, server_factory, redis_url):
    server = server_factory(
        backend, AUTHENTICATION_FAILURE_LIMIT=HOURLY_LIMIT, RATELIMIT_STORAGE_URI=redis_url, TRUSTED_PROXY_COUNT="1"
    )
    check_throttling(server, LIMIT, 3600)


def test_throttle_with_memory_storage(server_factory):
    server = server_factory("sqlite", workers=1, AUTHENTICATION_FAILURE_LIMIT=f"{LIMIT}/minute", TRUSTED_PROXY_COUNT="1")
    check_throttling(server, LIMIT, 60)


def test_forbidden_not_counted(backend, server_factory, redis_url):
    server = server_factory(
        backend, AUTHENTICATION_FAILURE_LIMIT=HOURLY_LIMIT, RATELIMIT_STORAGE_URI=redis_url, TRUSTED_PROXY_COUNT="1"
    )
    client = forwarded_for(random_forwarded_address())
    token = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop-a"}, headers=client)[2]["hash"]
    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop-b"}, headers=client)
    assert status == 201, body

    for attempt in range(1, 2 * LIMIT + 1):
        status, _, body = server.request("GET", "/instance/connectionState/shop-b", token, headers=client)
        assert status == 403, f"wrong-instance request {attempt}: {body}"
    status, _, body = server.request("POST", "/instance/create", token, {"instanceName": "shop-c"}, headers=client)
    assert status == 403, body
    status, _, body = server.request("GET", "/instance/connectionState/shop-a", token, headers=client)
    assert status == 200, body

    # The 403s were not counted, so exactly LIMIT more failures get 401.
    for attempt in range(1, LIMIT + 1):
        status, _, body = server.request("GET", FETCH, wrong_key(), headers=client)
        assert status == 401, f"failure {attempt} of {LIMIT} after the 403s: {body}"
    assert_throttled_answer(*server.request("GET", FETCH, wrong_key(), headers=client), 3600)


def test_count_shared_across_workers(backend, server_factory, redis_url):
    limit = 20
    concurrency = 8
    server = server_factory(
        backend, workers=4, AUTHENTICATION_FAILURE_LIMIT=f"{limit}/hour", RATELIMIT_STORAGE_URI=redis_url,
        TRUSTED_PROXY_COUNT="1", GUNICORN_CMD_ARGS=WORKER_PID_ACCESS_LOG,
    )
    # The kernel hands connections to whichever worker accepts first, so on a busy machine one
    # worker may take a whole burst; a burst that reached one worker proves nothing, so up to
    # three bursts are sent, each from a new address.
    for _burst in range(3):
        address = random_forwarded_address()

        def send_failure(_attempt: int, address=address) -> int:
            return server.request("GET", FETCH, wrong_key(), headers=forwarded_for(address))[0]

        # Parallel requests keep all four workers busy, so the failures spread over them.
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = Counter(pool.map(send_failure, range(4 * limit)))

        assert set(statuses) == {401, 429}, statuses
        # A request is checked against the count before it is answered and counted after, so
        # requests in flight together can pass the limit by fewer than the number of workers.
        # A count kept per worker would allow up to four times the limit.
        assert limit <= statuses[401] < limit + 4, statuses
        workers_that_failed_keys = {
            pid for pid, status, client in WORKER_PID_PATTERN.findall(server.log())
            if status == "401" and client == address
        }
        if len(workers_that_failed_keys) >= 2:
            break
    assert len(workers_that_failed_keys) >= 2, f"all failures went to workers {workers_that_failed_keys}"
    assert_throttled_answer(*server.request("GET", FETCH, GLOBAL_KEY, headers=forwarded_for(address)), 3600)


def test_count_shared_across_servers(backend, databases, server_factory, redis_url):
    database_url = databases.create(backend)
    settings = {
        "AUTHENTICATION_FAILURE_LIMIT": HOURLY_LIMIT,
        "RATELIMIT_STORAGE_URI": redis_url,
        "TRUSTED_PROXY_COUNT": "1",
    }
    servers = [server_factory(backend, database_url=database_url, **settings) for _ in range(2)]
    attacker = forwarded_for(random_forwarded_address())
    bystander = forwarded_for(random_forwarded_address())

    for attempt in range(1, LIMIT + 1):
        status, _, body = servers[attempt % 2].request("GET", FETCH, wrong_key(), headers=attacker)
        assert status == 401, f"failure {attempt} of {LIMIT}, alternating servers: {body}"

    for server in servers:
        assert_throttled_answer(*server.request("GET", FETCH, GLOBAL_KEY, headers=attacker), 3600)
        status, _, body = server.request("GET", FETCH, GLOBAL_KEY, headers=bystander)
        assert status == 200, body


def test_brute_force_throttled(backend, server_factory, redis_url):
    limit = 10
    attempts = 100
    server = server_factory(
        backend, AUTHENTICATION_FAILURE_LIMIT=f"{limit}/hour", RATELIMIT_STORAGE_URI=redis_url, TRUSTED_PROXY_COUNT="1"
    )
    attacker_address = random_forwarded_address()
    attacker = forwarded_for(attacker_address)
    user = forwarded_for(random_forwarded_address())
    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "target"}, headers=user)
    assert status == 201, body
    token = body["hash"]

    attacker_statuses = Counter()
    user_statuses = Counter()
    for attempt in range(attempts):
        guess = wrong_key()
        # Correct guesses once throttled must be refused like the wrong ones.
        if attempt == 50:
            guess = token
        if attempt == 75:
            guess = GLOBAL_KEY
        attacker_statuses[server.request("GET", "/instance/connectionState/target", guess, headers=attacker)[0]] += 1
        if attempt % 10 == 0:
            user_statuses[server.request("GET", "/instance/connectionState/target", token, headers=user)[0]] += 1

    assert attacker_statuses[200] == 0, attacker_statuses
    assert attacker_statuses[401] == limit, attacker_statuses
    assert attacker_statuses[429] == attempts - limit, attacker_statuses
    assert user_statuses == {200: attempts // 10}
    # A throttled request gets 429 before its key is looked at, so only the first
    # `limit` guesses were ever checked and logged.
    assert auth_failure_clients(server.log()).count(attacker_address) == limit


def test_forged_forwarded_for_ignored(server_factory, redis_url):
    server = server_factory("sqlite", AUTHENTICATION_FAILURE_LIMIT=HOURLY_LIMIT, RATELIMIT_STORAGE_URI=redis_url)
    attacker = random_loopback_address()
    forged_addresses = [random_forwarded_address() for _ in range(LIMIT + 2)]

    for attempt, forged in enumerate(forged_addresses[:LIMIT], start=1):
        status, _, body = server.request_from(attacker, "GET", FETCH, wrong_key(), headers=forwarded_for(forged))
        assert status == 401, f"failure {attempt} of {LIMIT}: {body}"
    assert_throttled_answer(
        *server.request_from(attacker, "GET", FETCH, wrong_key(), headers=forwarded_for(forged_addresses[-2])), 3600
    )
    assert_throttled_answer(
        *server.request_from(attacker, "GET", FETCH, GLOBAL_KEY, headers=forwarded_for(forged_addresses[-1])), 3600
    )

    status, _, body = server.request_from(random_loopback_address(), "GET", FETCH, GLOBAL_KEY)
    assert status == 200, body
    assert set(auth_failure_clients(server.log())) == {attacker}


# Rotation of the global key


def test_previous_key_accepted(backend, server_factory):
    server = server_factory(backend, AUTHENTICATION_API_KEY_PREVIOUS=PREVIOUS_KEY)

    status, _, body = server.request("POST", "/instance/create", PREVIOUS_KEY, {"instanceName": "old-key"})
    assert status == 201, body
    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "new-key"})
    assert status == 201, body
    for key in (PREVIOUS_KEY, GLOBAL_KEY):
        status, _, body = server.request("GET", FETCH, key)
        assert status == 200, body
        assert [instance["name"] for instance in body] == ["old-key", "new-key"]


def test_previous_key_not_instance_token(backend, server_factory):
    server = server_factory(backend, AUTHENTICATION_API_KEY_PREVIOUS=PREVIOUS_KEY)

    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "clash", "token": PREVIOUS_KEY})
    assert status == 400, body
    assert body["message"] == "Token already exists"
    status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop"})
    assert status == 201, body
    token = body["hash"]
    status, _, body = server.request("POST", "/instance/rotateToken/shop", GLOBAL_KEY, {"token": PREVIOUS_KEY})
    assert status == 400, body
    assert body["message"] == "Token already exists"

    status, _, body = server.request("GET", FETCH, GLOBAL_KEY)
    assert [instance["name"] for instance in body] == ["shop"]
    # The refused rotation kept the old token.
    status, _, body = server.request("GET", "/instance/connectionState/shop", token)
    assert status == 200, body


def test_previous_key_use_logged_once(server_factory):
    server = server_factory("sqlite", workers=1, AUTHENTICATION_API_KEY_PREVIOUS=PREVIOUS_KEY)

    for attempt in range(1, 21):
        status, _, body = server.request("GET", FETCH, PREVIOUS_KEY)
        assert status == 200, f"request {attempt}: {body}"

    log = server.log()
    mentions = [line for line in log.splitlines() if "AUTHENTICATION_API_KEY_PREVIOUS" in line]
    assert len(mentions) == 1, mentions
    assert " WARNING " in mentions[0]
    assert PREVIOUS_KEY not in log
    assert GLOBAL_KEY not in log


class FakeClock:
    """A stand-in for the `time` module in `auth`, with a monotonic clock that the test advances."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_previous_key_uses_counted(databases, tmp_path, monkeypatch, caplog):
    """Each use is counted, and the next report a minute later includes the uses in between."""
    clock = FakeClock()
    monkeypatch.setattr(auth, "time", clock)
    monkeypatch.setattr(auth, "previous_key_usage", auth.PreviousKeyUsage())
    settings = app_settings(databases.create("sqlite"), AUTHENTICATION_API_KEY_PREVIOUS=PREVIOUS_KEY)
    app = create_app(settings, instance_path=str(tmp_path / "instance"))
    upgrade_schema(app)
    client = app.test_client()

    with caplog.at_level("WARNING", logger="auth"):
        for _ in range(20):
            assert client.get(FETCH, headers={"apikey": PREVIOUS_KEY}).status_code == 200
        clock.now += 30
        assert client.get(FETCH, headers={"apikey": PREVIOUS_KEY}).status_code == 200
        clock.now += 31
        assert client.get(FETCH, headers={"apikey": PREVIOUS_KEY}).status_code == 200
        assert client.get(FETCH, headers={"apikey": GLOBAL_KEY}).status_code == 200

    assert auth.previous_key_usage.count == 22
    reports = [record for record in caplog.records if "AUTHENTICATION_API_KEY_PREVIOUS" in record.getMessage()]
    assert len(reports) == 2, [record.getMessage() for record in reports]
    assert [record.levelname for record in reports] == ["WARNING", "WARNING"]
    assert "1 uses since the last report, 1 in all" in reports[0].getMessage()
    assert "21 uses since the last report, 22 in all" in reports[1].getMessage()
    assert PREVIOUS_KEY not in caplog.text


@pytest.mark.parametrize(
    "weak_key",
    ["short-previous-key", "429683C4C977415CAAFCCE10F7D57E11", "BQYHJGJHJ"],
    ids=["short", "documented-example", "evolution-default"],
)
def test_weak_previous_key_refused(databases, weak_key):
    settings = app_settings(databases.create("sqlite"), AUTHENTICATION_API_KEY_PREVIOUS=weak_key)
    server = Gunicorn(settings, workers=1, name="gunicorn-weak-previous-key")
    try:
        with pytest.raises(RuntimeError, match="gunicorn exited with"):
            server.start(timeout=20)
    finally:
        server.stop()

    assert server.process.returncode != 0
    refusals = [line for line in server.log().splitlines() if "Refusing to start" in line]
    assert len(refusals) == 1, server.log()
    assert "AUTHENTICATION_API_KEY_PREVIOUS" in refusals[0]
    if weak_key == "short-previous-key":
        assert weak_key not in server.log()


# Response headers


def test_token_answers_not_cached(backend, server):
    status, headers, body = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop"})
    assert status == 201, body
    assert headers.get("Cache-Control") == "no-store"

    status, headers, body = server.request("POST", "/instance/rotateToken/shop", GLOBAL_KEY)
    assert status == 200, body
    assert headers.get("Cache-Control") == "no-store"

    status, headers, body = server.request("POST", "/instance/rotateToken/shop", GLOBAL_KEY, {"token": "custom-token-" + secrets.token_hex(8)})
    assert status == 200, body
    assert headers.get("Cache-Control") == "no-store"


def test_nosniff_on_every_answer(server_factory, redis_url):
    server = server_factory(
        "sqlite", AUTHENTICATION_FAILURE_LIMIT="1/hour", RATELIMIT_STORAGE_URI=redis_url, TRUSTED_PROXY_COUNT="1"
    )
    user = forwarded_for(random_forwarded_address())
    guesser = forwarded_for(random_forwarded_address())
    status, _, created = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop"}, headers=user)
    assert status == 201, created
    token = created["hash"]
    json_type = {"Content-Type": "application/json"}

    # name: (method, path, key, keyword arguments of request_from, expected status)
    cases = {
        "welcome": ("GET", "/", None, {}, 200),
        "created": ("POST", "/instance/create", GLOBAL_KEY, {"body": {"instanceName": "shop2"}}, 201),
        "invalid body": ("POST", "/instance/create", GLOBAL_KEY, {"body": {}}, 400),
        "forbidden": ("POST", "/instance/create", token, {"body": {"instanceName": "shop3"}}, 403),
        "unknown route": ("GET", "/no/such/route", None, {}, 404),
        "unknown instance": ("GET", "/instance/connectionState/missing", GLOBAL_KEY, {}, 404),
        "wrong method": ("DELETE", "/instance/create", GLOBAL_KEY, {}, 405),
        "too large": (
            "POST", "/message/sendText/shop", GLOBAL_KEY,
            {"data": b"{" + b" " * (1024 * 1024), "headers": json_type}, 413,
        ),
        "wrong content type": (
            "POST", "/instance/create", GLOBAL_KEY,
            {"data": b"instanceName=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
        ),
    }
    statuses = {}
    without_nosniff = []
    for name, (method, path, key, options, _) in cases.items():
        headers = {**user, **options.pop("headers", {})}
        status, reply_headers, _ = server.request_from("127.0.0.1", method, path, key, headers=headers, **options)
        statuses[name] = status
        if reply_headers.get("X-Content-Type-Options") != "nosniff":
            without_nosniff.append(name)
    for name, key in (("unauthorized", wrong_key()), ("throttled", wrong_key()), ("throttled valid key", GLOBAL_KEY)):
        status, reply_headers, _ = server.request("GET", FETCH, key, headers=guesser)
        statuses[name] = status
        if reply_headers.get("X-Content-Type-Options") != "nosniff":
            without_nosniff.append(name)

    expected = {name: case[-1] for name, case in cases.items()}
    expected.update({"unauthorized": 401, "throttled": 429, "throttled valid key": 429})
    assert statuses == expected
    assert without_nosniff == []


def test_server_header_without_version(server):
    for method, path, key in (("GET", "/", None), ("GET", FETCH, GLOBAL_KEY), ("GET", "/no/such/route", None)):
        status, headers, _ = server.request(method, path, key)
        server_header = headers.get("Server", "")
        assert not re.search(r"\d", server_header), f"{method} {path} ({status}): Server: {server_header}"


def test_limit_headers_only_on_throttled_answer(server_factory):
    server = server_factory("sqlite", workers=1, AUTHENTICATION_FAILURE_LIMIT="3/minute", TRUSTED_PROXY_COUNT="1")
    client = forwarded_for(random_forwarded_address())

    statuses = []
    for _ in range(4):
        status, headers, _ = server.request("GET", "/instance/fetchInstances", wrong_key(), headers=client)
        statuses.append((status, "Retry-After" in headers, any(name.startswith("X-RateLimit") for name in headers)))
    status, headers, _ = server.request("GET", "/instance/fetchInstances", GLOBAL_KEY)

    assert statuses == [(401, False, False)] * 3 + [(429, True, False)]
    assert status == 200
    assert "Retry-After" not in headers
