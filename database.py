"""Database connections and schema: engine settings, SQLite locking, migrations at start-up."""

import contextlib
import fcntl
import logging
import os
import select
from pathlib import Path

import click
from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InvalidatePoolError, SQLAlchemyError

from models import db

logger = logging.getLogger(__name__)

MIGRATIONS_DIRECTORY = str(Path(__file__).resolve().parent / "migrations")
# Any fixed number works: it only has to be the same in every evogate process.
SCHEMA_LOCK_ID = 7_310_042_611
SQLITE_BUSY_TIMEOUT_MS = 10_000



class SchemaUpgradeError(RuntimeError):
    """The schema could not be brought to the newest migration; the cause is logged."""


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
    # No pool_pre_ping, because its round trip on every checkout cost as much as the token
    # lookup itself. `configure_postgresql` replaces closed connections without one.
    return {"pool_size": 5, "max_overflow": 5, "pool_recycle": 1800}


def init_app(app: Flask) -> None:
    url = database_url(app)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url)
    db.init_app(app)
    if click.get_current_context(silent=True) is not None:
        # Built by the flask command: offer Flask-Migrate's `flask db` commands. A server
        # builds its app outside any command and never imports Flask-Migrate.
        register_migrations(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            configure_sqlite(db.engine)
        elif db.engine.dialect.name == "postgresql":
            configure_postgresql(db.engine)
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
        options = connection.get_execution_options()
        if options.get("sqlite_autocommit"):
            return  # each statement is its own transaction, as in `begin_read`
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_begin_immediate") else "BEGIN")


def configure_postgresql(engine: Engine) -> None:
    """Replace a pooled connection that the server has closed, before a request uses it.

    An idle connection has nothing to read. When the server goes away (a restart,
    `pg_terminate_backend`, an idle timeout) it sends an error and closes the socket, which
    then turns readable. So a readable or broken connection gets a real ping, and a failed
    ping replaces every pooled connection opened before it. A quiet one costs one poll and no
    round trip, where pool_pre_ping would cost a round trip on every checkout.
    """

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection, connection_record, connection_proxy):
        if not dbapi_connection.closed and not dbapi_connection.broken:
            poller = select.poll()
            poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
            if not poller.poll(0):
                return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure means the connection cannot be used
            raise InvalidatePoolError(f"pooled connection closed by the server ({type(error).__name__})") from error


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
    """Run the session's queries without a transaction around them (autocommit).

    Call it before the first query of a request that only reads. Each query then runs in a
    transaction of its own and reads every commit made before it. On PostgreSQL a query takes
    one round trip, without BEGIN and ROLLBACK, and on SQLite it skips the BEGIN statement. It
    has no effect when the session's transaction has already begun.
    """
    if db.engine.dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    elif db.engine.dialect.name == "sqlite":
        db.session.connection(execution_options={"sqlite_autocommit": True})


def register_migrations(app: Flask) -> None:
    """Give the app the Flask-Migrate settings that `flask db` and `upgrade_schema` read.

    Flask-Migrate loads Alembic, Mako and Pygments (about 11 MB), so it is imported only where
    the schema is migrated.
    """
    from flask_migrate import Migrate

    Migrate(app, db, directory=MIGRATIONS_DIRECTORY)


def upgrade_schema(app: Flask) -> None:
    """Bring the schema to the newest migration, one process at a time across hosts."""
    from flask_migrate import upgrade

    if "migrate" not in app.extensions:
        register_migrations(app)
    with app.app_context():
        with schema_lock(db.engine):
            upgrade(directory=MIGRATIONS_DIRECTORY)
        # Drop the connections opened here so forked gunicorn workers never share one.
        db.engine.dispose()


def upgrade_schema_in_child(app: Flask) -> None:
    """Run `upgrade_schema` in a forked child process and wait for it.

    The gunicorn master loads the app before it forks its workers, and each worker's memory
    starts as a copy of the master's. Migrating in a child keeps Alembic out of the master,
    and so out of every worker. Call it only while the process has a single thread.
    """
    with app.app_context():
        db.engine.dispose()
    pid = os.fork()
    if pid == 0:
        exit_status = 1
        try:
            upgrade_schema(app)
            exit_status = 0
        except BaseException:  # noqa: BLE001 - the child reports any failure by its exit status
            logger.exception("Migrating the database schema failed")
        finally:
            logging.shutdown()
            os._exit(exit_status)
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise SchemaUpgradeError("the database schema could not be migrated; the error is logged above")


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
