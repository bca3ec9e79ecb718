"""Concurrency through real gunicorn with several workers, on SQLite and on PostgreSQL.

Each request goes out on its own connection, so gunicorn spreads them over its workers.
"""

import hashlib
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import create_engine, text

from config import parse_database_url
from tests.conftest import GLOBAL_KEY, app_settings
from tests.server import Gunicorn

RACING_REQUESTS = 12
RACE_ROUNDS = 3
# Enough sequential requests that every worker of a four-worker server serves several.
SEQUENTIAL_REQUESTS = 20
MIXED_THREADS = 16
MIXED_REQUESTS_PER_THREAD = 12
SERVERS_STARTED_TOGETHER = 3
THREAD_TIMEOUT_SECONDS = 60
TERMINATION_TIMEOUT_SECONDS = 10


def send(server: Gunicorn, method: str, path: str, key: str | None = None, body=None) -> tuple[object, object]:
    """Send one request and return its status and JSON body, with a connection error in place of the status."""
    try:
        status, _, reply = server.request(method, path, key, body)
    except OSError as error:
        return f"connection error: {error}", None
    return status, reply


def run_together(count: int, action) -> list:
    """Call `action(index)` from `count` threads released at the same moment and return the results in order."""
    barrier = threading.Barrier(count)

    def released(index: int):
        barrier.wait(timeout=THREAD_TIMEOUT_SECONDS)
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(released, index) for index in range(count)]
        return [future.result(timeout=THREAD_TIMEOUT_SECONDS) for future in futures]


def count_rows(database_url: str, query: str, **parameters) -> int:
    engine = create_engine(parse_database_url(database_url))
    try:
        with engine.connect() as connection:
            return connection.execute(text(query), parameters).scalar_one()
    finally:
        engine.dispose()


def create_instance(server: Gunicorn, name: str, **fields) -> str:
    """Create an instance and return its token, or fail the test."""
    status, body = send(server, "POST", "/instance/create", GLOBAL_KEY, {"instanceName": name, **fields})
    assert status == 201, body
    return body["hash"]


def statuses_of_sequential_requests(server: Gunicorn, path: str, key: str) -> list:
    return [send(server, "GET", path, key)[0] for _ in range(SEQUENTIAL_REQUESTS)]


@pytest.fixture
def database_url(backend, databases) -> str:
    return databases.create(backend)


def test_concurrent_creates_of_one_name(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)

    for round_number in range(RACE_ROUNDS):
        name = f"race-name-{round_number}"
        results = run_together(
            RACING_REQUESTS, lambda _: send(server, "POST", "/instance/create", GLOBAL_KEY, {"instanceName": name})
        )
        statuses = Counter(status for status, _ in results)
        conflict_messages = {body["message"] for status, body in results if status == 409}
        status, listed = send(server, "GET", f"/instance/fetchInstances?instanceName={name}", GLOBAL_KEY)

        assert statuses == {201: 1, 409: RACING_REQUESTS - 1}
        assert conflict_messages == {f'This name "{name}" is already in use.'}
        assert status == 200
        assert [instance["name"] for instance in listed] == [name]
        assert count_rows(database_url, "SELECT count(*) FROM instances WHERE name = :name", name=name) == 1


def test_concurrent_creates_with_one_token(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)

    for round_number in range(RACE_ROUNDS):
        token = f"shared-token-{round_number}-" + os.urandom(8).hex()
        names = [f"race-token-{round_number}-{index}" for index in range(RACING_REQUESTS)]
        results = run_together(
            RACING_REQUESTS,
            lambda index: send(
                server, "POST", "/instance/create", GLOBAL_KEY, {"instanceName": names[index], "token": token}
            ),
        )
        statuses = Counter(status for status, _ in results)
        clash_messages = {body["message"] for status, body in results if status == 400}
        winners = [names[index] for index, (status, _) in enumerate(results) if status == 201]
        status, listed = send(server, "GET", "/instance/fetchInstances", GLOBAL_KEY)
        digest = hashlib.sha256(token.encode()).hexdigest()

        assert statuses == {201: 1, 400: RACING_REQUESTS - 1}
        assert clash_messages == {"Token already exists"}
        assert status == 200
        assert [instance["name"] for instance in listed if instance["name"] in names] == winners
        assert count_rows(database_url, "SELECT count(*) FROM instances WHERE token_digest = :d", d=digest) == 1
        assert send(server, "GET", f"/instance/connectionState/{winners[0]}", token)[0] == 200


