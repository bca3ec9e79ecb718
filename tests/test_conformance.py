"""The shared conformance check, run against real gunicorn with two workers."""

import subprocess
import sys

from tests.conftest import GLOBAL_KEY, REPO

CHECK = REPO.parent / "shared" / "conformance" / "check.py"


def test_conformance_core(server):
    assert CHECK.exists(), f"the conformance check is missing at {CHECK}"
    result = subprocess.run(
        [sys.executable, str(CHECK), "--base-url", server.base_url, "--global-key", GLOBAL_KEY, "--only", "core"],
        capture_output=True, text=True, timeout=300,
    )
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0, "\n".join(failures) or result.stdout[-2000:]
    assert result.stdout.rstrip().endswith("0 failed")
