"""No key or token in responses or logs, checked through real gunicorn on each backend.

The file name sorts last so that pytest runs it after every other test file: its final
test reads the log files the whole run has written to test-logs/ so far.
"""

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.conftest import GLOBAL_KEY, LOG_DIRECTORY, REPO

CHECK = REPO.parent / "shared" / "conformance" / "check.py"
# The form of generated instance tokens. No other value that the server logs has this form.
GENERATED_TOKEN_PATTERN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-F]{32}(?![0-9A-Fa-f])")
SEND_TEXT_BODY = {"number": "5511999999999", "text": "hygiene"}


@dataclass
class Exchange:
    """One request and its complete response as text: status line, headers and body."""

    label: str
    status: int
    text: str


@dataclass
class Recorder:
    """Send requests to one server and keep every response, with the tokens issued and presented."""

    base_url: str
    exchanges: list[Exchange] = field(default_factory=list)
    # Each issued token, with the index of the one exchange whose response may show it.
    issued: dict[str, int] = field(default_factory=dict)
    presented: set[str] = field(default_factory=set)

    def send(self, label: str, method: str, path: str, headers: dict | None = None, body=None) -> Exchange:
        data = None
        all_headers = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status, reply_headers, payload = reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:
            status, reply_headers, payload = error.code, error.headers, error.read()
        text = f"{status}\n{reply_headers}\n{payload.decode('utf-8', 'replace')}"
        exchange = Exchange(label, status, text)
        self.exchanges.append(exchange)
        return exchange

    def with_key(self, label: str, method: str, path: str, key: str, body=None) -> Exchange:
        self.presented.add(key)
        return self.send(label, method, path, {"apikey": key}, body)

    def issue(self, exchange: Exchange) -> str:
        """Record the token shown in a create or rotate response and return it."""
        token = parse_json(exchange)["hash"]
        self.issued[token] = self.exchanges.index(exchange)
        return token


def parse_json(exchange: Exchange) -> dict:
    """Decode the body of a recorded exchange, which follows the first blank line."""
    return json.loads(exchange.text.split("\n\n", 1)[1])


def run_token_flow(recorder: Recorder) -> dict[str, int]:
    """Run creates, key placements, rotations, sends and deletes, and return each step's status by label."""
    custom = "hygiene-custom-" + os.urandom(8).hex()
    second_custom = "hygiene-second-" + os.urandom(8).hex()
    too_short = os.urandom(8).hex()[:15]
    with_space = "hygiene token " + os.urandom(8).hex()
    unknown_keys = ["unknown-" + os.urandom(16).hex(), os.urandom(16).hex().upper(), "u" * 200]
    recorder.presented.update([custom, second_custom, too_short, with_space, GLOBAL_KEY, *unknown_keys])
    state_path = "/instance/connectionState/hygiene-custom"

    created = recorder.with_key("create custom", "POST", "/instance/create", GLOBAL_KEY,
                                {"instanceName": "hygiene-custom", "token": custom})
    recorder.issue(created)
    generated = recorder.issue(recorder.with_key("create generated", "POST", "/instance/create", GLOBAL_KEY,
                                                 {"instanceName": "hygiene-generated"}))

    recorder.with_key("header key", "GET", state_path, custom)
    recorder.send("upper-case header", "GET", "/instance/connectionState/hygiene-generated", {"APIKEY": generated})
    recorder.send("query-string key", "GET", f"{state_path}?apikey={custom}")
    recorder.send("body key", "POST", "/message/sendText/hygiene-custom", body={**SEND_TEXT_BODY, "apikey": custom})
    recorder.send("bearer header", "GET", state_path, {"Authorization": f"Bearer {custom}"})
    recorder.send("authorization header", "GET", state_path, {"Authorization": custom})
    recorder.send("x-api-key header", "GET", "/instance/connectionState/hygiene-generated", {"X-Api-Key": generated})
    for index, unknown in enumerate(unknown_keys):
        recorder.with_key(f"unknown key {index}", "GET", state_path, unknown)

    recorder.with_key("short custom token", "POST", "/instance/create", GLOBAL_KEY,
                      {"instanceName": "hygiene-short", "token": too_short})
    recorder.with_key("custom token with space", "POST", "/instance/create", GLOBAL_KEY,
                      {"instanceName": "hygiene-space", "token": with_space})
    recorder.with_key("global key as token", "POST", "/instance/create", GLOBAL_KEY,
                      {"instanceName": "hygiene-global", "token": GLOBAL_KEY})
    recorder.with_key("taken token", "POST", "/instance/create", GLOBAL_KEY,
                      {"instanceName": "hygiene-taken", "token": custom})

    rotated = recorder.issue(recorder.with_key("rotate by global key", "POST",
                                               "/instance/rotateToken/hygiene-custom", GLOBAL_KEY))
    recorder.issue(recorder.with_key("rotate to custom", "POST", "/instance/rotateToken/hygiene-generated",
                                     generated, {"token": second_custom}))
    recorder.with_key("rotate to taken token", "POST", "/instance/rotateToken/hygiene-custom", rotated,
                      {"token": second_custom})
    recorder.with_key("old custom token", "GET", state_path, custom)
    recorder.with_key("old generated token", "GET", "/instance/connectionState/hygiene-generated", generated)

    recorder.with_key("send with rotated", "POST", "/message/sendText/hygiene-custom", rotated, SEND_TEXT_BODY)
    recorder.with_key("send with custom", "POST", "/message/sendText/hygiene-generated", second_custom, SEND_TEXT_BODY)
    recorder.with_key("fetch all", "GET", "/instance/fetchInstances", GLOBAL_KEY)
    recorder.with_key("fetch own", "GET", "/instance/fetchInstances", rotated)

    recorder.with_key("delete custom", "DELETE", "/instance/delete/hygiene-custom", rotated)
    recorder.with_key("delete generated", "DELETE", "/instance/delete/hygiene-generated", GLOBAL_KEY)
    recorder.with_key("deleted token", "GET", state_path, rotated)
    return {exchange.label: exchange.status for exchange in recorder.exchanges}


