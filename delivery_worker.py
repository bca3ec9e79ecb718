"""The delivery threads: one claiming loop per server process and a pool of sender threads.

The loop claims batches of due events, one batch per queue, and hands each to a sender
thread. The thread posts the batch's events in order over a kept-open connection and hands
the outcomes back. Each thread keeps its client, and so its connections, between batches.
The loop then records the outcomes of every batch finished since its last turn and claims
the next batches in one transaction. Turns are at least `TURN_SECONDS` apart, so under load
one transaction serves many queues, while a receiver that hangs holds up only its own queue.

Under gunicorn, the loop runs in a delivery process of its own (`delivery_process.py`), and the
workers only serve requests. Elsewhere, such as the development server, the first request
starts it in the serving process.
"""

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from sqlalchemy.exc import OperationalError

import webhook_http
from delivery import Batch, record_and_claim
from delivery_attempt import Outcome, attempt_delivery
from delivery_record import will_retry
from models import db

logger = logging.getLogger(__name__)

# Sender threads per process: each receiver that hangs holds one until its timeout, so this
# many hanging receivers are needed before other instances' events wait. Under gunicorn one
# delivery process serves the server, as the 32 threads of each of 2 workers did before.
SENDER_THREADS = 64
# Maximum events of one queue leased and recorded together.
BATCH_SIZE = 20
# A sender thread starts no further event of a batch once this many seconds have passed since
# the claim, so the last attempt it starts ends within the lease.
BATCH_WINDOW_SECONDS = 1.0
# A lease outlives the batch window plus the request timeout by this much before another
# process may claim the events again.
LEASE_MARGIN_SECONDS = 5
# Shortest time between two turns of the loop. The batches that finish meanwhile share the
# next turn's transaction, where a loop that turned at once recorded one or two events per
# transaction. A delivery waits at most this much longer.
TURN_SECONDS = 0.05
# Pause after a failed transaction of the loop, so an unreachable database is not hammered.
FAILURE_PAUSE_SECONDS = 1
# After a stop is requested, how long the loop waits for the batches in flight, so their
# outcomes are recorded and not sent again when their lease ends.
STOP_GRACE_SECONDS = 5


