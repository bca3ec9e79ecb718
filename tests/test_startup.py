"""Start-up through real gunicorn: invalid settings stop the whole server, and HTTPS serves verified TLS.

A generated global key is checked through `create_app` with a temporary instance folder,
because gunicorn started from the repository root would write the key into the repository.
"""

import logging
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import globalkey
from app import create_app
from database import upgrade_schema
from tests.conftest import GLOBAL_KEY, POSTGRES_URL
from tests.server import REPO, Gunicorn, free_port, server_environment

# The master exits before it forks any worker, so this limit leaves room for a slow, busy machine.
EXIT_TIMEOUT_SECONDS = 10
SHORT_KEY = "short-key-" + os.urandom(6).hex()


def base_environment(tmp_path) -> dict[str, str]:
    """Return settings that start a server on a temporary SQLite file."""
    return {
        "AUTHENTICATION_API_KEY": GLOBAL_KEY,
        "DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'startup.db'}",
        "LOG_LEVEL": "INFO",
    }


def pem_placeholder(tmp_path) -> str:
    """Return the path of a readable file that is no valid PEM, because no rejected setting gets that far."""
    path = tmp_path / "placeholder.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def rejected_settings(case: str, tmp_path) -> tuple[dict[str, str], str]:
    """Return the settings of one rejected case and the variable that its message must name."""
    readable = pem_placeholder(tmp_path)
    https = {"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": readable, "SSL_CONF_FULLCHAIN": readable}
    cases = {
        "short-key": ({"AUTHENTICATION_API_KEY": SHORT_KEY}, "AUTHENTICATION_API_KEY"),
        "short-key-after-trimming": ({"AUTHENTICATION_API_KEY": "   " + "k" * 31 + "   "}, "AUTHENTICATION_API_KEY"),
        "evolution-docs-key": (
            {"AUTHENTICATION_API_KEY": "429683C4C977415CAAFCCE10F7D57E11"}, "AUTHENTICATION_API_KEY",
        ),
        "evolution-docs-key-lower-case": (
            {"AUTHENTICATION_API_KEY": "429683c4c977415caafcce10f7d57e11"}, "AUTHENTICATION_API_KEY",
        ),
        "evolution-default-key": ({"AUTHENTICATION_API_KEY": "BQYHJGJHJ"}, "AUTHENTICATION_API_KEY"),
        "bad-boolean": (
            {"AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES": "maybe"}, "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES",
        ),
        "bad-port": ({"SERVER_PORT": "eighty"}, "SERVER_PORT"),
        "bad-server-type": ({"SERVER_TYPE": "ftp"}, "SERVER_TYPE"),
        "bad-log-level": ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        "bad-failure-limit": ({"AUTHENTICATION_FAILURE_LIMIT": "lots"}, "AUTHENTICATION_FAILURE_LIMIT"),
        "https-without-privkey": ({**https, "SSL_CONF_PRIVKEY": ""}, "SSL_CONF_PRIVKEY"),
        "https-without-fullchain": ({**https, "SSL_CONF_FULLCHAIN": ""}, "SSL_CONF_FULLCHAIN"),
        "https-privkey-file-missing": (
            {**https, "SSL_CONF_PRIVKEY": str(tmp_path / "absent-key.pem")}, "SSL_CONF_PRIVKEY",
        ),
        # The tests may run as root, who reads any file, so a directory is the unreadable path.
        "https-fullchain-unreadable": ({**https, "SSL_CONF_FULLCHAIN": str(tmp_path)}, "SSL_CONF_FULLCHAIN"),
    }
    return cases[case]


def run_until_exit(server: Gunicorn, timeout: float) -> tuple[int | None, str]:
    """Run the server's gunicorn command and return its exit code (None if it still ran) and its output."""
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            server.command, cwd=REPO, env=server.environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return process.wait(timeout), server.log()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
        return None, server.log()


