"""The delivery threads: one claiming loop per server process and a pool of sender threads.

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

from delivery import Claim, Outcome, attempt_delivery, claim_due_events, record_outcome
from models import db

logger = logging.getLogger(__name__)

# Sender threads per process: each receiver that hangs holds one until its timeout, so this
# many hanging receivers per process are needed before other instances' events wait.
SENDER_THREADS = 32
# A lease outlives the request timeout by this much before another process may retry.
LEASE_MARGIN_SECONDS = 5


class DeliveryWorker:
    """Claims due events in a loop and hands them to a pool of sender threads."""

    def __init__(self, app: Flask):
        self.app = app
        self.pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="evogate-delivery")
        self.in_flight = 0
        self.lock = threading.Lock()
        # Set when a delivery finishes: the next event of its queue can be claimed at once
        # instead of after the poll interval, so a busy queue is not paced by polling.
        self.delivery_finished = threading.Event()

    def run(self) -> None:
        config = self.app.config
        lease_seconds = config["WEBHOOK_REQUEST_TIMEOUT_MS"] / 1000 + LEASE_MARGIN_SECONDS
        while True:
            self.delivery_finished.clear()
            with self.lock:
                free = SENDER_THREADS - self.in_flight
            claims = self.claim(free, lease_seconds) if free > 0 else []
            for claim in claims:
                with self.lock:
                    self.in_flight += 1
                self.pool.submit(self.process, claim)
            if not claims:
                self.delivery_finished.wait(config["WEBHOOK_POLL_INTERVAL_SECONDS"])

    def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        with self.app.app_context():
            try:
                return claim_due_events(limit, lease_seconds)
            except SQLAlchemyError:
                logger.warning("Claiming due webhook deliveries failed; trying again", exc_info=True)
                db.session.rollback()
                time.sleep(1)
                return []

    def process(self, claim: Claim) -> None:
        try:
            try:
                outcome = attempt_delivery(claim, self.app.config)
            except Exception as error:  # noqa: BLE001 - recorded as a failed attempt, so the queue moves on
                logger.exception("Delivery %s failed unexpectedly", claim.public_id)
                outcome = Outcome(delivered=False, retryable=True, error=f"delivery failed ({type(error).__name__})")
            with self.app.app_context():
                record_outcome(claim, outcome)
        except Exception:  # noqa: BLE001 - the lease expires and the delivery is made again
            logger.exception("Recording delivery %s failed; it will be retried when its lease ends", claim.public_id)
        finally:
            with self.lock:
                self.in_flight -= 1
            self.delivery_finished.set()


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
