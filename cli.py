"""`flask` commands for operators on the server: make a global key, list, rotate and delete instances.

Run them from the repository root with the server's environment, for example
`FLASK_APP=wsgi flask instances list`. They call the same operations as the HTTP routes, so
they commit, log and emit webhook events exactly as a request with the global key would.
"""

import click
from flask import Flask
from flask.cli import AppGroup

import database
import globalkey
import instances
from auth import Principal
from models import Instance, db
from schema_fields import iso_timestamp

LIST_COLUMNS = ("NAME", "ID", "STATE", "CREATED")


# AppGroup runs each command inside an application context, as the database needs.
keys_cli = AppGroup("keys", help="Make global API keys.")
instances_cli = AppGroup("instances", help="List instances, rotate their tokens and delete them.")


@keys_cli.command("generate", with_appcontext=False)
def generate_key():
    """Print a new random key for AUTHENTICATION_API_KEY (256 bits, 64 hex characters)."""
    click.echo(globalkey.generate_key())


@instances_cli.command("list")
def list_instances():
    """Print every instance's name, id, state and creation time (UTC), oldest first."""
    found = instances.find_instances(Principal(instance=None), "", "", expose=True)
    rows = [LIST_COLUMNS] + [
        (instance.name, instance.public_id, instance.connection_status, iso_timestamp(instance.created_at))
        for instance in found
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(LIST_COLUMNS))]
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


@instances_cli.command("rotate-token")
@click.argument("name")
def rotate_token(name: str):
    """Replace NAME's token and print the new one, which is shown only this once.

    The old token fails from the next request on, in every worker.
    """
    database.begin_write()
    token = instances.rotate_token(existing_instance(name), None)
    click.echo(token)


@instances_cli.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Delete without asking for confirmation.")
def delete_instance(name: str, yes: bool):
    """Delete the instance NAME with its messages and webhook."""
    existing_instance(name)
    # End the read transaction, so the database is not held while the confirmation prompt waits.
    db.session.rollback()
    if not yes:
        click.confirm(f'Delete the instance "{name}" with its messages and webhook?', abort=True)
    database.begin_write()
    instances.delete_instance(existing_instance(name))
    click.echo(f'Instance "{name}" deleted.')


def existing_instance(name: str) -> Instance:
    """Return the instance named NAME, or stop the command with exit status 1."""
    instance = Instance.find_by_name(name)
    if instance is None:
        raise click.ClickException(f'The "{name}" instance does not exist; `flask --app wsgi instances list` shows the names.')
    return instance


def init_app(app: Flask) -> None:
    app.cli.add_command(keys_cli)
    app.cli.add_command(instances_cli)
