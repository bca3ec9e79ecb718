"""The application factory."""

import logging
import sys
from collections.abc import Mapping

from flask import Flask, Response
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

import auth
import cli
import database
import delivery_worker
import errors
import globalkey
import metrics
import requestid
import throttle
from config import load_settings, read_environment
from routes import register_blueprints

logger = logging.getLogger(__name__)


def create_app(config: Mapping[str, str] | None = None, instance_path: str | None = None) -> Flask:
    """Build the evogate app from the environment, or from `config` in its place (tests)."""
    settings = load_settings(read_environment() if config is None else config)
    configure_logging(settings["LOG_LEVEL"])

    app = Flask(__name__, static_folder=None, instance_path=instance_path)
    app.config.update(settings)
    app.json.sort_keys = False
    # `/instance//create` is an unknown route (404), not a redirect built from the Host header.
    app.url_map.merge_slashes = False
    if not app.config["AUTHENTICATION_API_KEY"]:
        app.config["AUTHENTICATION_API_KEY"] = globalkey.load_or_create(app.instance_path)
    warn_about_unknown_variables(app)

    trust_proxies(app)
    metrics.init_app(app)
    database.init_app(app)
    errors.init_app(app)
    requestid.init_app(app)
    throttle.init_app(app)
    app.before_request(auth.guard)
    delivery_worker.init_app(app)
    app.after_request(add_security_headers)
    init_cors(app)
    register_blueprints(app)
    cli.init_app(app)
    return app


def configure_logging(level: str) -> None:
    """Send log lines to standard error, once per process, at the configured level."""
    root = logging.getLogger()
    if not any(getattr(handler, "is_evogate", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.is_evogate = True
        root.addHandler(handler)
    root.setLevel(level)


def warn_about_unknown_variables(app: Flask) -> None:
    for name in app.config["UNKNOWN_AUTHENTICATION_VARIABLES"]:
        logger.warning("%s is not a setting evogate knows; check its spelling", name)


def trust_proxies(app: Flask) -> None:
    """Take the client address, scheme, host and prefix from the proxies in front, if any.

    Only the last TRUSTED_PROXY_COUNT hops of each X-Forwarded-* header are believed, so a
    client cannot forge its address by sending the header itself.
    """
    count = app.config["TRUSTED_PROXY_COUNT"]
    if count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count, x_prefix=count)


def add_security_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def init_cors(app: Flask) -> None:
    """Allow browsers from CORS_ORIGIN; with it unset, no CORS headers are sent."""
    origins = app.config["CORS_ORIGIN"]
    if not origins:
        return
    CORS(
        app,
        origins="*" if "*" in origins else origins,
        methods=app.config["CORS_METHODS"],
        supports_credentials=app.config["CORS_CREDENTIALS"],
        expose_headers=["X-Request-ID"],
    )