class DeliveryWorker:
    """Claims batches of due events in a loop, hands them to sender threads and records their outcomes."""

    def __init__(self, app: Flask):
        self.app = app
        self.pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="evogate-delivery")
        self.lease_seconds = (app.config["WEBHOOK_REQUEST_TIMEOUT_MS"] / 1000 + BATCH_WINDOW_SECONDS
                              + LEASE_MARGIN_SECONDS)
        # Guards `in_flight` and `finished`, and is notified when a sender thread finishes a batch.
        self.changed = threading.Condition()
        self.in_flight = 0
        self.finished: list[tuple[Batch, list[Outcome]]] = []
        # Each sender thread's client, kept with its open connections from batch to batch.
        self.clients = threading.local()
        # Set by `request_stop`, which a signal handler may call, so it is a plain attribute.
        self.stopping = False

    def run(self, parent_pid: int | None = None) -> None:
        """Deliver until a stop is requested, or until the parent process `parent_pid` exits, if given."""
        poll_interval = self.app.config["WEBHOOK_POLL_INTERVAL_SECONDS"]
        next_turn = time.monotonic()
        while not self.stopping:
            time.sleep(max(0.0, next_turn - time.monotonic()))
            next_turn = time.monotonic() + TURN_SECONDS
            if parent_pid is not None and os.getppid() != parent_pid:
                logger.error("The parent of webhook delivery process %d exited; it stops, and webhooks wait until "
                             "the server restarts", os.getpid())
                break
            self.take_turn()
            with self.changed:
                # A finished batch wakes the loop for its next turn. New events wait for the poll interval.
                if not self.finished and not self.stopping:
                    self.changed.wait(poll_interval)
        self.finish()

    def request_stop(self) -> None:
        """Ask the loop to stop claiming: it records the batches in flight and returns from `run`."""
        self.stopping = True

    def finish(self) -> None:
        """Wait up to STOP_GRACE_SECONDS for the batches in flight, then record every finished batch.

        A batch still in flight after that keeps its lease, and its unrecorded events are sent
        again once the lease ends.
        """
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        with self.changed:
            while self.in_flight and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
            finished, self.finished = self.finished, []
            unfinished = self.in_flight
        if finished:
            self.record_and_claim(finished, 0)
        if unfinished:
            logger.warning("Stopped with %d webhook batches in flight, whose events are sent again when their "
                           "leases end", unfinished)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def take_turn(self) -> None:
        """Record the batches finished since the last turn and hand newly claimed ones to sender threads."""
        with self.changed:
            finished, self.finished = self.finished, []
            free = SENDER_THREADS - self.in_flight
        batches = self.record_and_claim(finished, free)
        with self.changed:
            self.in_flight += len(batches)
        for batch in batches:
            self.pool.submit(self.process, batch)

    def record_and_claim(self, finished: list[tuple[Batch, list[Outcome]]], free: int) -> list[Batch]:
        with self.app.app_context():
            try:
                return record_and_claim(finished, free, BATCH_SIZE, self.lease_seconds)
            except Exception as error:  # noqa: BLE001 - the loop goes on, and unrecorded deliveries are retried
                db.session.rollback()
                log_turn_failure(error, finished)
                self.keep_for_next_turn(finished)
                time.sleep(FAILURE_PAUSE_SECONDS)
                return []

    def keep_for_next_turn(self, finished: list[tuple[Batch, list[Outcome]]]) -> None:
        """Put back the finished batches whose lease lasts, so the next turn records them.

        While a batch's lease lasts, no other claim can take its events. A batch whose lease
        has ended is dropped, and its events are sent again.
        """
        now = time.monotonic()
        with self.changed:
            self.finished[:0] = [(batch, outcomes) for batch, outcomes in finished
                                 if now < batch.claimed_at + self.lease_seconds]

    def process(self, batch: Batch) -> None:
        """Deliver the batch and hand its outcomes to the loop."""
        outcomes: list[Outcome] = []
        try:
            client = getattr(self.clients, "client", None)
            if client is None:
                client = self.clients.client = webhook_http.Client(self.app.config["WEBHOOK_CA_BUNDLE"])
            outcomes = self.send(batch, client)
        finally:
            with self.changed:
                self.in_flight -= 1
                self.finished.append((batch, outcomes))
                self.changed.notify()

    def send(self, batch: Batch, client: webhook_http.Client) -> list[Outcome]:
        """Post the batch's events in order; stop at one that waits for a retry or when the window ends."""
        config = self.app.config
        send_until = batch.claimed_at + BATCH_WINDOW_SECONDS
        outcomes = []
        for claim in batch.claims:
            if outcomes and (self.stopping or time.monotonic() > send_until):
                break
            try:
                outcome = attempt_delivery(claim, config, client)
            except Exception as error:  # noqa: BLE001 - recorded as a failed attempt, so the queue moves on
                logger.exception("Delivery %s failed unexpectedly", claim.public_id)
                outcome = Outcome(delivered=False, retryable=True, error=f"delivery failed ({type(error).__name__})")
            outcomes.append(outcome)
            if will_retry(claim, outcome, config):
                break
        return outcomes


def log_turn_failure(error: Exception, finished: list[tuple[Batch, list[Outcome]]]) -> None:
    """Log a failed turn: one line for a database error, with its traceback for any other error."""
    failure = database_failure(error)
    reason = failure or "see the traceback"
    if finished:
        logger.warning(
            "Recording deliveries %s failed (%s); the next turn records them unless their lease ends first, "
            "and then they are sent again",
            ", ".join(claim.public_id for batch, outcomes in finished for claim in batch.claims[:len(outcomes)]),
            reason, exc_info=failure is None)
    else:
        logger.warning("Claiming due webhook deliveries failed (%s); trying again", reason, exc_info=failure is None)


def database_failure(error: Exception) -> str | None:
    """Return one line naming the database error behind `error`, or None when it is another error.

    The line gives the driver's error class and the first line of its message, never the
    statement or its parameters.
    """
    if not isinstance(error, OperationalError) or error.orig is None:
        return None
    lines = str(error.orig).strip().splitlines()
    return f"{type(error.orig).__name__}: {lines[0] if lines else 'no message'}"


_started_in_pid: int | None = None
_start_lock = threading.Lock()


def ensure_started(app: Flask) -> None:
    """Start this process's delivery worker once; forked processes start their own."""
    global _started_in_pid
    if _started_in_pid == os.getpid() or not app.config["WEBHOOK_DELIVERY_WORKER"]:
        return
    with _start_lock:
        if _started_in_pid == os.getpid():
            return
        worker = DeliveryWorker(app)
        threading.Thread(target=worker.run, name="evogate-outbox", daemon=True).start()
        _started_in_pid = os.getpid()
        logger.info("Webhook delivery worker started in process %d", _started_in_pid)


def init_app(app: Flask) -> None:
    """Start the worker on a process's first request, unless a delivery process runs it."""

    @app.before_request
    def start_delivery_worker():
        ensure_started(app)
