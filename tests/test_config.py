"""Settings from the environment and `.env`, settings rejected at start-up, and the generated global key."""

import logging
import multiprocessing
import os
import stat
import subprocess
import time

import pytest

import globalkey
from app import create_app
from config import ConfigError, load_settings, read_environment
from tests.server import CLEARED_PREFIXES

VALID_KEY = "config-test-key-" + "0123456789abcdef" * 2
PUBLISHED_KEYS = ["429683C4C977415CAAFCCE10F7D57E11", "BQYHJGJHJ"]
KEY_PROCESS_COUNT = 8
KEY_RACE_ROUNDS = 3
EXISTS_CHECK_DELAY_SECONDS = 0.05


@pytest.fixture
def clean_environment(monkeypatch):
    """Remove the developer's evogate variables, so only the test's settings apply."""
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    return monkeypatch


def config_error_message(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as refusal:
        load_settings(environ)
    return str(refusal.value)


def test_defaults_without_variables():
    settings = load_settings({})

    assert settings["AUTHENTICATION_API_KEY"] is None
    assert settings["AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES"] is True
    assert settings["AUTHENTICATION_FAILURE_LIMIT"] == "20/minute"
    assert settings["DATABASE_CONNECTION_URI"] is None
    assert settings["SERVER_TYPE"] == "http"
    assert settings["SERVER_PORT"] == 8080
    assert settings["SERVER_URL"] is None
    assert settings["SSL_CONF_PRIVKEY"] is None
    assert settings["SSL_CONF_FULLCHAIN"] is None
    assert settings["LOG_LEVEL"] == "INFO"
    assert settings["CORS_ORIGIN"] == []
    assert settings["CORS_METHODS"] == ["GET", "POST", "DELETE"]
    assert settings["CORS_CREDENTIALS"] is False
    assert settings["UNKNOWN_AUTHENTICATION_VARIABLES"] == []


def test_empty_values_mean_defaults():
    settings = load_settings({
        "AUTHENTICATION_API_KEY": "  ",
        "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES": "",
        "SERVER_PORT": "",
        "LOG_LEVEL": "",
    })

    assert settings["AUTHENTICATION_API_KEY"] is None
    assert settings["AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES"] is True
    assert settings["SERVER_PORT"] == 8080
    assert settings["LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize("word, expected", [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("YES", True), ("Yes", True),
    ("false", False), ("FALSE", False), ("False", False), ("0", False), ("no", False), ("NO", False),
    (" no ", False),
])
@pytest.mark.parametrize("variable", ["AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", "CORS_CREDENTIALS"])
def test_boolean_words_parse(variable, word, expected):
    settings = load_settings({variable: word})

    assert settings[variable] is expected


def test_key_is_trimmed():
    settings = load_settings({"AUTHENTICATION_API_KEY": f"  {VALID_KEY}\n"})

    assert settings["AUTHENTICATION_API_KEY"] == VALID_KEY


def test_key_of_32_characters_accepted():
    key = "k" * 32

    assert load_settings({"AUTHENTICATION_API_KEY": key})["AUTHENTICATION_API_KEY"] == key


@pytest.mark.parametrize("key", [
    pytest.param("k" * 31, id="31-characters"),
    pytest.param("  " + "k" * 31 + "  ", id="31-after-trimming"),
    pytest.param("short", id="5-characters"),
])
def test_short_key_rejected(key):
    message = config_error_message({"AUTHENTICATION_API_KEY": key})

    assert "AUTHENTICATION_API_KEY" in message
    assert "\n" not in message
    assert key.strip() not in message


@pytest.mark.parametrize("key", PUBLISHED_KEYS + [" BQYHJGJHJ ", "429683c4c977415caafcce10f7d57e11", "bqyhjgjhj"])
def test_published_key_rejected(key):
    message = config_error_message({"AUTHENTICATION_API_KEY": key})

    assert "AUTHENTICATION_API_KEY" in message
    assert "\n" not in message


