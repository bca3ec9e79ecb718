"""Migrations: an empty database upgraded to head matches the models, and the way down works too."""

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import create_app
from database import MIGRATIONS_DIRECTORY, register_migrations
from models import db
from tests.conftest import GLOBAL_KEY, app_settings
from tests.server import REPO, server_environment


@pytest.fixture
def empty_app(backend, databases, tmp_path):
    """An app on a database of its own that no migration has touched yet."""
    app = create_app(app_settings(databases.create(backend)), instance_path=str(tmp_path))
    app.config["WEBHOOK_DELIVERY_WORKER"] = False
    register_migrations(app)
    with app.app_context():
        yield app
        db.engine.dispose()


def schema_differences() -> list:
    """Return what autogenerate would put in a new migration: empty when the schema matches the models."""
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, db.metadata)


def table_names() -> set[str]:
    return set(inspect(db.engine).get_table_names())


def test_upgrade_to_head_matches_models(empty_app):
    assert table_names() == set()

    upgrade(directory=MIGRATIONS_DIRECTORY)

    assert table_names() == set(db.metadata.tables) | {"alembic_version"}
    assert schema_differences() == []


def test_downgrade_to_base_then_upgrade_again(empty_app):
    upgrade(directory=MIGRATIONS_DIRECTORY)

    downgrade(directory=MIGRATIONS_DIRECTORY, revision="base")
    assert table_names() == {"alembic_version"}

    upgrade(directory=MIGRATIONS_DIRECTORY)
    assert table_names() == set(db.metadata.tables) | {"alembic_version"}
    assert schema_differences() == []


def test_flask_db_commands_available(tmp_path):
    """`flask db` works although servers never import Flask-Migrate (see `database.init_app`)."""
    environment = server_environment({"DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'cli.db'}",
                                      "AUTHENTICATION_API_KEY": GLOBAL_KEY})

    completed = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "current"], cwd=REPO,
                               env=environment, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    assert "(head)" in completed.stdout
