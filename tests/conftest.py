"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

Each test session creates its own PostgreSQL databases (named evogate_test_<random>) and
drops them at the end, so sessions running at the same time never collide. The database
server comes from EVOGATE_TEST_POSTGRES_URL (default: user and database postgres on 127.0.0.1:5432); when it
does not respond, the tests that need it fail rather than skip.
"""

import logging
import os
import secrets
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import delete

from app import create_app
from database import upgrade_schema
from models import DeliveryAttempt, Event, Instance, Message, Webhook, db
from tests.receiver import Receiver
from tests.server import Gunicorn

REPO = Path(__file__).resolve().parents[1]
LOG_DIRECTORY = REPO / "test-logs"
GLOBAL_KEY = "test-global-key-" + secrets.token_hex(16)
POSTGRES_URL = os.environ.get("EVOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config):
    """Keep every log line of the run in one file, so a test can check it holds no secret."""
    LOG_DIRECTORY.mkdir(exist_ok=True)
    for old_log in LOG_DIRECTORY.glob("*.log"):
        old_log.unlink()
    handler = logging.FileHandler(LOG_DIRECTORY / "pytest.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class DatabaseFactory:
    """Create empty databases for one test session and remove them at its end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.postgres_databases: list[str] = []

    def create(self, backend: str) -> str:
        name = "evogate_test_" + secrets.token_hex(6)
        if backend == "sqlite":
            return f"sqlite:///{self.directory / (name + '.db')}"
        with self.admin_connection() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.postgres_databases.append(name)
        return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name

    def admin_connection(self):
        try:
            return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as error:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not respond ({error}); start it, as .ci/run does")

    def drop_all(self) -> None:
        if not self.postgres_databases:
            return
        with self.admin_connection() as connection:
            for name in self.postgres_databases:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def databases(tmp_path_factory):
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"))
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


def app_settings(database_url: str, **overrides: str) -> dict[str, str]:
    """Return an environment mapping for `create_app`, as a deployment would set it."""
    return {
        "AUTHENTICATION_API_KEY": GLOBAL_KEY,
        "DATABASE_CONNECTION_URI": database_url,
        "AUTHENTICATION_FAILURE_LIMIT": "10000/minute",
        "LOG_LEVEL": "INFO",
        **overrides,
    }


@pytest.fixture(scope="session")
def session_app(backend, databases, tmp_path_factory):
    app = create_app(app_settings(databases.create(backend)), instance_path=str(tmp_path_factory.mktemp("instance")))
    upgrade_schema(app)
    # Deliveries are tested through gunicorn; the test client's process delivers nothing.
    app.config["WEBHOOK_DELIVERY_WORKER"] = False
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(session_app):
    """The app on a migrated database that is emptied after each test."""
    yield session_app
    with session_app.app_context():
        db.session.rollback()
        db.session.execute(delete(DeliveryAttempt))
        db.session.execute(delete(Event))
        db.session.execute(delete(Webhook))
        db.session.execute(delete(Message))
        db.session.execute(delete(Instance))
        db.session.commit()


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """A small client for tests: keys go in the `apikey` header, bodies as JSON."""

    def __init__(self, client):
        self.client = client

    def request(self, method: str, path: str, key: str | None = None, json=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["apikey"] = key
        return self.client.open(path, method=method, headers=headers, json=json, **kwargs)

    def create(self, name: str, key: str = GLOBAL_KEY, **fields):
        return self.request("POST", "/instance/create", key, json={"instanceName": name, **fields})

    def create_instance(self, name: str, **fields) -> tuple[dict, str]:
        """Create an instance and return its answer and token; fails the test otherwise."""
        response = self.create(name, **fields)
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        return body, body["hash"]


@pytest.fixture
def api(client) -> Api:
    return Api(client)


@pytest.fixture
def server_factory(databases):
    """Start gunicorn servers on a fresh database of a backend; all are stopped after the test."""
    started: list[Gunicorn] = []

    def start(backend: str, workers: int = 2, database_url: str | None = None, **settings: str) -> Gunicorn:
        url = database_url or databases.create(backend)
        server = Gunicorn(app_settings(url, **settings), workers=workers, name=f"gunicorn-{backend}")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def receivers():
    """Start webhook receivers on 127.0.0.1 on demand; all are stopped after the test."""
    started: list[Receiver] = []

    def start() -> Receiver:
        receiver = Receiver()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def server(backend, server_factory) -> Gunicorn:
    """A running gunicorn with two workers on a fresh database of the current backend."""
    return server_factory(backend)