@pytest.mark.parametrize("variable, value", [
    ("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", "maybe"),
    ("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", "2"),
    ("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", "on"),
    ("CORS_CREDENTIALS", "y"),
    ("CORS_CREDENTIALS", "truee"),
    ("SERVER_PORT", "http"),
    ("SERVER_PORT", "80.5"),
    ("SERVER_PORT", "8080x"),
    ("SERVER_PORT", "0"),
    ("SERVER_PORT", "65536"),
    ("SERVER_TYPE", "ftp"),
    ("SERVER_TYPE", "tls"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "trace"),
    ("AUTHENTICATION_FAILURE_LIMIT", "lots"),
    ("AUTHENTICATION_FAILURE_LIMIT", "20/fortnight"),
    ("AUTHENTICATION_FAILURE_LIMIT", "/minute"),
    ("AUTHENTICATION_FAILURE_LIMIT", "-5/minute"),
])
def test_unparsable_value_rejected(variable, value):
    message = config_error_message({variable: value})

    assert variable in message
    assert "\n" not in message


@pytest.mark.parametrize("variable, value, expected", [
    ("SERVER_TYPE", "HTTPS", "https"),
    ("SERVER_TYPE", "Http", "http"),
    ("LOG_LEVEL", "debug", "DEBUG"),
    ("LOG_LEVEL", "Warning", "WARNING"),
    ("LOG_LEVEL", "warn", "WARNING"),
    ("LOG_LEVEL", "FATAL", "CRITICAL"),
    ("SERVER_PORT", " 9000 ", 9000),
    ("AUTHENTICATION_FAILURE_LIMIT", "100/hour", "100/hour"),
    ("AUTHENTICATION_FAILURE_LIMIT", "5 per second", "5 per second"),
])
def test_listed_values_accepted(variable, value, expected, certificate_pair):
    certificate, key = certificate_pair
    environ = {variable: value, "SSL_CONF_PRIVKEY": key, "SSL_CONF_FULLCHAIN": certificate}

    assert load_settings(environ)[variable] == expected


