"""Start real gunicorn servers for tests, exactly as users do, and talk HTTP to them."""

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from config import ENVIRONMENT_VARIABLES
from delivery_process import DELIVERY_TITLE, SUPERVISOR_TITLE

REPO = Path(__file__).resolve().parents[1]
LOG_DIRECTORY = REPO / "test-logs"
# Variables of the developer's shell that would change the server under test: evogate's own
# settings, and any name with one of these prefixes (such as a misspelt setting).
CLEARED_PREFIXES = ("AUTHENTICATION_", "DATABASE_", "SERVER_", "SSL_", "CORS_", "WEBHOOK_", "LOG_", "WEB_CONCURRENCY")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(overrides: dict[str, str]) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items()
        if name not in ENVIRONMENT_VARIABLES and not name.startswith(CLEARED_PREFIXES)
    }
    environment.update(overrides)
    return environment


class Gunicorn:
    """A gunicorn process started from the repository root with `gunicorn.conf.py`."""

    def __init__(self, environment: dict[str, str], workers: int = 2, name: str = "gunicorn"):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        LOG_DIRECTORY.mkdir(exist_ok=True)
        self.log_path = LOG_DIRECTORY / f"{name}-{self.port}.log"
        self.command = [
            sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
        ]
        self.environment = server_environment(environment)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Gunicorn":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/health/live")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not respond within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Return the process ids of the workers: the master's children except the delivery supervisor."""
        return [pid for pid in child_pids(self.process.pid) if process_title(pid) != SUPERVISOR_TITLE]

    def delivery_pids(self, timeout: float = 10) -> tuple[int, int]:
        """Return the process ids of the delivery supervisor and of its delivery process, once both run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for supervisor in child_pids(self.process.pid):
                if process_title(supervisor) == SUPERVISOR_TITLE:
                    deliverers = [pid for pid in child_pids(supervisor) if process_title(pid) == DELIVERY_TITLE]
                    if deliverers:
                        return supervisor, deliverers[0]
            time.sleep(0.05)
        raise AssertionError(f"no webhook delivery process ran within {timeout} s:\n{self.log()}")

    def request(self, method: str, path: str, key: str | None = None, body=None, headers=None,
                timeout: float = 30) -> tuple[int, dict, object]:
        """Send one request; return the status, the headers and the decoded JSON body."""
        return http_request(self.base_url, method, path, key, body, headers, timeout)

    def request_from(self, source_address: str, method: str, path: str, key: str | None = None, body=None,
                     headers=None, data: bytes | None = None, timeout: float = 30) -> tuple[int, dict, object]:
        """Send one request from a local source address such as 127.23.45.67, as `send_request` does."""
        return send_request(
            "127.0.0.1", self.port, method, path, key, body, headers,
            data=data, source_address=source_address, timeout=timeout,
        )

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def child_pids(pid: int) -> list[int]:
    """Return the process ids of the children of process `pid`, read from /proc (Linux)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def process_title(pid: int) -> str:
    """Return the command line of process `pid` as `ps` shows it, or "" once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def http_request(base_url: str, method: str, path: str, key: str | None = None, body=None, headers=None,
                 timeout: float = 30) -> tuple[int, dict, object]:
    all_headers = dict(headers or {})
    data = None
    if key is not None:
        all_headers["apikey"] = key
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base_url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, reply_headers, raw = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        status, reply_headers, raw = error.code, dict(error.headers), error.read()
    return status, reply_headers, json.loads(raw) if raw else None


class TLSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that verifies the certificate against `server_hostname`, not the dialled address."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, server_hostname: str, **kwargs):
        super().__init__(host, port, context=context, **kwargs)
        self.tls_context = context
        self.server_hostname = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.server_hostname)


def send_request(host: str, port: int, method: str, path: str, key: str | None = None, body=None, headers=None,
                 *, data: bytes | None = None, source_address: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 timeout: float = 30) -> tuple[int, dict, object]:
    """Send one request over a new connection, and return the status, the headers and the body.

    `body` is sent as JSON, `data` as raw bytes. With `source_address` the client socket is bound
    to that local address, which a loopback server then logs and counts as the client address. With
    `ssl_context` the connection uses TLS and checks the certificate for `server_hostname`.
    The body is decoded JSON when the response's Content-Type is JSON, otherwise text.
    """
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["apikey"] = key
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    source = (source_address, 0) if source_address else None
    if ssl_context is not None:
        connection = TLSConnection(
            host, port, ssl_context, server_hostname or host, timeout=timeout, source_address=source
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout, source_address=source)
    try:
        connection.request(method, path, body=data, headers=all_headers)
        reply = connection.getresponse()
        raw = reply.read()
        reply_headers = dict(reply.headers)
    finally:
        connection.close()
    if reply.headers.get_content_type() == "application/json" and raw:
        return reply.status, reply_headers, json.loads(raw)
    return reply.status, reply_headers, raw.decode(errors="replace")
