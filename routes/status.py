"""Service status: the welcome route and the health probes; none needs a key."""

from flask import Blueprint, abort

from auth import public
from config import VERSION
from database import database_answers

bp = Blueprint("status", __name__)


@bp.get("/")
@public
def welcome():
    """Say that the service runs and which version it is."""
    return {"status": 200, "message": "evogate is running; see the README for the API.", "version": VERSION}


@bp.get("/health/live")
@public
def live():
    """Report that the process serves requests."""
    return {"status": "ok"}


@bp.get("/health/ready")
@public
def ready():
    """Report 200 when the database responds, otherwise 503."""
    if not database_answers():
        abort(503, "The database is not responding; check DATABASE_CONNECTION_URI and the database server.")
    return {"status": "ok"}
