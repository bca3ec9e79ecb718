"""The deliveries' HTTP client against a local HTTP/1.1 server that keeps connections open."""

import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import webhook_http
from delivery_attempt import Claim, attempt_delivery


class KeepAliveServer(ThreadingHTTPServer):
    """An HTTP/1.1 server that responds 200 to every POST and counts connections and requests.

    With `drop_request` set, the server reads that request (counting from 1) and closes its
    connection without a response, as a receiver does when it closes an idle connection just
    as the next request arrives.
    """

    daemon_threads = True

    def __init__(self, drop_request: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 trickle: bool = False):
        super().__init__(("127.0.0.1", 0), self.handler_class())
        self.scheme = "http"
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.drop_request = drop_request
        # With `trickle`, every response is 50 bytes sent one every 0.2 seconds.
        self.trickle = trickle
        self.connections = 0
        self.requests = 0
        # The (name, value) header pairs of each request, in arrival order.
        self.headers: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/hook"

    def handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections += 1

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    server.requests += 1
                    server.headers.append(list(self.headers.items()))
                    drop = server.requests == server.drop_request
                if drop:
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", "50" if server.trickle else "0")
                self.end_headers()
                for _ in range(50 if server.trickle else 0):
                    time.sleep(0.2)
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, format, *args):
                pass

        return Handler


@pytest.fixture
def start_server():
    started = []

    def start(**options) -> KeepAliveServer:
        server = KeepAliveServer(**options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_client_reuses_one_connection(start_server):
    server = start_server()

    with webhook_http.Client() as client:
        statuses = [client.post(server.url, 5, b"{}").status for _ in range(5)]

    assert statuses == [200] * 5
    assert server.requests == 5
    assert server.connections == 1


def test_client_resends_on_closed_connection(start_server):
    server = start_server(drop_request=2)

    with webhook_http.Client() as client:
        first = client.post(server.url, 5, b"{}")
        second = client.post(server.url, 5, b"{}")

    assert (first.status, second.status) == (200, 200)
    # The second request was read once on the old connection and once more on a new one.
    assert server.requests == 3
    assert server.connections == 2


def test_client_new_connection_failure_raised(start_server):
    server = start_server(drop_request=1)

    with webhook_http.Client() as client, pytest.raises(webhook_http.ProtocolError):
        client.post(server.url, 5, b"{}")

    assert server.requests == 1


@pytest.fixture
def tls_server(tmp_path, start_server):
    """Start an HTTPS receiver with a self-signed certificate for 127.0.0.1.

    Returns the receiver and the certificate's path.
    """
    certificate, key = tmp_path / "receiver.pem", tmp_path / "receiver.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    return start_server(ssl_context=context), str(certificate)


def test_client_verifies_receiver_against_ca_bundle(tls_server):
    server, certificate = tls_server

    with webhook_http.Client(ca_bundle=certificate) as client:
        status = client.post(server.url, 5, b"{}").status
    with webhook_http.Client() as client, pytest.raises(webhook_http.urllib3.exceptions.SSLError):
        client.post(server.url, 5, b"{}")

    assert status == 200
    # The unverified attempt never got as far as a request.
    assert server.requests == 1


def test_deadline_bounds_each_whole_attempt(start_server):
    server = start_server(trickle=True)

    with webhook_http.Client() as client:
        durations = []
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(webhook_http.DeadlineExceeded):
                client.post(server.url, 1, b"{}")
            durations.append(time.monotonic() - started)

    # Each response takes 10 seconds to arrive, but each attempt ends at its own 1-second deadline.
    assert all(0.9 < duration < 3 for duration in durations), durations


def claim_for(url: str, headers: dict) -> Claim:
    return Claim(pk=1, public_id="event-1", queue="instance:test", name="SEND_MESSAGE", instance_name="shop1",
                 url=url, headers=headers, secret="whsec_test", body=b"{}", message_pk=None, attempt=1,
                 lease_token="lease-1")


CONFIG = {"WEBHOOK_BLOCK_PRIVATE_NETWORKS": False, "WEBHOOK_REQUEST_TIMEOUT_MS": 5000}


def test_fixed_headers_replace_configured_ones(start_server):
    server = start_server()
    url = server.url.replace("http://", "http://hook-user:secret@")

    with webhook_http.Client() as client:
        configured = {"authorization": "Bearer x", "user-agent": "mine", "X-Shop": "1"}
        outcome = attempt_delivery(claim_for(url, configured), CONFIG, client)

    names = [name.lower() for name, _ in server.headers[0]]
    received = {name.lower(): value for name, value in server.headers[0]}
    assert outcome.delivered
    # Whatever their case, a configured header and a fixed one of the same name go out once.
    assert names.count("authorization") == 1
    assert names.count("user-agent") == 1
    assert received["authorization"].startswith("Basic ")
    assert received["user-agent"].startswith("evogate/")
    assert received["x-shop"] == "1"


def test_refused_connection_is_no_timeout(start_server):
    server = start_server()
    url = server.url
    server.shutdown()
    server.server_close()

    with webhook_http.Client() as client:
        outcome = attempt_delivery(claim_for(url, {}), CONFIG, client)

    assert outcome.retryable
    assert outcome.error == "connection failed (NewConnectionError)"
