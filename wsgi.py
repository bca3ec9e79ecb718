"""The production entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

With the bundled gunicorn settings this module is imported once, in the master process,
so the schema is brought up to date before any worker starts.
"""

from app import create_app
from database import upgrade_schema

app = create_app()
upgrade_schema(app)
