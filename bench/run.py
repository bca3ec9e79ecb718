"""Benchmark evogate under gunicorn on SQLite and PostgreSQL, and print one table of results.

Run `make bench`, or `python bench/run.py` in the project's virtual environment (add
`--smoke` for a run of a few seconds with few instances, as CI does). For each kind of
database the script creates two fresh databases, one for most rows and one that contains the
large instance count from the start. It starts `gunicorn -c gunicorn.conf.py bench.ceiling:app`
on 127.0.0.1 with the shipped settings on each, seeds instances straight through the app's
models, loads the servers with wrk in a separate process and drops the databases at the end.
wrk must be on PATH. PostgreSQL is reached through EVOGATE_TEST_POSTGRES_URL (default: user
postgres on 127.0.0.1:5432), the same server the tests use.
"""

import argparse
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, insert, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import database  # noqa: E402
from auth import token_digest  # noqa: E402
from config import ENVIRONMENT_VARIABLES  # noqa: E402
from delivery_process import DELIVERY_TITLE, SUPERVISOR_TITLE  # noqa: E402
from models import OPEN, PENDING_EVENT, Event, Instance, Webhook, db  # noqa: E402

LOAD_SCRIPT = REPO / "bench" / "load.lua"
# The route bench/ceiling.py adds; importing that module here would build the app from the environment.
CEILING_PATH = "/bench/ceiling"
POSTGRES_URL = os.environ.get("EVOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GLOBAL_KEY = "bench-global-key-" + "0123456789abcdef" * 2
SEND_TEXT_BODY = json.dumps({"number": "5511999999999", "text": "benchmark message"})
# Tokens of at most this many instances are cycled through by a connectionState run.
TOKEN_SAMPLE = 1000
# Seconds after a sustained sendText load when the outbox must be empty (the target).
BACKLOG_CHECK_SECONDS = 5


@dataclass(frozen=True)
class Sizes:
    """Instance counts and durations of one benchmark mode."""

    small: int
    medium: int
    large: int
    seconds: int
    sustain_seconds: int
    drain_timeout: float
    # Runs of each row that a ratio is taken from. The rows take turns, and each shows its median run.
    rounds: int


FULL = Sizes(small=10, medium=1_000, large=10_000, seconds=10, sustain_seconds=20, drain_timeout=120, rounds=3)
SMOKE = Sizes(small=10, medium=20, large=50, seconds=1, sustain_seconds=2, drain_timeout=20, rounds=2)
WARM_UP_SECONDS = 2
# Maximum pause for requests that a wrk run left queued in the server.
MAX_SETTLE_SECONDS = 30


def row_labels(sizes: Sizes) -> list[str]:
    """Return the label of every row one database contributes to the table, in order."""
    return [
        "ceiling: same JSON, no key, no database",
        f"connectionState, instance token, {sizes.small:,} instances",
        f"connectionState, global key, {sizes.small:,} instances",
        "ratio: instance token / ceiling",
        f"fetchInstances, global key, {sizes.small:,} instances",
        f"sendText, instance token, {sizes.small:,} instances",
        "sustained sendText at half capacity, webhook receiver",
        "outbox backlog when the load stopped",
        f"outbox backlog {BACKLOG_CHECK_SECONDS} s after the load stopped",
        "outbox drain time",
        f"fetchInstances, global key, {sizes.medium:,} instances",
        f"full listing of {sizes.large:,} instances, one request",
        f"fetchInstances, global key, {sizes.large:,} instances",
        f"connectionState, instance token, {sizes.large:,} instances",
        f"ratio: {sizes.large:,} / {sizes.small:,} instances",
        "worker RSS after the benchmark (largest worker)",
        "webhook delivery process RSS after the benchmark",
    ]


@dataclass
class Row:
    label: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    rss_mb: float | None = None
    value: str = ""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# --- databases --------------------------------------------------------------------------------


class SqliteDatabase:
    name = "SQLite"

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="evogate-bench-")
        self.url = "sqlite:///" + os.path.join(self.directory, "evogate.db")

    def drop(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class PostgresDatabase:
    name = "PostgreSQL"

    def __init__(self, server_url: str):
        import psycopg

        self.server_url = make_url(server_url)
        self.database = f"evogate_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(self.connection_string(self.server_url), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        self.url = self.server_url.set(drivername="postgresql+psycopg", database=self.database).render_as_string(
            hide_password=False
        )

    @staticmethod
    def connection_string(url) -> str:
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.connection_string(self.server_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


# --- the server under test ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_settings(database_url: str) -> dict[str, str]:
    """Return the evogate settings of the benchmark server; everything else keeps its default."""
    return {
        "DATABASE_CONNECTION_URI": database_url,
        "AUTHENTICATION_API_KEY": GLOBAL_KEY,
        "AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES": "true",
        "LOG_LEVEL": "WARNING",
    }


class Server:
    """gunicorn with the shipped gunicorn.conf.py, serving `bench.ceiling:app` on 127.0.0.1."""

    def __init__(self, database_url: str, log_path: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        environment = {
            name: value for name, value in os.environ.items()
            if name not in ENVIRONMENT_VARIABLES and not name.startswith(("AUTHENTICATION_", "DATABASE_", "WEBHOOK_"))
        }
        environment.update(server_settings(database_url))
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bench.ceiling:app",
             "--bind", f"127.0.0.1:{self.port}"],
            cwd=REPO, env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with status {self.process.returncode}; see {self.log.name}")
            try:
                if http_get(self.base_url, "/health/live", None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not respond /health/live within {timeout} s; see {self.log.name}")

    def worker_status(self) -> list[dict[str, str]]:
        """Return the /proc status fields of each gunicorn worker (the master's children but the supervisor)."""
        return [fields for fields in self.processes_status(self.process.pid) if fields["title"] != SUPERVISOR_TITLE]

    def delivery_status(self) -> list[dict[str, str]]:
        """Return the /proc status fields of the webhook delivery process, the supervisor's child."""
        supervisors = [fields for fields in self.processes_status(self.process.pid) if fields["title"] == SUPERVISOR_TITLE]
        return [fields for supervisor in supervisors for fields in self.processes_status(int(supervisor["Pid"]))
                if fields["title"] == DELIVERY_TITLE]

    @staticmethod
    def processes_status(parent_pid: int) -> list[dict[str, str]]:
        """Return the /proc status fields of the children of `parent_pid`, with their process title as "title"."""
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("PPid", "").strip() == str(parent_pid):
                fields["title"] = title
                children.append(fields)
        return children

    def worker_count(self) -> int:
        return len(self.worker_status())

    def worker_rss_mb(self) -> float:
        """Return the resident set size of the largest worker, in MiB."""
        return largest_rss_mb(self.worker_status())

    def delivery_rss_mb(self) -> float:
        """Return the resident set size of the webhook delivery process, in MiB."""
        return largest_rss_mb(self.delivery_status())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def largest_rss_mb(processes: list[dict[str, str]]) -> float:
    sizes_kib = [int(fields["VmRSS"].split()[0]) for fields in processes if "VmRSS" in fields]
    return max(sizes_kib, default=0) / 1024


def http_get(base_url: str, path: str, key: str | None, timeout: float = 60) -> tuple[int, bytes]:
    port = int(base_url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"apikey": key} if key else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- seeding -------------------------------------------------------------------------------------


def instance_name(number: int) -> str:
    return f"bench-{number:05d}"


def instance_token(number: int) -> str:
    return f"BENCH{number:027d}"


class Seeder:
    """Inserts instances and webhooks straight through the app's models, in one transaction each."""

    def __init__(self, database_url: str):
        from app import create_app  # noqa: PLC0415 - imported late so `--help` stays fast

        self.app = create_app(server_settings(database_url))
        self.count = 0

    def grow_to(self, total: int) -> None:
        rows = [
            {"name": instance_name(number), "token_digest": token_digest(instance_token(number)),
             "connection_status": OPEN}
            for number in range(self.count, total)
        ]
        with self.app.app_context():
            database.begin_write()
            for start in range(0, len(rows), 1000):
                db.session.execute(insert(Instance), rows[start:start + 1000])
            db.session.commit()
        self.count = max(self.count, total)
        self.vacuum()

    def vacuum(self) -> None:
        """Run PostgreSQL's VACUUM ANALYZE now, so autovacuum does not start it during a later row.

        After thousands of new instances, and the messages and outbox rows of the sendText
        rows, autovacuum would otherwise take CPU from whichever row ran when it started.
        """
        with self.app.app_context():
            if db.engine.dialect.name != "postgresql":
                return
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")

    def add_webhooks(self, count: int, url: str) -> None:
        with self.app.app_context():
            database.begin_write()
            pks = db.session.scalars(select(Instance.pk).order_by(Instance.pk).limit(count)).all()
            db.session.execute(insert(Webhook), [
                {"instance_pk": pk, "enabled": True, "url": url, "events": ["SEND_MESSAGE"],
                 "by_events": False, "base64": False, "headers": {}, "secret": "whsec_" + secrets.token_hex(32)}
                for pk in pks
            ])
            db.session.commit()

    def pending_events(self) -> int:
        with self.app.app_context():
            count = db.session.scalar(select(func.count()).select_from(Event).where(Event.status == PENDING_EVENT))
            db.session.rollback()
            return count

    def dispose(self) -> None:
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """A wrk load: (path, key) targets that requests cycle through, one method and an optional body."""

    targets: list[tuple[str, str]]
    method: str = "GET"
    body: str | None = None
    # Requests per second, across all of wrk's threads, to hold instead of loading as fast as possible.
    rate: float | None = None


def run_wrk(base_url: str, load: Load, seconds: int, threads: int, connections: int, work: Path) -> LoadResult:
    targets_path = work / f"targets-{uuid.uuid4().hex}.txt"
    targets_path.write_text("".join(f"{path}\t{key}\n" for path, key in load.targets))
    environment = {**os.environ, "BENCH_TARGETS": str(targets_path), "BENCH_METHOD": load.method}
    if load.rate:
        environment["BENCH_INTERVAL_MS"] = f"{1000 * threads / load.rate:.3f}"
    if load.body is not None:
        environment["BENCH_BODY"] = load.body
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(LOAD_SCRIPT), base_url]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=seconds + 60)
    targets_path.unlink()
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            requests, duration_us, p50_us, p99_us, errors = (int(part) for part in line.split()[1:])
            return LoadResult(requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, errors)
    raise RuntimeError(f"wrk printed no result (exit status {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")


class ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with self.server.count_lock:
            self.server.received += 1

    def log_message(self, format, *args):
        pass


def start_receiver() -> ThreadingHTTPServer:
    """Start a webhook receiver on 127.0.0.1 that responds 200 to every POST and counts the POSTs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReceiverHandler)
    server.daemon_threads = True
    server.received = 0
    server.count_lock = threading.Lock()
    threading.Thread(target=server.serve_forever, name="bench-receiver", daemon=True).start()
    return server


# --- one database --------------------------------------------------------------------------------


def token_targets(path_template: str, count: int) -> list[tuple[str, str]]:
    """Return (path, token) pairs spread evenly over `count` instances, at most TOKEN_SAMPLE of them."""
    step = max(1, count // TOKEN_SAMPLE)
    return [(path_template.format(name=instance_name(n)), instance_token(n)) for n in range(0, count, step)]


def settle(server: Server, previous: LoadResult, connections: int) -> None:
    """Wait until the server has likely finished the requests the previous wrk run left queued.

    wrk stops at its deadline with a request open on each connection, and a sync worker
    finishes every request it accepted, so slow requests would otherwise be measured in the
    next row. The wait is an estimate: the p99 latency times the open requests per worker.
    """
    workers = max(1, server.worker_count())
    time.sleep(min(MAX_SETTLE_SECONDS, previous.p99_ms / 1000 * connections / workers))


def load_row(label: str, result: LoadResult, server: Server) -> Row:
    return Row(label, rps=result.rps, p50_ms=result.p50_ms, p99_ms=result.p99_ms, errors=result.errors,
               rss_mb=server.worker_rss_mb())


def median_rows(loads: list[tuple[str, Load, "Target"]], rounds: int) -> list[Row]:
    """Run each load `rounds` times, taking turns, and return each one's median run as a row.

    Taking turns spreads a passing disturbance of the machine over every load, so the ratios
    between them vary less than the rates themselves. The median leaves out one odd run.
    """
    runs: list[list[Row]] = [[] for _ in loads]
    for _ in range(rounds):
        for (label, load, target), label_runs in zip(loads, runs):
            label_runs.append(load_row(label, target.wrk(load), target.server))
    rows = []
    for label_runs in runs:
        ordered = sorted(label_runs, key=lambda row: row.rps)
        median = ordered[len(ordered) // 2]
        if rounds > 1:
            median.value = "median of runs at " + " / ".join(f"{row.rps:,.0f}" for row in label_runs) + " req/s"
        rows.append(median)
    return rows


def ratio_row(label: str, numerator: Row, denominator: Row) -> Row:
    ratio = numerator.rps / denominator.rps if denominator.rps else 0.0
    return Row(label, value=f"{ratio:.2f}x")


@dataclass
class Target:
    """A server under load and the settings of the wrk runs aimed at it."""

    server: Server
    sizes: Sizes
    options: argparse.Namespace
    work: Path

    def wrk(self, load: Load, seconds: int | None = None) -> LoadResult:
        return run_wrk(self.server.base_url, load, seconds or self.sizes.seconds, self.options.threads,
                       self.options.connections, self.work)


def benchmark_database(main_database, large_database, sizes: Sizes, options, work: Path, report) -> list[Row]:
    """Run every row on one kind of database and return them in table order.

    `large_database` is a second, empty database of the same kind. Its own server has the
    large instance count from the start, so the token rows at the small and the large count
    run in turns, under the same conditions.
    """
    labels = row_labels(sizes)
    rows: list[Row] = []
    server = Server(main_database.url, work / f"gunicorn-{main_database.name}.log")
    large_server = Server(large_database.url, work / f"gunicorn-{main_database.name}-large.log")
    seeder = None
    large_seeder = None
    receiver = None
    try:
        server.wait_ready()
        large_server.wait_ready()
        seeder = Seeder(main_database.url)
        seeder.grow_to(sizes.small)
        large_seeder = Seeder(large_database.url)
        large_seeder.grow_to(sizes.large)
        main = Target(server, sizes, options, work)
        large = Target(large_server, sizes, options, work)
        wrk = main.wrk

        def add(row: Row) -> Row:
            rows.append(row)
            report(main_database.name, row)
            return row

        state = "/instance/connectionState/{name}"
        global_targets = [(state.format(name=instance_name(n)), GLOBAL_KEY) for n in range(sizes.small)]
        # Unrecorded warm-up: each worker opens its database connections and compiles its queries.
        wrk(Load(token_targets(state, sizes.small) + global_targets + [(CEILING_PATH, "")]), seconds=WARM_UP_SECONDS)
        large.wrk(Load(token_targets(state, sizes.large)), seconds=WARM_UP_SECONDS)
        ceiling, token_small, global_small, token_large = median_rows(
            [(labels[0], Load([(CEILING_PATH, "")]), main),
             (labels[1], Load(token_targets(state, sizes.small)), main),
             (labels[2], Load(global_targets), main),
             (labels[13], Load(token_targets(state, sizes.large)), large)],
            sizes.rounds,
        )
        large_server.stop()
        for row in (ceiling, token_small, global_small):
            add(row)
        add(ratio_row(labels[3], token_small, ceiling))
        add(load_row(labels[4], wrk(Load([("/instance/fetchInstances", GLOBAL_KEY)])), server))
        send_targets = token_targets("/message/sendText/{name}", sizes.small)
        send = add(load_row(labels[5], wrk(Load(send_targets, method="POST", body=SEND_TEXT_BODY)), server))

        # Half of the measured sendText capacity, held by starting requests on a schedule (see
        # bench/load.lua), so a server that keeps up gets the aimed rate whatever its latency.
        receiver = start_receiver()
        seeder.add_webhooks(sizes.small, f"http://127.0.0.1:{receiver.server_address[1]}/hook")
        half_rate = max(1.0, send.rps / 2)
        sustained = wrk(Load(send_targets, method="POST", body=SEND_TEXT_BODY, rate=half_rate),
                        seconds=sizes.sustain_seconds)
        stopped_at = time.monotonic()
        sustained_row = load_row(labels[6], sustained, server)
        sustained_row.value = f"aimed at {half_rate:,.0f} req/s"
        add(sustained_row)
        add(Row(labels[7], value=f"{seeder.pending_events()} events"))
        drained_after = None
        backlog_at_check = None
        deadline = stopped_at + max(sizes.drain_timeout, BACKLOG_CHECK_SECONDS)
        while time.monotonic() < deadline:
            pending = seeder.pending_events()
            elapsed = time.monotonic() - stopped_at
            if pending == 0 and drained_after is None:
                drained_after = elapsed
            if elapsed >= BACKLOG_CHECK_SECONDS and backlog_at_check is None:
                backlog_at_check = pending
            if drained_after is not None and backlog_at_check is not None:
                break
            time.sleep(0.1)
        add(Row(labels[8], value="not reached" if backlog_at_check is None else f"{backlog_at_check} events"))
        add(Row(labels[9], value=f"{drained_after:.1f} s" if drained_after is not None
                else f"not drained within {sizes.drain_timeout:.0f} s"))

        seeder.grow_to(sizes.medium)
        medium_listing = wrk(Load([("/instance/fetchInstances", GLOBAL_KEY)]))
        add(load_row(labels[10], medium_listing, server))
        seeder.grow_to(sizes.large)
        settle(server, medium_listing, options.connections)
        started = time.perf_counter()
        status, body = http_get(server.base_url, "/instance/fetchInstances", GLOBAL_KEY)
        listing_seconds = time.perf_counter() - started
        listed = len(json.loads(body)) if status == 200 else 0
        add(Row(labels[11], value=f"{listing_seconds:.3f} s, status {status}, {listed:,} instances"))
        large_listing = wrk(Load([("/instance/fetchInstances", GLOBAL_KEY)]))
        add(load_row(labels[12], large_listing, server))
        add(token_large)
        add(ratio_row(labels[14], token_large, token_small))
        add(Row(labels[15], rss_mb=server.worker_rss_mb()))
        add(Row(labels[16], rss_mb=server.delivery_rss_mb()))
        return rows
    finally:
        if receiver is not None:
            receiver.shutdown()
        for each_seeder in (seeder, large_seeder):
            if each_seeder is not None:
                each_seeder.dispose()
        server.stop()
        large_server.stop()


# --- output --------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu_model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                              if line.startswith("MemTotal")))
        memory = f"{memory_kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown memory"
    return f"{os.cpu_count()} cores, {cpu_model}, {memory}, Python {platform.python_version()}, {platform.system()}"


def format_number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


HEADER = f"| {'database':<10} | {'row':<58} | {'req/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} | {'errors':>6} | {'RSS MB':>6} | value"


def format_row(database: str, row: Row) -> str:
    errors = "" if row.errors is None else str(row.errors)
    return (f"| {database:<10} | {row.label:<58} | {format_number(row.rps):>9} | {format_number(row.p50_ms, 2):>8} "
            f"| {format_number(row.p99_ms, 2):>8} | {errors:>6} | {format_number(row.rss_mb):>6} | {row.value}")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="run every row in a few seconds with few instances (for CI); the numbers mean little")
    parser.add_argument("--databases", default="sqlite,postgresql",
                        help="comma-separated databases to run: sqlite, postgresql (default: both)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 10, or 1 with --smoke)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL server to create the benchmark database on, as a URL whose user may "
                             "CREATE DATABASE (default: EVOGATE_TEST_POSTGRES_URL or postgres@127.0.0.1:5432)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if shutil.which("wrk") is None:
        print("wrk was not found on PATH; install it (e.g. apt-get install wrk) and run again", file=sys.stderr)
        return 2
    sizes = SMOKE if options.smoke else FULL
    if options.seconds:
        sizes = Sizes(**{**sizes.__dict__, "seconds": options.seconds})
    databases = [name.strip().lower() for name in options.databases.split(",") if name.strip()]
    unknown = set(databases) - {"sqlite", "postgresql"}
    if unknown:
        print(f"Unknown database(s) {', '.join(sorted(unknown))}; use sqlite and/or postgresql", file=sys.stderr)
        return 2

    print(f"Machine: {machine_description()}")
    print(f"Load: wrk -t{options.threads} -c{options.connections} -d{sizes.seconds}s per row"
          f"{' (smoke mode)' if options.smoke else ''}; sustained sendText for {sizes.sustain_seconds} s")
    print(HEADER, flush=True)

    def report(database_name: str, row: Row) -> None:
        print(format_row(database_name, row), flush=True)

    work = Path(tempfile.mkdtemp(prefix="evogate-bench-work-"))
    try:
        for name in databases:
            def create_database():
                return SqliteDatabase() if name == "sqlite" else PostgresDatabase(options.postgres_url)

            main_database = create_database()
            try:
                large_database = create_database()
                try:
                    benchmark_database(main_database, large_database, sizes, options, work, report)
                finally:
                    large_database.drop()
            finally:
                main_database.drop()
    except BaseException:
        print(f"The benchmark failed; the gunicorn logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
