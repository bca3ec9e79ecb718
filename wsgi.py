"""The production entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

With the bundled gunicorn settings this module is imported once, in the master process,
so the schema is brought up to date before any worker starts.
"""

import logging
import sys

from app import create_app
from config import ConfigError
from database import SchemaUpgradeError, upgrade_schema_in_child

try:
    app = create_app()
    upgrade_schema_in_child(app)
except (ConfigError, SchemaUpgradeError) as error:
    logging.getLogger("evogate").critical("Refusing to start: %s", error)
    sys.exit(1)
