"""Alembic environment for evogate's migrations, run through Flask-Migrate.

Logging is left as the app configured it (no fileConfig), and the engine comes from the
app, so its URL and password are never copied into Alembic's configuration.
"""

import logging

from alembic import context
from flask import current_app

logger = logging.getLogger("alembic.env")
config = context.config


def skip_empty_autogenerate(migration_context, revision, directives):
    """Write no revision file when `flask db migrate` finds no model change."""
    if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        logger.info("No changes in schema detected.")


def run_migrations_online() -> None:
    db = current_app.extensions["migrate"].db
    options = dict(current_app.extensions["migrate"].configure_args)
    options.setdefault("process_revision_directives", skip_empty_autogenerate)
    with db.engine.connect() as connection:
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        options["render_as_batch"] = connection.dialect.name == "sqlite"
        context.configure(connection=connection, target_metadata=db.metadata, **options)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("evogate's migrations run online only: use `flask db upgrade`.")
run_migrations_online()
