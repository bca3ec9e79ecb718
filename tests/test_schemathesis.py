"""schemathesis against gunicorn: every response to generated requests is one the API document describes.

The settings (checks, cases per operation, instance names) are in tests/schemathesis.toml.
"""

import json
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import GLOBAL_KEY, REPO

CONFIG = REPO / "tests" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).with_name("st")
# The instances that tests/schemathesis.toml names. The test closes closed1 before the run.
INSTANCES = ("shop1", "shop2", "closed1", "doomed1", "doomed2")
MIN_CASES_PER_OPERATION = 100
TIME_LIMIT_SECONDS = 300
# These take no parameter and no body, so only one distinct request exists for each.
OPERATIONS_WITHOUT_INPUT = {
    "GET /", "GET /health/live", "GET /health/ready", "GET /openapi.json", "GET /docs", "GET /metrics",
}


@pytest.fixture
def refused_proxy():
    """A loopback address that refuses connections, to be the server's HTTP(S) proxy.

    Webhook deliveries to generated URLs then fail on this host instead of leaving it.
    """
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"


def proxy_settings(proxy: str) -> dict[str, str]:
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    return {**{name: proxy for name in names}, "NO_PROXY": "", "no_proxy": ""}


def cases_per_operation(report_directory: Path) -> dict[str, set[str]]:
    """Return the ids of the generated cases of each operation, read from the NDJSON report."""
    cases = defaultdict(set)
    for report in report_directory.glob("*.ndjson"):
        for line in report.read_text().splitlines():
            event = json.loads(line)
            recorder = event.get("ScenarioFinished", {}).get("recorder", {})
            for case_id, case in (recorder.get("cases") or {}).items():
                cases[f"{case['value']['method']} {case['value']['path']}"].add(case_id)
    return cases


def test_generated_requests_get_documented_responses(backend, server_factory, refused_proxy, tmp_path):
    server = server_factory(backend, **proxy_settings(refused_proxy))
    for name in INSTANCES:
        assert server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": name})[0] == 201
    assert server.request("DELETE", "/instance/logout/closed1", GLOBAL_KEY)[0] == 200

    # From a file: schemathesis leaves out the operation that serves the document it loaded.
    status, _, document = server.request("GET", "/openapi.json")
    assert status == 200
    document_path = tmp_path / "openapi.json"
    document_path.write_text(json.dumps(document))

    command = [
        str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", str(document_path), "--url", server.base_url,
        "--report", "ndjson", "--report-dir", str(tmp_path / "report"), "--no-color",
    ]
    # Only these variables, so that no proxy setting of the caller's shell redirects its requests.
    environment = {"PATH": str(SCHEMATHESIS.parent), "EVOGATE_SCHEMATHESIS_KEY": GLOBAL_KEY}
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=TIME_LIMIT_SECONDS,
        )
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace")  # bytes even with text=True
        pytest.fail(f"schemathesis ran longer than {TIME_LIMIT_SECONDS} s:\n{output[-4000:]}")
    elapsed = time.monotonic() - started

    assert result.returncode == 0, f"schemathesis failed:\n{result.stdout[-12000:]}\n{result.stderr[-2000:]}"
    assert elapsed < TIME_LIMIT_SECONDS
    cases = cases_per_operation(tmp_path / "report")
    for path, item in document["paths"].items():
        for method in item:
            label = f"{method.upper()} {path}"
            expected = 1 if label in OPERATIONS_WITHOUT_INPUT else MIN_CASES_PER_OPERATION
            assert len(cases[label]) >= expected, f"{label}: {len(cases[label])} cases, expected {expected}"