def test_mixed_writes_never_fail(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)
    senders = [f"mixed-sender-{index}" for index in range(4)]
    tokens = {name: create_instance(server, name) for name in senders}
    create_instance(server, "mixed-toggle")
    create_instance(server, "mixed-rotate")

    def request_for(thread: int, step: int) -> tuple[str, str, str, str | None, dict | None]:
        """Return (kind, method, path, key, body) for one step of one thread."""
        sender = senders[(thread + step) % len(senders)]
        text_body = {"number": "5511999999999", "text": f"load {thread}-{step}"}
        kinds = [
            ("sendText", "POST", f"/message/sendText/{sender}", tokens[sender], text_body),
            ("sendText", "POST", f"/message/sendText/{sender}", GLOBAL_KEY, text_body),
            ("create", "POST", "/instance/create", GLOBAL_KEY, {"instanceName": f"mixed-new-{thread}-{step}"}),
            ("fetchInstances", "GET", "/instance/fetchInstances", GLOBAL_KEY, None),
            ("logout", "DELETE", "/instance/logout/mixed-toggle", GLOBAL_KEY, None),
            ("connect", "GET", "/instance/connect/mixed-toggle", GLOBAL_KEY, None),
            ("rotateToken", "POST", "/instance/rotateToken/mixed-rotate", GLOBAL_KEY, None),
        ]
        return kinds[(thread * 3 + step) % len(kinds)]

    def run_thread(thread: int) -> list[tuple[str, object]]:
        results = []
        for step in range(MIXED_REQUESTS_PER_THREAD):
            kind, method, path, key, body = request_for(thread, step)
            results.append((kind, send(server, method, path, key, body)[0]))
        return results

    results = [result for thread_results in run_together(MIXED_THREADS, run_thread) for result in thread_results]
    expected_status = {
        "sendText": 201, "create": 201, "fetchInstances": 200, "logout": 200, "connect": 200, "rotateToken": 200,
    }
    unexpected = Counter((kind, status) for kind, status in results if status != expected_status[kind])
    log = server.log()

    assert len(results) == MIXED_THREADS * MIXED_REQUESTS_PER_THREAD
    assert not [status for _, status in results if not isinstance(status, int) or status >= 500], unexpected
    assert not unexpected
    assert "database is locked" not in log
    assert "Traceback" not in log


def test_rotated_token_rejected_by_every_worker(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)
    first = create_instance(server, "rotate-me")
    path = "/instance/connectionState/rotate-me"
    warm_statuses = statuses_of_sequential_requests(server, path, first)

    status, body = send(server, "POST", "/instance/rotateToken/rotate-me", GLOBAL_KEY)
    second = body["hash"]
    first_statuses = statuses_of_sequential_requests(server, path, first)
    second_statuses = statuses_of_sequential_requests(server, path, second)

    assert warm_statuses == [200] * SEQUENTIAL_REQUESTS
    assert status == 200
    assert first_statuses == [401] * SEQUENTIAL_REQUESTS
    assert second_statuses == [200] * SEQUENTIAL_REQUESTS


def test_self_rotated_token_rejected_by_every_worker(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)
    first = create_instance(server, "self-rotate")
    custom = "custom-rotated-" + os.urandom(8).hex()
    path = "/instance/connectionState/self-rotate"
    warm_statuses = statuses_of_sequential_requests(server, path, first)

    status, body = send(server, "POST", "/instance/rotateToken/self-rotate", first, {"token": custom})
    first_statuses = statuses_of_sequential_requests(server, path, first)
    custom_statuses = statuses_of_sequential_requests(server, path, custom)

    assert warm_statuses == [200] * SEQUENTIAL_REQUESTS
    assert status == 200
    assert body["hash"] == custom
    assert first_statuses == [401] * SEQUENTIAL_REQUESTS
    assert custom_statuses == [200] * SEQUENTIAL_REQUESTS


