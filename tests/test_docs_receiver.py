"""The example receiver in docs/webhooks.md works against a real server, as published."""

import re
import subprocess
import sys
import time

from tests.conftest import GLOBAL_KEY, REPO
from tests.server import free_port

SECRET = "docs-example-secret-0123456789"


def example_receiver_source(port: int) -> str:
    text = (REPO / "docs" / "webhooks.md").read_text()
    source = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'SECRET = b"the secret from webhook/find"' in source
    assert '("127.0.0.1", 9000)' in source
    source = source.replace('b"the secret from webhook/find"', repr(SECRET.encode()))
    return source.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {port})')


def send_through_example_receiver(server_factory, tmp_path, webhook_secret: str) -> tuple[dict, str]:
    """Send one message to the example receiver; return the message's final record and the output."""
    port = free_port()
    script = tmp_path / "receiver.py"
    script.write_text(example_receiver_source(port))
    receiver = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server = server_factory("sqlite")
        status, _, body = server.request("POST", "/instance/create", GLOBAL_KEY, {
            "instanceName": "docs-shop",
            "webhook": {"url": f"http://127.0.0.1:{port}/hook", "events": ["SEND_MESSAGE"], "secret": webhook_secret},
        })
        assert status == 201
        token = body["hash"]
        status, _, sent = server.request("POST", "/message/sendText/docs-shop", token,
                                         {"number": "5511999999999", "text": "hello docs"})
        assert status == 201

        record = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, _, found = server.request("POST", "/chat/findMessages/docs-shop", token,
                                         {"where": {"key": {"id": sent["key"]["id"]}}})
            record = found["messages"]["records"][0]
            if record["status"] != "PENDING":
                break
            time.sleep(0.2)
    finally:
        receiver.terminate()
        output = receiver.communicate(timeout=10)[0]
    return record, output


def test_example_receiver_accepts_signed_delivery(server_factory, tmp_path):
    record, output = send_through_example_receiver(server_factory, tmp_path, SECRET)
    assert record["status"] == "SERVER_ACK"
    assert "send.message docs-shop" in output


def test_example_receiver_rejects_wrong_signature(server_factory, tmp_path):
    record, output = send_through_example_receiver(server_factory, tmp_path, "another-secret-9876543210")
    assert record["status"] == "ERROR"
    assert "send.message" not in output
