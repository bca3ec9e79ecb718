"""The deliveries' HTTP client against a local HTTP/1.1 server that keeps connections open."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import webhook_http


class KeepAliveServer(ThreadingHTTPServer):
    """An HTTP/1.1 server that responds 200 to every POST and counts connections and requests.

    With `drop_request` set, the server reads that request (counting from 1) and closes its
    connection without a response, as a receiver does when it closes an idle connection just
    as the next request arrives.
    """

    daemon_threads = True

    def __init__(self, drop_request: int | None = None):
        super().__init__(("127.0.0.1", 0), self.handler_class())
        self.drop_request = drop_request
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

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
                    drop = server.requests == server.drop_request
                if drop:
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

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
        statuses = [client.post(server.url, 5, data=b"{}").status_code for _ in range(5)]

    assert statuses == [200] * 5
    assert server.requests == 5
    assert server.connections == 1


def test_client_resends_on_closed_connection(start_server):
    server = start_server(drop_request=2)

    with webhook_http.Client() as client:
        first = client.post(server.url, 5, data=b"{}")
        second = client.post(server.url, 5, data=b"{}")

    assert (first.status_code, second.status_code) == (200, 200)
    # The second request was read once on the old connection and once more on a new one.
    assert server.requests == 3
    assert server.connections == 2


def test_client_new_connection_failure_raised(start_server):
    server = start_server(drop_request=1)

    with webhook_http.Client() as client, pytest.raises(webhook_http.requests.ConnectionError):
        client.post(server.url, 5, data=b"{}")

    assert server.requests == 1