def test_deleted_token_rejected_by_every_worker(backend, server_factory, database_url):
    server = server_factory(backend, workers=4, database_url=database_url)
    old = create_instance(server, "delete-me")
    path = "/instance/connectionState/delete-me"
    warm_statuses = statuses_of_sequential_requests(server, path, old)

    status, _ = send(server, "DELETE", "/instance/delete/delete-me", GLOBAL_KEY)
    deleted_statuses = statuses_of_sequential_requests(server, path, old)
    new = create_instance(server, "delete-me")
    recreated_statuses = statuses_of_sequential_requests(server, path, old)
    new_statuses = statuses_of_sequential_requests(server, path, new)

    assert warm_statuses == [200] * SEQUENTIAL_REQUESTS
    assert status == 200
    assert deleted_statuses == [401] * SEQUENTIAL_REQUESTS
    assert recreated_statuses == [401] * SEQUENTIAL_REQUESTS
    assert new_statuses == [200] * SEQUENTIAL_REQUESTS


def terminate_connections(database_url: str) -> int:
    """Terminate every other connection to the test's own database and return how many there were.

    pg_terminate_backend only signals a server process, so this waits until each one has
    exited and its socket is closed. The server runs on this machine, as every test assumes.
    """
    database_name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as connection:
        pids = [pid for (pid,) in connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database_name,),
        )]
        for pid in pids:
            connection.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + TERMINATION_TIMEOUT_SECONDS
    while any(process_exists(pid) for pid in pids):
        assert time.monotonic() < deadline, f"server processes {pids} still ran after {TERMINATION_TIMEOUT_SECONDS} s"
        time.sleep(0.01)
    return len(pids)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def database_requests(server: Gunicorn, token: str) -> list:
    """Send requests that each need the database, alternating the token lookup and a listing."""
    paths = ["/instance/connectionState/dropped", "/instance/fetchInstances"]
    return [send(server, "GET", paths[index % 2], token)[0] for index in range(SEQUENTIAL_REQUESTS)]


def test_dropped_connections_replaced(server_factory, databases):
    """Run on PostgreSQL only, because SQLite has no server connection to drop."""
    database_url = databases.create("postgresql")
    server = server_factory("postgresql", workers=2, database_url=database_url)
    token = create_instance(server, "dropped")
    warm_statuses = database_requests(server, token)

    for attempt in range(2):
        terminated = terminate_connections(database_url)
        statuses = database_requests(server, token)
        ready_status = send(server, "GET", "/health/ready")[0]

        assert warm_statuses == [200] * SEQUENTIAL_REQUESTS
        assert terminated >= 1, "no server connection was open to terminate"
        assert statuses[1:] == [200] * (SEQUENTIAL_REQUESTS - 1), f"attempt {attempt}: {statuses}"
        assert statuses[0] == 200, f"attempt {attempt}: the first request after the drop failed"
        assert ready_status == 200
    assert "Traceback" not in server.log()


def test_servers_start_together_on_empty_database(backend, database_url):
    servers = [
        Gunicorn(app_settings(database_url), workers=2, name=f"gunicorn-together-{backend}")
        for _ in range(SERVERS_STARTED_TOGETHER)
    ]

    def start(index: int) -> str | None:
        try:
            servers[index].start()
        except RuntimeError as error:
            return str(error)
        return None

    try:
        start_errors = run_together(SERVERS_STARTED_TOGETHER, start)
        assert start_errors == [None] * SERVERS_STARTED_TOGETHER
        create_statuses = [
            send(server, "POST", "/instance/create", GLOBAL_KEY, {"instanceName": f"together-{index}"})[0]
            for index, server in enumerate(servers)
        ]
        listings = [send(server, "GET", "/instance/fetchInstances", GLOBAL_KEY) for server in servers]
    finally:
        for server in servers:
            server.stop()

    expected_names = [f"together-{index}" for index in range(SERVERS_STARTED_TOGETHER)]
    assert create_statuses == [201] * SERVERS_STARTED_TOGETHER
    for status, listed in listings:
        assert status == 200
        assert [instance["name"] for instance in listed] == expected_names
    assert count_rows(database_url, "SELECT count(*) FROM alembic_version") == 1
    for server in servers:
        assert "Traceback" not in server.log()
