"""The operators' `flask` commands, through Flask's CLI runner and as `flask` run from the repository root."""

import re
import subprocess
import sys

import pytest
from sqlalchemy import select

from app import create_app
from config import load_settings
from database import upgrade_schema
from models import Event, db
from tests.conftest import GLOBAL_KEY, REPO, Api, app_settings
from tests.server import server_environment

TOKEN_PATTERN = re.compile(r"[0-9A-F]{32}")
ISO_UTC_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def state_status(api: Api, name: str, key: str) -> int:
    return api.request("GET", f"/instance/connectionState/{name}", key).status_code


def test_keys_generate_prints_usable_key(runner):
    first = runner.invoke(args=["keys", "generate"])
    second = runner.invoke(args=["keys", "generate"])
    assert first.exit_code == 0, first.output
    key = first.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert first.stdout == key + "\n"
    assert second.stdout.strip() != key
    assert load_settings({"AUTHENTICATION_API_KEY": key})["AUTHENTICATION_API_KEY"] == key


def test_list_shows_instances_in_creation_order(runner, api):
    shop, _ = api.create_instance("shop1")
    api.create_instance("shop2")
    api.request("DELETE", "/instance/logout/shop2", GLOBAL_KEY)

    result = runner.invoke(args=["instances", "list"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "STATE", "CREATED"]
    assert len(lines) == 3
    name, public_id, state, created = lines[1].split()
    assert (name, public_id, state) == ("shop1", shop["instance"]["instanceId"], "open")
    assert ISO_UTC_PATTERN.fullmatch(created)
    assert lines[2].split()[0::2] == ["shop2", "close"]


def test_list_without_instances_prints_header(runner):
    result = runner.invoke(args=["instances", "list"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["NAME", "ID", "STATE", "CREATED"]


def test_rotate_token_prints_only_token(runner, api, caplog):
    _, old_token = api.create_instance("shop1")

    result = runner.invoke(args=["instances", "rotate-token", "shop1"])

    assert result.exit_code == 0, result.output
    new_token = result.stdout.strip()
    assert result.stdout == new_token + "\n"
    assert TOKEN_PATTERN.fullmatch(new_token)
    assert new_token != old_token
    assert state_status(api, "shop1", old_token) == 401
    assert state_status(api, "shop1", new_token) == 200
    assert new_token not in caplog.text
    assert "Instance token rotated: name=shop1" in caplog.text


def test_rotate_token_unknown_name_fails(runner, api):
    api.create_instance("shop1")

    result = runner.invoke(args=["instances", "rotate-token", "shop2"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert 'The "shop2" instance does not exist' in result.stderr


def test_delete_with_yes_removes_instance(runner, api):
    _, token = api.create_instance("shop1")

    result = runner.invoke(args=["instances", "delete", "shop1", "--yes"])

    assert result.exit_code == 0, result.output
    assert result.stdout == 'Instance "shop1" deleted.\n'
    assert state_status(api, "shop1", GLOBAL_KEY) == 404
    assert state_status(api, "shop1", token) == 401


def test_delete_asks_for_confirmation(runner, api):
    _, token = api.create_instance("shop1")

    declined = runner.invoke(args=["instances", "delete", "shop1"], input="n\n")
    assert declined.exit_code == 1
    assert state_status(api, "shop1", token) == 200

    without_answer = runner.invoke(args=["instances", "delete", "shop1"], input="")
    assert without_answer.exit_code == 1
    assert state_status(api, "shop1", token) == 200

    confirmed = runner.invoke(args=["instances", "delete", "shop1"], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert state_status(api, "shop1", token) == 401


@pytest.mark.parametrize("name", ["shop2", "bad name", ""])
def test_delete_unknown_name_fails(runner, api, name):
    _, token = api.create_instance("shop1")

    result = runner.invoke(args=["instances", "delete", name, "--yes"])

    assert result.exit_code == 1
    assert f'The "{name}" instance does not exist' in result.stderr
    assert state_status(api, "shop1", token) == 200


def test_delete_queues_instance_delete_event(app, runner, api):
    api.create_instance("shop1", webhook={"url": "http://127.0.0.1:9/hook", "events": ["INSTANCE_DELETE"]})

    result = runner.invoke(args=["instances", "delete", "shop1", "--yes"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        assert list(db.session.scalars(select(Event.name))) == ["INSTANCE_DELETE"]


class FlaskCommand:
    """`flask` run as an operator would: from the repository root with FLASK_APP=wsgi."""

    def __init__(self, database_url: str):
        self.environment = server_environment({**app_settings(database_url), "FLASK_APP": "wsgi"})

    def run(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flask", *arguments], cwd=REPO, env=self.environment,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )


def test_commands_run_from_repository_root(backend, databases, tmp_path):
    url = databases.create(backend)
    flask_command = FlaskCommand(url)
    # A second app on the same database plays the HTTP side.
    app = create_app(app_settings(url), instance_path=str(tmp_path))
    app.config["WEBHOOK_DELIVERY_WORKER"] = False
    upgrade_schema(app)
    api = Api(app.test_client())
    try:
        generated = flask_command.run("keys", "generate")
        assert generated.returncode == 0, generated.stderr
        assert re.fullmatch(r"[0-9a-f]{64}\n", generated.stdout)

        _, old_token = api.create_instance("shop1")
        rotated = flask_command.run("instances", "rotate-token", "shop1")
        assert rotated.returncode == 0, rotated.stderr
        new_token = rotated.stdout.strip()
        assert rotated.stdout == new_token + "\n"
        assert TOKEN_PATTERN.fullmatch(new_token)
        assert new_token not in rotated.stderr
        assert state_status(api, "shop1", old_token) == 401
        assert state_status(api, "shop1", new_token) == 200

        unknown = flask_command.run("instances", "rotate-token", "nobody")
        assert unknown.returncode != 0
        assert unknown.stdout == ""
        assert 'The "nobody" instance does not exist' in unknown.stderr

        deleted = flask_command.run("instances", "delete", "shop1", "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert state_status(api, "shop1", new_token) == 401
    finally:
        with app.app_context():
            db.engine.dispose()