@pytest.mark.parametrize("case", [
    "short-key", "short-key-after-trimming", "evolution-docs-key", "evolution-docs-key-lower-case",
    "evolution-default-key", "bad-boolean",
    "bad-port", "bad-server-type", "bad-log-level", "bad-failure-limit", "https-without-privkey",
    "https-without-fullchain", "https-privkey-file-missing", "https-fullchain-unreadable",
])
def test_invalid_setting_stops_gunicorn(case, tmp_path):
    overrides, variable = rejected_settings(case, tmp_path)
    server = Gunicorn({**base_environment(tmp_path), **overrides}, name=f"startup-rejected-{case}")

    exit_code, output = run_until_exit(server, EXIT_TIMEOUT_SECONDS)

    assert exit_code is not None, f"gunicorn still ran after {EXIT_TIMEOUT_SECONDS} s:\n{output}"
    assert exit_code != 0
    naming_lines = [line for line in output.splitlines() if variable in line]
    assert len(naming_lines) == 1, output
    assert "Traceback" not in output
    assert "Booting worker" not in output
    assert SHORT_KEY not in output


def test_database_that_cannot_migrate_stops_gunicorn(tmp_path):
    missing_database = POSTGRES_URL.rsplit("/", 1)[0] + "/evogate_no_such_database_" + os.urandom(4).hex()
    environment = {**base_environment(tmp_path), "DATABASE_CONNECTION_URI": missing_database}
    server = Gunicorn(environment, name="startup-no-database")

    exit_code, output = run_until_exit(server, EXIT_TIMEOUT_SECONDS)

    assert exit_code is not None, f"gunicorn still ran after {EXIT_TIMEOUT_SECONDS} s:\n{output}"
    assert exit_code != 0
    assert output.count("Refusing to start: the database schema could not be migrated") == 1, output
    assert "Booting worker" not in output


def test_master_migrates_without_loading_alembic(tmp_path):
    """The schema is migrated in a child process, so workers never inherit Alembic's memory."""
    database_path = tmp_path / "master.db"
    script = (
        "import sys, sqlite3, wsgi\n"
        "print(sorted(name for name in ('alembic', 'flask_migrate', 'mako') if name in sys.modules))\n"
        f"print(sqlite3.connect({str(database_path)!r}).execute('SELECT version_num FROM alembic_version').fetchall())\n"
    )
    environment = server_environment({**base_environment(tmp_path), "DATABASE_CONNECTION_URI": f"sqlite:///{database_path}"})

    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment,
                               capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    loaded, versions = completed.stdout.splitlines()
    assert loaded == "[]"
    assert versions != "[]"


def test_valid_settings_start_gunicorn(tmp_path):
    """The rejected cases differ from these settings only in the variable that they break."""
    server = Gunicorn(base_environment(tmp_path), name="startup-valid")

    try:
        server.start()
        status, _, body = server.request("GET", "/health/live")
    finally:
        exit_code = server.stop()

    assert status == 200
    assert body == {"status": "ok"}
    assert exit_code == 0


