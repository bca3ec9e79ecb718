"""The production entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

With the bundled gunicorn settings this module is imported once, in the master process,
so the schema is brought up to date before any worker starts.
"""

import logging
import sys

from app import create_app
from config import ConfigError
from database import upgrade_schema

try:
    app = create_app()
except ConfigError as error:
    logging.getLogger("evogate").critical("Refusing to start: %s", error)
    sys.exit(1)
upgrade_schema(app)
