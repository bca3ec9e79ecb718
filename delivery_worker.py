"""The delivery threads: one claiming loop per server process and a pool of sender threads.

The loop claims batches of due events, one batch per queue, and hands each to a sender
thread. The thread posts the batch's events in order over one kept-open connection, then
records their outcomes and claims the queue's next events in one transaction, and goes on
with that queue while it has due events, for up to `QUEUE_ROUNDS` batches.

gunicorn starts the loop in each worker as it boots (`post_worker_init`); elsewhere, such as
the development server, the first request starts it. Forked processes start their own.
"""

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

import webhook_http
from delivery import Batch, claim_batches, finish_batch
from delivery_attempt import Outcome, attempt_delivery
from delivery_record import will_retry
from models import db

logger = logging.getLogger(__name__)

# Sender threads per process: each receiver that hangs holds one until its timeout, so this
# many hanging receivers per process are needed before other instances' events wait.
SENDER_THREADS = 32
# Maximum events of one queue leased and recorded together.
BATCH_SIZE = 20
# A sender thread starts no further event of a batch once this many seconds have passed since
# the claim, so the last attempt it starts ends within the lease.
BATCH_WINDOW_SECONDS = 1.0
# A lease outlives the batch window plus the request timeout by this much before another
# process may claim the events again.
LEASE_MARGIN_SECONDS = 5
# Batches of one queue a sender thread delivers in a row before it hands the queue back to
# the claiming loop, so that busy queues take turns when every thread is busy.
QUEUE_ROUNDS = 10


class DeliveryWorker:
    """Claims batches of due events in a loop and hands them to a pool of sender threads."""

    def __init__(self, app: Flask):
        self.app = app
        self.pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="evogate-delivery")
        self.lease_seconds = (app.config["WEBHOOK_REQUEST_TIMEOUT_MS"] / 1000 + BATCH_WINDOW_SECONDS
                              + LEASE_MARGIN_SECONDS)
        self.in_flight = 0
        self.lock = threading.Lock()
        # Set when a sender thread frees up while claimable queues may be left over, so the
        # loop claims again at once instead of after the poll interval.
        self.thread_freed = threading.Event()
        self.threads_ran_out = False

    def run(self) -> None:
        poll_interval = self.app.config["WEBHOOK_POLL_INTERVAL_SECONDS"]
        while True:
            self.thread_freed.clear()
            with self.lock:
                free = SENDER_THREADS - self.in_flight
            batches = self.claim(free) if free > 0 else []
            # Every free thread got a queue, so more queues may be due than threads took.
            self.threads_ran_out = len(batches) == free
            for batch in batches:
                with self.lock:
                    self.in_flight += 1
                self.pool.submit(self.process, batch)
            if not batches:
                self.thread_freed.wait(poll_interval)

    def claim(self, limit: int) -> list[Batch]:
        with self.app.app_context():
            try:
                return claim_batches(limit, BATCH_SIZE, self.lease_seconds)
            except SQLAlchemyError:
                logger.warning("Claiming due webhook deliveries failed; trying again", exc_info=True)
                db.session.rollback()
                time.sleep(1)
                return []

    def process(self, batch: Batch) -> None:
        """Deliver the batch, then the queue's next batches, up to QUEUE_ROUNDS in all."""
        queue_handed_back = False
        try:
            with webhook_http.Client() as client:
                for round_number in range(1, QUEUE_ROUNDS + 1):
                    outcomes = self.send(batch, client)
                    last_round = round_number == QUEUE_ROUNDS
                    try:
                        with self.app.app_context():
                            batch = finish_batch(batch, outcomes, 0 if last_round else BATCH_SIZE,
                                                 self.lease_seconds)
                    except Exception:  # noqa: BLE001 - the leases expire and the deliveries are made again
                        logger.exception("Recording deliveries %s failed; they will be retried when their lease ends",
                                         ", ".join(claim.public_id for claim in batch.claims[:len(outcomes)]))
                        return
                    queue_handed_back = last_round
                    if batch is None:
                        return
        finally:
            with self.lock:
                self.in_flight -= 1
            if self.threads_ran_out or queue_handed_back:
                self.thread_freed.set()

    def send(self, batch: Batch, client: webhook_http.Client) -> list[Outcome]:
        """Post the batch's events in order; stop at one that waits for a retry or when the window ends."""
        config = self.app.config
        send_until = batch.claimed_at + BATCH_WINDOW_SECONDS
        outcomes = []
        for claim in batch.claims:
            if outcomes and time.monotonic() > send_until:
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
    """Start the worker on a process's first request, where no server hook started it."""

    @app.before_request
    def start_delivery_worker():
        ensure_started(app)
