"""Database connections and schema: engine settings, SQLite locking, migrations at start-up."""

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate, upgrade
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from models import db

logger = logging.getLogger(__name__)

MIGRATIONS_DIRECTORY = str(Path(__file__).resolve().parent / "migrations")
# Any fixed number works: it only has to be the same in every evogate process.
SCHEMA_LOCK_ID = 7_310_042_611
SQLITE_BUSY_TIMEOUT_MS = 10_000

migrate = Migrate(directory=MIGRATIONS_DIRECTORY)


def database_url(app: Flask) -> str:
    """Return the configured URL, or a SQLite file in the instance folder."""
    url = app.config["DATABASE_CONNECTION_URI"]
    if url:
        return url
    # The instance folder holds the database and the generated key: its owner alone may read it.
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    return "sqlite:///" + os.path.join(app.instance_path, "evogate.db")


def engine_options(url: str) -> dict:
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    # pre_ping replaces connections that a database restart has closed, instead of failing.
    return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 5, "pool_recycle": 1800}


def init_app(app: Flask) -> None:
    url = database_url(app)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url)
    db.init_app(app)
    migrate.init_app(app, db)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            configure_sqlite(db.engine)
    logger.info("Database: %s", make_url(url).render_as_string(hide_password=True))


def configure_sqlite(engine: Engine) -> None:
    """Let several processes write to one SQLite file without `database is locked`.

    WAL lets readers run beside a writer, the busy timeout makes writers queue instead of
    failing, and write transactions start with BEGIN IMMEDIATE (see `begin_write`): a
    transaction that reads first and writes later could otherwise fail at once with
    SQLITE_BUSY when another process committed in between, whatever the timeout.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, connection_record):
        # Take transaction control from the sqlite3 module so the `begin` hook below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        immediate = connection.get_execution_options().get("sqlite_begin_immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writes(view):
    """Mark a view that writes although its method is safe (Evolution's GET /instance/connect)."""
    view.writes = True
    return view


def begin_write() -> None:
    """Start the session's transaction as a write transaction (BEGIN IMMEDIATE on SQLite).

    Call it before the first query of a request that will write. It has no effect on
    PostgreSQL, or when the session's transaction has already begun.
    """
    db.session.connection(execution_options={"sqlite_begin_immediate": True})


def begin_read() -> None:
    """Run the session's queries without a transaction on PostgreSQL (autocommit).

    Call it before the first query of a request that only reads. Each query then takes one
    round trip, without BEGIN and ROLLBACK around it, and reads every commit made before it.
    SQLite keeps its transactions, which cost no round trip there. It has no effect when the
    session's transaction has already begun.
    """
    if db.engine.dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def upgrade_schema(app: Flask) -> None:
    """Bring the schema to the newest migration, one process at a time across hosts."""
    with app.app_context():
        with schema_lock(db.engine):
            upgrade(directory=MIGRATIONS_DIRECTORY)
        # Drop the connections opened here so forked gunicorn workers never share one.
        db.engine.dispose()


@contextlib.contextmanager
def schema_lock(engine: Engine):
    """Hold a lock that every evogate process sharing this database agrees on."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": SCHEMA_LOCK_ID})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": SCHEMA_LOCK_ID})
                connection.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with open(engine.url.database + ".migrate-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    else:
        yield


def database_answers() -> bool:
    """Return whether a trivial query succeeds; used by the readiness probe."""
    try:
        db.session.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        logger.warning("Readiness check failed: the database did not respond", exc_info=True)
        db.session.rollback()
        return False
