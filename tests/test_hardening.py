"""Inputs found by attacking a running server: each must get a clean answer and change nothing."""

import http.client
import json
import threading

import pytest

from tests.conftest import GLOBAL_KEY
from tests.server import Gunicorn


def test_control_characters_escaped_in_logs(server_factory):
    server = server_factory("sqlite")
    forged = "/instance/connectionState/x%0a2026-12-04%2000:00:00,000%20INFO%20instances:%20Instance%20deleted%00"

    status, _, _ = server.request("GET", forged)

    assert status == 401
    log = server.log()
    assert "\x00" not in log
    assert not any(line.startswith("2026-12-04 00:00:00,000 INFO instances") for line in log.splitlines())
    assert "\\x0a2026-12-04" in log


def send_chunked(server: Gunicorn, path: str, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("apikey", GLOBAL_KEY)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(body), 65536):
            chunk = body[start:start + 65536]
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        return connection.getresponse().status
    finally:
        connection.close()


def test_chunked_body_over_limit_rejected(server_factory):
    server = server_factory("sqlite")

    status = send_chunked(server, "/instance/create", b'{"instanceName": "chunked1"}' + b" " * (3 * 1024 * 1024))

    assert status == 413
    assert server.request("GET", "/instance/connectionState/chunked1", GLOBAL_KEY)[0] == 404


def test_small_chunked_body_accepted(server_factory):
    server = server_factory("sqlite")

    assert send_chunked(server, "/instance/create", b'{"instanceName": "chunked2"}') == 201


def test_duplicate_json_keys_rejected(api):
    response = api.client.post("/instance/create", headers={"apikey": GLOBAL_KEY},
                               data='{"instanceName": "a1", "instanceName": "b1"}', content_type="application/json")

    assert response.status_code == 400
    assert "instanceName" in response.get_json()["message"]
    assert api.request("GET", "/instance/fetchInstances", GLOBAL_KEY).get_json() == []


def test_compressed_body_rejected(api):
    response = api.client.post("/instance/create", headers={"apikey": GLOBAL_KEY, "Content-Encoding": "gzip"},
                               data=json.dumps({"instanceName": "gz1"}), content_type="application/json")

    assert response.status_code == 415


def test_doubled_slash_is_json_404(api):
    api.create_instance("shop1")

    response = api.request("GET", "/instance//connectionState/shop1", GLOBAL_KEY, headers={"Host": "evil.example"})

    assert response.status_code == 404
    assert response.get_json()["statusCode"] == 404
    assert "Location" not in response.headers


@pytest.mark.parametrize("header", ["Transfer-Encoding", "Content-Length", "Host", "Connection", "Expect"])
def test_framing_webhook_header_rejected(api, header):
    _, token = api.create_instance("shop1")

    response = api.request("POST", "/webhook/set/shop1", token, json={
        "webhook": {"enabled": True, "url": "http://127.0.0.1:9/hook", "headers": {header: "1"}},
    })

    assert response.status_code == 400
    assert header in response.get_json()["message"]


def test_authorization_webhook_header_accepted(api):
    _, token = api.create_instance("shop1")

    response = api.request("POST", "/webhook/set/shop1", token, json={
        "webhook": {"enabled": True, "url": "http://127.0.0.1:9/hook", "headers": {"Authorization": "Bearer abc"}},
    })

    assert response.status_code == 201


def test_change_racing_delete_is_not_500(backend, server_factory):
    server = server_factory(backend, workers=3)
    statuses = []
    for round_number in range(12):
        name = f"race-{round_number}"
        assert server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": name})[0] == 201
        requests = [("DELETE", f"/instance/delete/{name}")] + [
            ("POST", f"/instance/rotateToken/{name}"), ("DELETE", f"/instance/logout/{name}"),
            ("GET", f"/instance/connect/{name}"), ("POST", f"/instance/rotateToken/{name}"),
        ]

        def send(method, path):
            statuses.append(server.request(method, path, GLOBAL_KEY)[0])

        threads = [threading.Thread(target=send, args=request) for request in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert 500 not in statuses, statuses
    assert set(statuses) <= {200, 404}, statuses
