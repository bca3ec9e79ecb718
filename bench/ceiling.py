"""The evogate app plus one route for the benchmark: the connectionState JSON without a key or a query.

gunicorn serves `bench.ceiling:app` with the shipped gunicorn.conf.py, so every request passes
through the same hooks (request id, throttling, the key guard, metrics) as the product's routes.
The extra route measures the ceiling of that stack. It exists only in this module, never in `wsgi:app`.
"""

from auth import public
from wsgi import app

CEILING_PATH = "/bench/ceiling"


@app.get(CEILING_PATH)
@public
def ceiling():
    return {"instance": {"instanceName": "bench-00000", "state": "open"}}
