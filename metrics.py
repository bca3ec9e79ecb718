"""Prometheus metrics: requests, authentication failures, webhook deliveries and stored state.

Counters and histograms count in this process. Under gunicorn, prometheus-client's
multiprocess mode keeps each worker's counts in a file under PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py), and a scrape adds up every worker's file, so any worker reports the same
totals. Gauges of stored state (instances by state, the webhook outbox) are queried from the
database at scrape time instead.

Label values come from fixed sets only: route templates such as `/instance/delete/<name>`,
never a path, an instance name or a key, so the number of series stays bounded.
"""

import logging
import time
from collections.abc import Iterator

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue, ValueClass
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from models import CLOSE, CONNECTING, FAILED, OPEN, PENDING_EVENT, Event, Instance, db

logger = logging.getLogger(__name__)

# prometheus-client chooses multiprocess mode when it is first imported, from whether
# PROMETHEUS_MULTIPROC_DIR is set; follow the choice it made.
MULTIPROCESS = ValueClass is not MutexValue
# The route label of requests that matched no route (404) or no method of their route (405).
UNMATCHED = "unmatched"
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
AUTHENTICATION_FAILURE_REASONS = ("missing", "unknown", "forbidden")
ATTEMPT_DELIVERED, ATTEMPT_WILL_RETRY, ATTEMPT_GAVE_UP = "delivered", "will_retry", "gave_up"

# Multiprocess mode has no `_created` series; leave them out in one process too, so both look alike.
disable_created_metrics()
# This process's counters; a scrape without multiprocess mode reads them from here.
REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "evogate_http_requests", "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"], registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "evogate_http_request_duration_seconds",
    "Seconds from the start of request handling to the finished response (sending it excluded), "
    "by route template and method.",
    ["route", "method"], registry=REGISTRY,
)
AUTHENTICATION_FAILURES = Counter(
    "evogate_authentication_failures",
    "Requests answered 401 (key missing or unknown) or 403 (key valid but not for this route), by reason.",
    ["reason"], registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "evogate_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, failed with a retry scheduled (will_retry), "
    "or failed for good (gave_up).",
    ["outcome"], registry=REGISTRY,
)

# Start every known series at zero, so rate() and alerts work before the first failure.
for reason in AUTHENTICATION_FAILURE_REASONS:
    AUTHENTICATION_FAILURES.labels(reason)
for outcome in (ATTEMPT_DELIVERED, ATTEMPT_WILL_RETRY, ATTEMPT_GAVE_UP):
    DELIVERY_ATTEMPTS.labels(outcome)


def count_authentication_failure(reason: str) -> None:
    AUTHENTICATION_FAILURES.labels(reason).inc()


def count_delivery_attempt(outcome: str) -> None:
    DELIVERY_ATTEMPTS.labels(outcome).inc()


def start_timer() -> None:
    g.metrics_started_at = time.perf_counter()


def record_request(response: Response) -> Response:
    """Count the finished request under its route template, method and status code."""
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in HTTP_METHODS else "other"
    REQUESTS.labels(route, method, str(response.status_code)).inc()
    started_at = g.get("metrics_started_at")
    if started_at is not None:
        REQUEST_DURATION.labels(route, method).observe(time.perf_counter() - started_at)
    return response


class DatabaseCollector:
    """Gauges of stored state, queried when scraped; every worker reports the same values."""

    def collect(self) -> Iterator[Metric]:
        try:
            states = count_by(Instance.connection_status)
            outbox = count_by(Event.status, Event.status.in_((PENDING_EVENT, FAILED)))
        except SQLAlchemyError:
            logger.warning("Metrics scrape: querying the database failed", exc_info=True)
            db.session.rollback()
            yield GaugeMetricFamily("evogate_database_up", "Whether the database answered the scrape's queries.", 0)
            return
        yield GaugeMetricFamily("evogate_database_up", "Whether the database answered the scrape's queries.", 1)

        instances = GaugeMetricFamily("evogate_instances", "Stored instances by connection state.", labels=["state"])
        for state in sorted({OPEN, CLOSE, CONNECTING} | states.keys()):
            instances.add_metric([state], states.get(state, 0))
        yield instances
        yield GaugeMetricFamily(
            "evogate_outbox_pending_events",
            "Webhook deliveries waiting in the outbox, due now or scheduled for later.",
            outbox.get(PENDING_EVENT, 0),
        )
        yield GaugeMetricFamily(
            "evogate_outbox_failed_events",
            "Webhook deliveries stored as failed for good (retries used up or not retryable).",
            outbox.get(FAILED, 0),
        )


def count_by(column, *conditions) -> dict[str, int]:
    query = select(column, func.count()).where(*conditions).group_by(column)
    return {value: count for value, count in db.session.execute(query)}


def render() -> Response:
    """Return every metric in the format that the scraper's Accept header requests."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    registry.register(DatabaseCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type)


def init_app(app: Flask) -> None:
    """Time and count every request; call it before the other hooks so the timer starts first."""
    app.before_request(start_timer)
    app.after_request(record_request)
