"""evogate behind the shipped deploy/nginx.conf: TLS, the allow-list, nginx's JSON errors and
the client address that throttling counts.

The site file is used as shipped, with only its ports, server name, certificate paths, upstream
address and allow-list network replaced by exact string replacement. A text to replace that is
missing, or found more often than expected, fails the tests, so a change to the shipped file is
noticed here. nginx and gunicorn
listen on loopback ports only. Clients bind to 127.0.0.x source addresses, so that each has its
own client address at nginx. The gunicorn behind nginx counts failures in memory with one worker,
so the counts are private to this module.
"""

import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GLOBAL_KEY, REPO, app_settings
from tests.server import Gunicorn, free_port, send_request

SITE_FILE = REPO / "deploy" / "nginx.conf"
HOSTNAME = "evogate.test"
LIMIT = 5
ALLOWED_CLIENT = "127.0.0.1"
DENIED_CLIENT = "127.0.0.2"
ONE_MIB = 1024 * 1024
FETCH = "/instance/fetchInstances"


@dataclass
class Nginx:
    """A running nginx and what clients need to reach it."""

    process: subprocess.Popen
    directory: Path
    http_port: int
    https_port: int
    ssl_context: ssl.SSLContext

    def request(self, method: str, path: str, key: str | None = None, body=None, headers=None,
                client: str = ALLOWED_CLIENT, data: bytes | None = None) -> tuple[int, dict, object]:
        """Send one request over verified TLS from the source address `client`."""
        return send_request(
            "127.0.0.1", self.https_port, method, path, key, body, {"Host": HOSTNAME, **(headers or {})},
            data=data, source_address=client, ssl_context=self.ssl_context, server_hostname=HOSTNAME,
        )

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def replace_exactly(text: str, old: str, new: str, expected_count: int) -> str:
    """Replace `old` in the shipped site file, failing when it occurs other than `expected_count` times."""
    found = text.count(old)
    assert found == expected_count, (
        f"{SITE_FILE} contains {old!r} {found} times, not {expected_count}; "
        "update this test's replacements to match the shipped file"
    )
    return text.replace(old, new)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Create a self-signed certificate for HOSTNAME with the openssl command."""
    certificate, private_key = directory / "fullchain.pem", directory / "privkey.pem"
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is missing; install openssl"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(private_key), "-out", str(certificate),
            "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}",
        ],
        check=True, capture_output=True, timeout=60,
    )
    return certificate, private_key


def write_configuration(directory: Path, upstream_port: int, http_port: int, https_port: int,
                        certificate: Path, private_key: Path) -> Path:
    """Write the adapted site file and a main configuration that includes it, and return the main file's path."""
    site = SITE_FILE.read_text()
    site = replace_exactly(site, "listen 80;", f"listen 127.0.0.1:{http_port};", 1)
    site = replace_exactly(site, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", 1)
    site = replace_exactly(site, "server_name evogate.example.com;", f"server_name {HOSTNAME};", 2)
    site = replace_exactly(site, "/etc/ssl/evogate/fullchain.pem", str(certificate), 1)
    site = replace_exactly(site, "/etc/ssl/evogate/privkey.pem", str(private_key), 1)
    site = replace_exactly(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};", 1)
    site = replace_exactly(site, "allow 203.0.113.0/24;", f"allow {ALLOWED_CLIENT}/32;", 1)
    (directory / "evogate.conf").write_text(site)

    # Workers run as root when the tests do, because the temporary directory is private to root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = f"""{user}worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/evogate.conf;
}}
"""
    path = directory / "nginx.conf"
    path.write_text(main)
    return path


def wait_until_ready(nginx: Nginx, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            pytest.fail(f"nginx exited with {nginx.process.returncode}:\n{nginx.error_log()}")
        try:
            nginx.request("GET", "/health/live")
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nginx did not respond on 127.0.0.1:{nginx.https_port} within {timeout} s:\n{nginx.error_log()}")


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(15)


@pytest.fixture(scope="module")
def upstream(databases):
    """Start the gunicorn behind nginx, which trusts one proxy hop and counts failures in memory."""
    settings = app_settings(
        databases.create("sqlite"), TRUSTED_PROXY_COUNT="1", AUTHENTICATION_FAILURE_LIMIT=f"{LIMIT}/hour"
    )
    server = Gunicorn(settings, workers=1, name="gunicorn-behind-nginx")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nginx(upstream, tmp_path_factory):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail("nginx is not installed (looked on PATH and at /usr/sbin/nginx); install nginx 1.22 or later")
    directory = tmp_path_factory.mktemp("nginx")
    certificate, private_key = make_certificate(directory)
    http_port, https_port = free_port(), free_port()
    configuration = write_configuration(directory, upstream.port, http_port, https_port, certificate, private_key)

    with open(directory / "nginx-output.log", "ab") as output:
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(configuration), "-e", str(directory / "error.log"),
             "-g", "daemon off;"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    context = ssl.create_default_context(cafile=str(certificate))
    running = Nginx(process, directory, http_port, https_port, context)
    try:
        wait_until_ready(running)
        yield running
    finally:
        stop_process_group(process)


def assert_nginx_error(status: int, headers: dict, body, expected_status: int, reason: str) -> None:
    assert status == expected_status, body
    assert headers["Content-Type"] == "application/json"
    assert body["statusCode"] == expected_status
    assert body["error"] == reason
    assert isinstance(body["message"], str) and body["message"]


def test_create_from_allowed_network(nginx):
    status, headers, body = nginx.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "via-nginx"})
    assert status == 201, body
    assert headers.get("Cache-Control") == "no-store"


def test_apikey_header_reaches_evogate(nginx):
    status, _, body = nginx.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "token-check"})
    assert status == 201, body
    token = body["hash"]

    status, _, body = nginx.request("GET", "/instance/connectionState/token-check", token)
    assert status == 200, body
    assert body == {"instance": {"instanceName": "token-check", "state": "open"}}
    status, _, body = nginx.request("GET", "/instance/connectionState/token-check", headers={"APIKEY": token})
    assert status == 200, body


def test_create_denied_outside_allow_list(nginx, upstream):
    status, headers, body = nginx.request(
        "POST", "/instance/create", GLOBAL_KEY, {"instanceName": "denied"}, client=DENIED_CLIENT
    )
    assert_nginx_error(status, headers, body, 403, "Forbidden")
    # The allow-list covers creation only.
    status, _, body = nginx.request("GET", FETCH, GLOBAL_KEY, client=DENIED_CLIENT)
    assert status == 200, body
    assert "denied" not in [instance["name"] for instance in body]


@pytest.mark.parametrize("path", ["/instance//create", "/instance/%63reate", "/instance/./create", "/instance/create/"])
def test_allow_list_path_variants(nginx, path):
    status, _, body = nginx.request("POST", path, GLOBAL_KEY, {"instanceName": "variant"}, client=DENIED_CLIENT)
    assert status in (403, 404), body
    status, _, body = nginx.request("GET", FETCH + "?instanceName=variant", GLOBAL_KEY)
    assert status == 404, body


def test_oversized_body_rejected_by_nginx(nginx, upstream):
    status, headers, body = nginx.request(
        "POST", "/instance/create", GLOBAL_KEY, data=b"{" + b" " * ONE_MIB,
        headers={"Content-Type": "application/json"},
    )
    assert_nginx_error(status, headers, body, 413, "Payload Too Large")
    # A body of exactly 1 MiB passes nginx and reaches evogate, which rejects the JSON itself.
    status, headers, body = nginx.request(
        "POST", "/instance/create", GLOBAL_KEY, data=b"{" + b" " * (ONE_MIB - 1),
        headers={"Content-Type": "application/json"},
    )
    assert status == 400, body
    assert body["statusCode"] == 400


def test_nginx_errors_carry_nosniff(nginx):
    answers = {
        "403": nginx.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "x"}, client=DENIED_CLIENT),
        "413": nginx.request(
            "POST", "/instance/create", GLOBAL_KEY, data=b"{" + b" " * ONE_MIB,
            headers={"Content-Type": "application/json"},
        ),
    }
    statuses = {name: answer[0] for name, answer in answers.items()}
    assert statuses == {"403": 403, "413": 413}
    without_nosniff = [name for name, answer in answers.items() if answer[1].get("X-Content-Type-Options") != "nosniff"]
    assert without_nosniff == []


def throttle_client(nginx: Nginx, client: str, forged_addresses: list[str] | None = None) -> None:
    """Send LIMIT wrong keys from `client`, then check that it is throttled, even with the global key."""
    for attempt in range(LIMIT):
        headers = {"X-Forwarded-For": forged_addresses[attempt]} if forged_addresses else {}
        status, _, body = nginx.request("GET", FETCH, secrets.token_hex(16), headers=headers, client=client)
        assert status == 401, f"failure {attempt + 1} of {LIMIT} from {client}: {body}"
    headers = {"X-Forwarded-For": forged_addresses[-1]} if forged_addresses else {}
    status, response_headers, body = nginx.request("GET", FETCH, GLOBAL_KEY, headers=headers, client=client)
    assert status == 429, body
    assert body["statusCode"] == 429
    assert "Retry-After" in response_headers


def test_throttle_counts_real_client(nginx, upstream):
    throttle_client(nginx, "127.0.0.3")

    status, _, body = nginx.request("GET", FETCH, GLOBAL_KEY, client=ALLOWED_CLIENT)
    assert status == 200, body
    assert re.findall(r"Authentication failed: .* client=(\S+)", upstream.log()).count("127.0.0.3") == LIMIT


def test_forged_forwarded_for_ignored(nginx, upstream):
    forged = [f"10.9.{secrets.randbelow(250)}.{number}" for number in range(1, LIMIT + 2)]
    throttle_client(nginx, "127.0.0.4", forged)

    status, _, body = nginx.request("GET", FETCH, GLOBAL_KEY, client=ALLOWED_CLIENT)
    assert status == 200, body
    logged_clients = re.findall(r"Authentication failed: .* client=(\S+)", upstream.log())
    assert logged_clients.count("127.0.0.4") == LIMIT
    assert not set(forged) & set(logged_clients)


def test_http_redirects_to_https(nginx):
    status, headers, _ = send_request(
        "127.0.0.1", nginx.http_port, "GET", FETCH + "?instanceName=a", GLOBAL_KEY, headers={"Host": HOSTNAME}
    )
    assert status == 301
    assert headers["Location"] == f"https://{HOSTNAME}{FETCH}?instanceName=a"


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_server_header_without_version(nginx, scheme):
    if scheme == "https":
        status, headers, _ = nginx.request("GET", "/")
    else:
        status, headers, _ = send_request("127.0.0.1", nginx.http_port, "GET", "/", headers={"Host": HOSTNAME})
    server_header = headers.get("Server", "")
    assert not re.search(r"\d", server_header), f"{scheme} answer {status}: Server: {server_header}"


def test_upstream_down_gives_json_502(nginx, upstream):
    """Stop gunicorn and check nginx's 502. The test is last in the file because a restart clears the failure counts."""
    upstream.stop()
    try:
        status, headers, body = nginx.request("GET", FETCH, GLOBAL_KEY)
        assert_nginx_error(status, headers, body, 502, "Bad Gateway")
    finally:
        upstream.start()
    status, _, body = nginx.request("GET", FETCH, GLOBAL_KEY)
    assert status == 200, body


def test_oversized_header_gives_json_400(nginx):
    status, headers, body = nginx.request("GET", FETCH, GLOBAL_KEY, headers={"X-Padding": "p" * 20000})

    assert_nginx_error(status, headers, body, 400, "Bad Request")


def test_plain_http_on_https_port_gives_json_400(nginx):
    status, headers, body = send_request("127.0.0.1", nginx.https_port, "GET", FETCH, GLOBAL_KEY,
                                         headers={"Host": HOSTNAME})

    assert_nginx_error(status, headers, body, 400, "Bad Request")
    assert "https://" in body["message"]
