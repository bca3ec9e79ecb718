"""GET /metrics through real gunicorn with two workers: totals over all workers, bounded labels, access."""

import os
import re
import signal
import stat
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import GLOBAL_KEY
from tests.scrape import Samples, parse_samples, sample_value, series_of
from tests.server import Gunicorn

ROUTE = "/instance/fetchInstances"
REQUESTS = "evogate_http_requests_total"
BATCH = 40
MAX_BATCHES = 5


def fetch_metrics(server: Gunicorn, key: str | None = GLOBAL_KEY) -> tuple[int, str, str]:
    """Return the status, content type and body of GET /metrics."""
    headers = {"apikey": key} if key is not None else {}
    request = urllib.request.Request(server.base_url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(server: Gunicorn) -> Samples:
    status, _, body = fetch_metrics(server)
    assert status == 200, body
    return parse_samples(body)


def send_batch(server: Gunicorn, count: int) -> None:
    """Send `count` requests from several threads at once, so that both workers take some."""
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: server.request("GET", ROUTE, GLOBAL_KEY)[0], range(count)))
    assert statuses == [200] * count


def requests_per_worker(directory: Path) -> dict[int, float]:
    """Read each worker's own counter file: how many requests to ROUTE that process handled."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(re.fullmatch(r"counter_(\d+)\.db", path.name).group(1))
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == REQUESTS and sample.labels.get("route") == ROUTE:
                    counts[pid] = counts.get(pid, 0) + sample.value
    return counts


def wait_for_workers(server: Gunicorn, count: int, excluded: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == count and excluded not in pids and server.request("GET", "/health/live")[0] == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not replace worker {excluded} within {timeout} s:\n{server.log()}")


def test_request_count_adds_up_over_workers(backend, server_factory, tmp_path):
    metrics_directory = tmp_path / "metrics"
    metrics_directory.mkdir()
    # Left from an earlier run: the stale counter file goes at start-up, other files stay.
    (metrics_directory / "counter_999999.db").write_bytes(b"stale")
    (metrics_directory / "notes.txt").write_text("not evogate's")
    server = server_factory(backend, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_directory))
    assert not (metrics_directory / "counter_999999.db").exists()
    assert (metrics_directory / "notes.txt").exists()

    sent = 0
    for _ in range(MAX_BATCHES):
        send_batch(server, BATCH)
        sent += BATCH
        per_worker = requests_per_worker(metrics_directory)
        if len([count for count in per_worker.values() if count > 0]) >= 2:
            break
    assert len(per_worker) >= 2, f"one worker answered all {sent} requests: {per_worker}"

    samples = scrape(server)
    assert sample_value(samples, REQUESTS, route=ROUTE, method="GET", status="200") == sent
    assert sample_value(samples, "evogate_http_request_duration_seconds_count", route=ROUTE, method="GET") == sent


def test_counts_survive_worker_exit(backend, server_factory, tmp_path):
    server = server_factory(backend, workers=2, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    send_batch(server, BATCH)
    per_worker = requests_per_worker(tmp_path)
    victim = max(per_worker, key=per_worker.get)
    assert victim in server.worker_pids()

    os.kill(victim, signal.SIGKILL)
    wait_for_workers(server, 2, excluded=victim)

    samples = scrape(server)
    assert sample_value(samples, REQUESTS, route=ROUTE, method="GET", status="200") == BATCH
    assert f"Worker (pid:{victim})" in server.log()


def test_labels_stay_bounded(backend, server_factory):
    server = server_factory(backend, workers=2)
    server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "warmup"})
    server.request("GET", "/instance/connectionState/warmup", GLOBAL_KEY)
    server.request("GET", "/no/such/path/warmup")
    scrape(server)  # a scrape is counted after its response, so only the next scrape shows it
    before = scrape(server)

    names = [f"tenant-{number:02d}" for number in range(50)]
    for name in names:
        assert server.request("GET", f"/instance/connectionState/{name}", GLOBAL_KEY)[0] == 404
        assert server.request("GET", f"/no/such/path/{name}")[0] == 404

    status, _, body = fetch_metrics(server)
    after = parse_samples(body)
    new_series = series_of(after, REQUESTS) - series_of(before, REQUESTS)
    assert new_series == {
        frozenset({("route", "/instance/connectionState/<name>"), ("method", "GET"), ("status", "404")}),
    }
    assert sample_value(after, REQUESTS, route="/instance/connectionState/<name>", method="GET", status="404") == 50
    assert sample_value(after, REQUESTS, route="unmatched", method="GET", status="404") == 51
    assert not [name for name in names if name in body]
    assert "warmup" not in body


def test_metrics_access_rules(backend, server_factory):
    server = server_factory(backend, workers=2)
    _, _, created = server.request("POST", "/instance/create", GLOBAL_KEY, {"instanceName": "shop1"})

    status, content_type, body = fetch_metrics(server, key=None)
    assert (status, content_type) == (401, "application/json")
    assert '"statusCode":401' in body.replace(" ", "")
    status, content_type, _ = fetch_metrics(server, key=created["hash"])
    assert (status, content_type) == (403, "application/json")
    status, content_type, body = fetch_metrics(server)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert created["hash"] not in body

    samples = parse_samples(body)
    assert sample_value(samples, "evogate_authentication_failures_total", reason="missing") == 1
    assert sample_value(samples, "evogate_authentication_failures_total", reason="forbidden") == 1
    assert sample_value(samples, "evogate_instances", state="open") == 1


def test_allowed_address_scrapes_without_key(backend, server_factory):
    server = server_factory(backend, workers=2, METRICS_ALLOWED_IPS="127.0.0.0/8")

    status, _, body = fetch_metrics(server, key=None)
    assert status == 200
    assert "evogate_instances" in body
    assert fetch_metrics(server, key="not-a-key-0123456789")[0] == 401


def test_private_metrics_directory_removed_at_exit(server_factory):
    server = server_factory("sqlite", workers=2)
    found = re.search(r"Workers share their Prometheus metrics in (\S+)", server.log())
    assert found, server.log()
    directory = Path(found.group(1))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    scrape(server)
    assert list(directory.glob("counter_*.db"))

    assert server.stop() == 0
    assert not directory.exists()


def test_bad_allow_list_stops_master(server_factory):
    with pytest.raises(RuntimeError, match="exited with 1") as raised:
        server_factory("sqlite", workers=2, METRICS_ALLOWED_IPS="10.0.0.1/8")
    refusals = [line for line in str(raised.value).splitlines() if "Refusing to start" in line]
    assert len(refusals) == 1
    assert "METRICS_ALLOWED_IPS contains '10.0.0.1/8'" in refusals[0]
