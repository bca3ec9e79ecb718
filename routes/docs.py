"""API documentation: the OpenAPI document and Swagger UI, served by evogate itself without a key."""

from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from auth import public
from openapi import build_document

bp = Blueprint("docs", __name__)

STATIC_DIRECTORY = Path(__file__).resolve().parents[1] / "static"
SWAGGER_UI_DIRECTORY = Path(str(swagger_ui_path))
# The files the page loads, each with its directory and media type. No other file is served.
SWAGGER_UI_ASSETS = {
    "swagger-ui.css": (SWAGGER_UI_DIRECTORY, "text/css"),
    "swagger-ui-bundle.js": (SWAGGER_UI_DIRECTORY, "text/javascript"),
    "favicon-32x32.png": (SWAGGER_UI_DIRECTORY, "image/png"),
    "favicon-16x16.png": (SWAGGER_UI_DIRECTORY, "image/png"),
    "swagger-ui-init.js": (STATIC_DIRECTORY, "text/javascript"),
}
# The page may load and call only evogate itself, and runs no inline script. Swagger UI's icons
# are data: URLs, and some of its components set inline styles.
DOCS_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@bp.get("/openapi.json")
@public
def openapi_document():
    """Return the OpenAPI 3 document of this API."""
    if "evogate.openapi" not in current_app.extensions:
        current_app.extensions["evogate.openapi"] = build_document(current_app)
    return {**current_app.extensions["evogate.openapi"], "servers": [{"url": request.script_root or "/"}]}


@bp.get("/docs")
@public
def swagger_ui():
    """Show the API document in Swagger UI."""
    return render_template("swagger_ui.html"), 200, {"Content-Security-Policy": DOCS_PAGE_POLICY}


@bp.get("/docs/<filename>")
@public
def swagger_ui_asset(filename):
    """Return a file of the Swagger UI page."""
    if filename not in SWAGGER_UI_ASSETS:
        abort(404, f'"{filename}" is not a file of the API documentation page.')
    directory, media_type = SWAGGER_UI_ASSETS[filename]
    return send_from_directory(directory, filename, mimetype=media_type)