@pytest.fixture(scope="module")
def certificate_pair(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate and its key, made with the openssl command."""
    directory = tmp_path_factory.mktemp("certificate")
    certificate, key = str(directory / "fullchain.pem"), str(directory / "privkey.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", certificate],
        check=True, capture_output=True,
    )
    return certificate, key


@pytest.fixture
def pem_file(tmp_path):
    pem = tmp_path / "readable.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(pem)


@pytest.mark.parametrize("missing", ["SSL_CONF_PRIVKEY", "SSL_CONF_FULLCHAIN"])
def test_https_without_certificate_rejected(missing, pem_file):
    environ = {"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": pem_file, "SSL_CONF_FULLCHAIN": pem_file}
    del environ[missing]

    message = config_error_message(environ)

    assert missing in message
    assert "\n" not in message


@pytest.mark.parametrize("broken", ["SSL_CONF_PRIVKEY", "SSL_CONF_FULLCHAIN"])
@pytest.mark.parametrize("kind", ["missing-file", "directory"])
def test_https_with_unreadable_certificate_rejected(broken, kind, pem_file, tmp_path):
    # The tests may run as root, who can read any file, so a directory stands for a path
    # that cannot be read.
    unreadable = tmp_path / "no-such.pem" if kind == "missing-file" else tmp_path
    environ = {"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": pem_file, "SSL_CONF_FULLCHAIN": pem_file}
    environ[broken] = str(unreadable)

    message = config_error_message(environ)

    assert broken in message
    assert "\n" not in message


def test_https_with_certificate_pair_accepted(certificate_pair):
    certificate, key = certificate_pair
    settings = load_settings({"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": key, "SSL_CONF_FULLCHAIN": certificate})

    assert settings["SERVER_TYPE"] == "https"
    assert settings["SSL_CONF_PRIVKEY"] == key


def test_https_with_invalid_pem_rejected(pem_file):
    message = config_error_message({"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": pem_file, "SSL_CONF_FULLCHAIN": pem_file})

    assert "SSL_CONF_FULLCHAIN" in message
    assert "cannot be loaded" in message


def test_https_with_mismatched_key_rejected(certificate_pair, tmp_path):
    certificate, _ = certificate_pair
    other_key = str(tmp_path / "other.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-out", other_key], check=True, capture_output=True)

    message = config_error_message({"SERVER_TYPE": "https", "SSL_CONF_PRIVKEY": other_key, "SSL_CONF_FULLCHAIN": certificate})

    assert "cannot be loaded" in message


def test_http_ignores_certificate_paths(tmp_path):
    settings = load_settings({"SSL_CONF_PRIVKEY": str(tmp_path / "absent.pem")})

    assert settings["SERVER_TYPE"] == "http"


def test_dotenv_file_read(clean_environment, tmp_path):
    (tmp_path / ".env").write_text(f"AUTHENTICATION_API_KEY={VALID_KEY}\nSERVER_PORT=9001\nLOG_LEVEL=debug\n")
    clean_environment.chdir(tmp_path)

    settings = load_settings(read_environment())

    assert settings["AUTHENTICATION_API_KEY"] == VALID_KEY
    assert settings["SERVER_PORT"] == 9001
    assert settings["LOG_LEVEL"] == "DEBUG"


def test_environment_wins_over_dotenv(clean_environment, tmp_path):
    (tmp_path / ".env").write_text("SERVER_PORT=9001\nLOG_LEVEL=DEBUG\n")
    clean_environment.chdir(tmp_path)
    clean_environment.setenv("SERVER_PORT", "9002")

    settings = load_settings(read_environment())

    assert settings["SERVER_PORT"] == 9002
    assert settings["LOG_LEVEL"] == "DEBUG"


def test_without_dotenv_environment_used(clean_environment, tmp_path):
    clean_environment.chdir(tmp_path)
    clean_environment.setenv("SERVER_TYPE", "HTTP")

    assert load_settings(read_environment())["SERVER_TYPE"] == "http"


def test_dotenv_invalid_key_rejected(clean_environment, tmp_path):
    (tmp_path / ".env").write_text("AUTHENTICATION_API_KEY=BQYHJGJHJ\n")
    clean_environment.chdir(tmp_path)

    message = config_error_message(read_environment())

    assert "AUTHENTICATION_API_KEY" in message


def test_create_app_reads_dotenv(clean_environment, tmp_path):
    database = tmp_path / "dotenv.db"
    (tmp_path / ".env").write_text(
        f"AUTHENTICATION_API_KEY={VALID_KEY}\nDATABASE_CONNECTION_URI=sqlite:///{database}\n"
        "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=no\n"
    )
    clean_environment.chdir(tmp_path)

    app = create_app(instance_path=str(tmp_path / "instance"))

    assert app.config["AUTHENTICATION_API_KEY"] == VALID_KEY
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{database}"
    assert app.config["AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES"] is False
    assert not (tmp_path / "instance" / globalkey.KEY_FILE_NAME).exists()


@pytest.mark.parametrize("url, expected", [
    ("postgres://user:secret@db.example:5432/evogate", "postgresql+psycopg://user:secret@db.example:5432/evogate"),
    ("postgresql://user@127.0.0.1/evogate", "postgresql+psycopg://user@127.0.0.1/evogate"),
    ("postgresql+psycopg://user@127.0.0.1/evogate", "postgresql+psycopg://user@127.0.0.1/evogate"),
    ("sqlite:////var/lib/evogate/evogate.db", "sqlite:////var/lib/evogate/evogate.db"),
    ("  postgres://h/d  ", "postgresql+psycopg://h/d"),
])
def test_database_url_uses_psycopg3(url, expected):
    assert load_settings({"DATABASE_CONNECTION_URI": url})["DATABASE_CONNECTION_URI"] == expected


def test_database_password_not_logged(tmp_path, caplog):
    password = "pg-password-" + os.urandom(6).hex()
    caplog.set_level(logging.INFO)

    # The engine connects lazily, so the app builds with no database server at this address.
    app = create_app(
        {"AUTHENTICATION_API_KEY": VALID_KEY, "DATABASE_CONNECTION_URI": f"postgres://evogate:{password}@127.0.0.1:1/x"},
        instance_path=str(tmp_path),
    )

    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert "127.0.0.1:1/x" in caplog.text
    assert password not in caplog.text


def test_unknown_authentication_variables_listed():
    settings = load_settings({
        "AUTHENTICATION_APIKEY": VALID_KEY,
        "AUTHENTICATION_EXPOSE_IN_FETCH": "true",
        "AUTHENTICATION_API_KEY_PREVIOUS": VALID_KEY,
        "AUTHENTICATION_FAILURE_LIMIT": "5/minute",
        "SERVER_NAME": "ignored",
    })

    assert settings["UNKNOWN_AUTHENTICATION_VARIABLES"] == ["AUTHENTICATION_APIKEY", "AUTHENTICATION_EXPOSE_IN_FETCH"]


def test_unknown_variable_warned_without_value(tmp_path, caplog):
    misspelt_value = "misspelt-key-value-" + os.urandom(8).hex()
    caplog.set_level(logging.INFO)

    create_app(
        {
            "AUTHENTICATION_API_KEY": VALID_KEY,
            "AUTHENTICATION_APIKEY": misspelt_value,
            "DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'warn.db'}",
        },
        instance_path=str(tmp_path),
    )

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("AUTHENTICATION_APIKEY" in warning for warning in warnings), warnings
    assert misspelt_value not in caplog.text


def test_known_variables_not_warned(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    create_app(
        {
            "AUTHENTICATION_API_KEY": VALID_KEY,
            "AUTHENTICATION_API_KEY_PREVIOUS": VALID_KEY[::-1],
            "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES": "true",
            "AUTHENTICATION_FAILURE_LIMIT": "5/minute",
            "DATABASE_CONNECTION_URI": f"sqlite:///{tmp_path / 'known.db'}",
        },
        instance_path=str(tmp_path),
    )

    assert [record.getMessage() for record in caplog.records if "AUTHENTICATION_" in record.getMessage()
            and record.levelno >= logging.WARNING] == []


def test_generated_key_file_created(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "instance"

    key = globalkey.load_or_create(str(folder))

    key_file = folder / globalkey.KEY_FILE_NAME
    assert len(key) >= 32
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0
    assert str(key_file) in caplog.text
    assert key not in caplog.text


def test_generated_key_reused(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    first = globalkey.load_or_create(str(tmp_path))

    second = globalkey.load_or_create(str(tmp_path))

    assert second == first
    assert first not in caplog.text


@pytest.mark.parametrize("content", ["", "\n", "weak-key-in-file"])
def test_short_key_file_rejected(content, tmp_path):
    key_file = tmp_path / globalkey.KEY_FILE_NAME
    key_file.write_text(content)

    with pytest.raises(ConfigError) as rejection:
        globalkey.load_or_create(str(tmp_path))

    assert str(key_file) in str(rejection.value)
    assert "\n" not in str(rejection.value)
    assert "weak-key-in-file" not in str(rejection.value)


def test_generated_keys_differ_per_folder(tmp_path):
    first = globalkey.load_or_create(str(tmp_path / "one"))
    second = globalkey.load_or_create(str(tmp_path / "two"))

    assert first != second


def test_generated_key_file_only_file_left(tmp_path):
    globalkey.load_or_create(str(tmp_path))

    assert sorted(path.name for path in tmp_path.iterdir()) == [globalkey.KEY_FILE_NAME]


def load_key_after_barrier(folder: str, barrier, results) -> None:
    """Wait for every process, then load or create the key; runs in a child process.

    Each existence check is slowed down as on a busy host. An implementation that checks for
    the file and then writes it would then let several processes write their own key.
    """
    real_exists = os.path.exists

    def slow_exists(path):
        found = real_exists(path)
        time.sleep(EXISTS_CHECK_DELAY_SECONDS)
        return found

    os.path.exists = slow_exists
    barrier.wait(timeout=30)
    results.put(globalkey.load_or_create(folder))


def test_concurrent_processes_share_key(tmp_path):
    # Fork starts the processes fast enough to race, and the child needs nothing re-imported.
    context = multiprocessing.get_context("fork")
    for round_number in range(KEY_RACE_ROUNDS):
        folder = tmp_path / f"round-{round_number}"
        barrier = context.Barrier(KEY_PROCESS_COUNT)
        results = context.Queue()
        processes = [
            context.Process(target=load_key_after_barrier, args=(str(folder), barrier, results))
            for _ in range(KEY_PROCESS_COUNT)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)

        assert [process.exitcode for process in processes] == [0] * KEY_PROCESS_COUNT
        keys = [results.get(timeout=5) for _ in processes]
        assert len(set(keys)) == 1, f"round {round_number}: {len(set(keys))} different keys"
        assert (folder / globalkey.KEY_FILE_NAME).read_text().strip() == keys[0]
        assert sorted(path.name for path in folder.iterdir()) == [globalkey.KEY_FILE_NAME]
