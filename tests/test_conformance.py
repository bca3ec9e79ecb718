"""The shared conformance check, run against real gunicorn with two workers on each database."""

import subprocess
import sys

import pytest

from tests.conftest import GLOBAL_KEY, REPO

CHECK = REPO.parent / "shared" / "conformance" / "check.py"


def run_check(base_url: str, *options: str) -> subprocess.CompletedProcess:
    assert CHECK.exists(), f"the conformance check is missing at {CHECK}"
    return subprocess.run(
        [sys.executable, str(CHECK), "--base-url", base_url, "--global-key", GLOBAL_KEY, *options],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("expose", ["true", "false"])
def test_conformance_core_and_webhooks(backend, server_factory, expose):
    # The check's own instructions: short retry delays for its webhook section.
    server = server_factory(backend, WEBHOOK_RETRY_INITIAL_DELAY_SECONDS="1",
                            AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=expose)

    result = run_check(server.base_url, "--only", "core,webhooks", "--expose", expose)

    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0, "\n".join(failures) or result.stdout[-2000:]
    assert result.stdout.rstrip().endswith(" 0 failed")