@pytest.mark.parametrize("unset_key", ["absent", "empty", "white-space"])
def test_missing_key_generated_into_instance_folder(unset_key, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    instance_folder = tmp_path / "instance"
    settings = {"DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'generated.db'}"}
    if unset_key != "absent":
        settings["AUTHENTICATION_API_KEY"] = "" if unset_key == "empty" else "  \t "

    app = create_app(settings, instance_path=str(instance_folder))

    key_file = instance_folder / globalkey.KEY_FILE_NAME
    key = app.config["AUTHENTICATION_API_KEY"]
    assert key_file.exists()
    assert key_file.read_text().strip() == key
    assert len(key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in caplog.text
    assert key not in caplog.text


def test_generated_key_authenticates_and_persists(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = {"DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'generated.db'}"}
    app = create_app(settings, instance_path=str(tmp_path / "instance"))
    upgrade_schema(app)
    key = app.config["AUTHENTICATION_API_KEY"]

    response = app.test_client().post("/instance/create", headers={"apikey": key}, json={"instanceName": "gen1"})
    restarted = create_app(settings, instance_path=str(tmp_path / "instance"))

    assert response.status_code == 201
    assert response.get_json()["instance"]["instanceName"] == "gen1"
    assert restarted.config["AUTHENTICATION_API_KEY"] == key
    assert key not in caplog.text


def make_self_signed_certificate(directory) -> tuple[str, str]:
    """Create a certificate for 127.0.0.1 with the openssl command and return the (certificate, key) paths."""
    certificate, private_key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(private_key), "-out", str(certificate),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )
    return str(certificate), str(private_key)


class HttpsGunicorn(Gunicorn):
    """A gunicorn serving TLS, whose requests verify the certificate against one CA file."""

    def __init__(self, environment: dict[str, str], certificate: str, name: str):
        super().__init__(environment, name=name)
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.tls_context = ssl.create_default_context(cafile=certificate)

    def request(self, method, path, key=None, body=None, headers=None, timeout: float = 30):
        request = urllib.request.Request(self.base_url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout, context=self.tls_context) as reply:
            return reply.status, dict(reply.headers), reply.read()


def test_https_serves_verified_tls(tmp_path):
    certificate, private_key = make_self_signed_certificate(tmp_path)
    environment = {
        **base_environment(tmp_path),
        "SERVER_TYPE": "https", "SSL_CONF_FULLCHAIN": certificate, "SSL_CONF_PRIVKEY": private_key,
    }
    server = HttpsGunicorn(environment, certificate, name="startup-https")

    try:
        server.start()
        status, _, body = server.request("GET", "/health/live")
        plain_http_status = plain_http_status_of(server.port)
    finally:
        server.stop()

    assert status == 200
    assert body == b'{"status":"ok"}\n'
    assert plain_http_status is None, "the HTTPS port answered plain HTTP"


def plain_http_status_of(port: int) -> int | None:
    """Return the status of a plain-HTTP request, or None when the connection fails."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def test_https_rejects_unknown_certificate_authority(tmp_path):
    certificate, private_key = make_self_signed_certificate(tmp_path)
    other_directory = tmp_path / "other"
    other_directory.mkdir()
    other_certificate, _ = make_self_signed_certificate(other_directory)
    environment = {
        **base_environment(tmp_path),
        "SERVER_TYPE": "https", "SSL_CONF_FULLCHAIN": certificate, "SSL_CONF_PRIVKEY": private_key,
    }
    server = HttpsGunicorn(environment, certificate, name="startup-https-other-ca")
    untrusting_context = ssl.create_default_context(cafile=other_certificate)

    try:
        server.start()
        with pytest.raises(urllib.error.URLError) as failure:
            urllib.request.urlopen(f"{server.base_url}/health/live", timeout=10, context=untrusting_context)
    finally:
        server.stop()

    assert isinstance(failure.value.reason, ssl.SSLCertVerificationError)


def test_development_server_serves_https(tmp_path):
    """`make dev` runs devserver.py, which serves TLS with the same settings as gunicorn."""
    certificate, private_key = make_self_signed_certificate(tmp_path)
    port = free_port()
    environment = server_environment({
        **base_environment(tmp_path),
        "SERVER_TYPE": "https", "SSL_CONF_FULLCHAIN": certificate, "SSL_CONF_PRIVKEY": private_key,
        "SERVER_PORT": str(port),
    })
    context = ssl.create_default_context(cafile=certificate)
    process = subprocess.Popen([sys.executable, "devserver.py"], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    status = None
    try:
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health/live", timeout=5, context=context) as reply:
                    status = reply.status
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        plain_http_status = plain_http_status_of(port)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)

    assert status == 200
    assert plain_http_status is None, "the development server answered plain HTTP"
