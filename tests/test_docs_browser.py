"""Swagger UI in headless Chromium: /docs renders the operations and loads nothing from other hosts."""

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

OPERATION_PATHS = ("/instance/create", "/instance/fetchInstances", "/message/sendText/{instanceName}",
                   "/webhook/set/{instanceName}", "/chat/findMessages/{instanceName}", "/health/ready")
# A rendered page is hundreds of KB; a blank or error page of this size is a few KB.
MIN_SCREENSHOT_BYTES = 50_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_command(profile: Path, *arguments: str) -> list[str]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed; install it with `apt-get install -y chromium`, as .ci/run does")
    return [
        executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
        # Every host name resolves to nothing, so even a request the page should not make cannot leave.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,1600", "--virtual-time-budget=15000",
        *arguments,
    ]


def run_chromium(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium exited with {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def read_net_log(path: Path) -> list[tuple[str, dict, int]]:
    """Return a Chromium net log's events as (event type name, parameters, source id)."""
    net_log = json.loads(path.read_text())
    names = {number: name for name, number in net_log["constants"]["logEventTypes"].items()}
    return [(names[event["type"]], event.get("params") or {}, event["source"]["id"]) for event in net_log["events"]]


def page_requests(events: list[tuple[str, dict, int]], origin: str) -> list[str]:
    """Return the URLs the page requested: the page itself and what its origin initiated."""
    return [
        parameters["url"] for name, parameters, _ in events
        if name == "URL_REQUEST_START_JOB" and "url" in parameters
        and (parameters.get("initiator") == origin or parameters.get("request_type") == "main frame")
    ]


def connection_targets(events: list[tuple[str, dict, int]]) -> tuple[list[str], dict[int, list[str]]]:
    """Return the address of every TCP connection attempt, and the addresses each socket that
    sent bytes (TCP or UDP) connected to."""
    attempts, addresses, senders = [], defaultdict(list), set()
    for name, parameters, source in events:
        if name == "TCP_CONNECT_ATTEMPT" and "address" in parameters:  # the begin event
            attempts.append(parameters["address"])
        if name in ("TCP_CONNECT", "UDP_CONNECT", "SOCKET_CONNECT"):
            address = parameters.get("remote_address") or parameters.get("address")
            if address:
                addresses[source].append(address)
        if name in ("SOCKET_BYTES_SENT", "UDP_BYTES_SENT"):
            senders.add(source)
    return attempts, {source: addresses[source] for source in senders}


def test_docs_page_renders_from_own_server(server_factory, tmp_path):
    server = server_factory("sqlite")
    net_log = tmp_path / "net-log.json"
    screenshot = tmp_path / "docs.png"
    url = f"{server.base_url}/docs"

    run_chromium(chromium_command(
        tmp_path / "profile-1", f"--screenshot={screenshot}", f"--log-net-log={net_log}", url,
    ))
    dom = run_chromium(chromium_command(tmp_path / "profile-2", "--dump-dom", url)).stdout

    assert screenshot.exists(), "chromium wrote no screenshot"
    image = screenshot.read_bytes()
    assert image.startswith(PNG_SIGNATURE)
    assert len(image) > MIN_SCREENSHOT_BYTES, f"the screenshot has only {len(image)} bytes; is the page blank?"
    for path in OPERATION_PATHS:
        assert f'data-path="{path}"' in dom, f"Swagger UI did not render {path}"

    events = read_net_log(net_log)
    requested = page_requests(events, server.base_url)
    assert f"{server.base_url}/openapi.json" in requested, "the page did not load the API document"
    assert [url for url in requested if not url.startswith(server.base_url + "/")] == []

    server_address = f"127.0.0.1:{server.port}"
    attempts, senders = connection_targets(events)
    assert server_address in attempts, "the net log shows no connection to the server"
    assert set(attempts) == {server_address}, f"chromium tried to connect to {sorted(set(attempts))}"
    for source, addresses in senders.items():
        assert set(addresses) == {server_address}, f"socket {source} sent data to {addresses}"
