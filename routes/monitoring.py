"""Monitoring: Prometheus metrics for the global key and for allow-listed scrapers."""

from flask import Blueprint

import metrics
from auth import global_or_allowed_scraper

bp = Blueprint("monitoring", __name__)


@bp.get("/metrics")
@global_or_allowed_scraper
def export_metrics():
    """Export the metrics in Prometheus's text format, or in OpenMetrics when the scraper's Accept header requests it."""
    return metrics.render()