EXPECTED_STATUSES = {
    "create custom": 201,
    "create generated": 201,
    "header key": 200,
    "upper-case header": 200,
    "query-string key": 401,
    "body key": 401,
    "bearer header": 401,
    "authorization header": 401,
    "x-api-key header": 401,
    "unknown key 0": 401,
    "unknown key 1": 401,
    "unknown key 2": 401,
    "short custom token": 400,
    "custom token with space": 400,
    "global key as token": 400,
    "taken token": 400,
    "rotate by global key": 200,
    "rotate to custom": 200,
    "rotate to taken token": 400,
    "old custom token": 401,
    "old generated token": 401,
    "send with rotated": 201,
    "send with custom": 201,
    "fetch all": 200,
    "fetch own": 200,
    "delete custom": 200,
    "delete generated": 200,
    "deleted token": 401,
}


def run_conformance_check(base_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), "--base-url", base_url, "--global-key", GLOBAL_KEY, "--only", "core"],
        capture_output=True, text=True, timeout=300,
    )


def test_keys_absent_from_responses_and_log(server):
    # The checks list labels, never the keys, so a failure report does not print a secret.
    recorder = Recorder(server.base_url)

    statuses = run_token_flow(recorder)
    conformance = run_conformance_check(server.base_url)
    log = server.log()
    origins = {key: "presented" for key in recorder.presented}
    origins.update({token: f"issued by {recorder.exchanges[index].label}" for token, index in recorder.issued.items()})

    assert statuses == EXPECTED_STATUSES
    assert [exchange.label for exchange in recorder.exchanges if GLOBAL_KEY in exchange.text] == []
    shown_again = [
        (origins[token], exchange.label)
        for token, issuer in recorder.issued.items()
        for index, exchange in enumerate(recorder.exchanges)
        if token in exchange.text and index != issuer
    ]
    assert shown_again == []
    shown_presented = [
        exchange.label
        for key in recorder.presented - set(recorder.issued)
        for exchange in recorder.exchanges
        if key in exchange.text
    ]
    assert shown_presented == []
    global_key_logged = GLOBAL_KEY in log
    assert not global_key_logged
    assert sorted(origin for key, origin in origins.items() if key in log) == []
    assert len(GENERATED_TOKEN_PATTERN.findall(log)) == 0
    assert conformance.returncode == 0, conformance.stdout[-2000:]


def test_run_logs_hold_no_global_key():
    """Check every log file that this pytest run has written so far, because this test runs last."""
    log_files = sorted(LOG_DIRECTORY.glob("*.log"))
    leaking = [path.name for path in log_files if GLOBAL_KEY in path.read_text(errors="replace")]

    assert log_files, f"no log files in {LOG_DIRECTORY}"
    assert leaking == []
