"""The benchmark's smoke mode runs end to end on both databases and prints every row.

Timings on a shared CI machine mean little, so only the rows and their error counts are checked.
"""

import shutil
import subprocess
import sys

import pytest

from bench.run import SMOKE, row_labels
from tests.conftest import POSTGRES_URL, REPO

DATABASES = ("SQLite", "PostgreSQL")


@pytest.fixture(scope="module")
def smoke_output() -> str:
    if shutil.which("wrk") is None:
        pytest.fail("the benchmark needs wrk on PATH; install the Debian package wrk, as .ci/run does")
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--postgres-url", POSTGRES_URL],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


def table_rows(output: str, database: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"| {database} ")]


@pytest.mark.parametrize("database", DATABASES)
def test_bench_smoke_prints_every_row(smoke_output, database):
    printed = table_rows(smoke_output, database)
    for label in row_labels(SMOKE):
        assert any(f" {label} " in line for line in printed), f"{database}: row {label!r} missing\n{smoke_output}"


@pytest.mark.parametrize("database", DATABASES)
def test_bench_smoke_gets_only_successes(smoke_output, database):
    """wrk counted no error (no connection failure, no response outside 2xx and 3xx) in any row."""
    for line in table_rows(smoke_output, database):
        errors = line.split("|")[6].strip()
        assert errors in ("", "0"), f"wrk counted errors: {line}"


@pytest.mark.parametrize("database", DATABASES)
def test_bench_smoke_measures_delivery_process(smoke_output, database):
    """The RSS rows found the workers and the webhook delivery process, each by its process title."""
    for label in (row_labels(SMOKE)[-2], row_labels(SMOKE)[-1]):
        [line] = [line for line in table_rows(smoke_output, database) if f" {label} " in line]
        assert float(line.split("|")[7]) > 0, line
