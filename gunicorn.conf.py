"""gunicorn settings for evogate, taken from the same environment as the app.

Start with `gunicorn -c gunicorn.conf.py wsgi:app`; `--bind` and `--workers` on the command
line win over the values here.
"""

import ctypes
import ctypes.util
import logging
import os
import sys

import metrics_directory

# Module-level names that match gunicorn settings are read as settings, so the `config`
# module is not imported under its own name here.
from config import ConfigError, load_settings, read_environment

try:
    settings = load_settings(read_environment())
except ConfigError as error:
    # A setting that cannot run stops the master itself, so gunicorn never starts workers
    # that would fail and be respawned forever.
    logging.basicConfig(format="%(levelname)s evogate: %(message)s")
    logging.getLogger("evogate").critical("Refusing to start: %s", error)
    sys.exit(1)

# Workers count requests in files that every worker's /metrics adds up. prometheus-client
# reads the directory when it is first imported, when gunicorn loads the app after this file.
metrics_directory.prepare(settings["PROMETHEUS_MULTIPROC_DIR"])

# glibc's mallopt parameter number for the maximum count of malloc arenas (malloc.h).
M_ARENA_MAX = -8


def limit_malloc_arenas(count: int) -> None:
    """Let glibc's malloc keep at most `count` arenas in the master and the workers it forks.

    By default glibc gives a thread that finds the shared arenas busy an arena of its own, up
    to 8 per core, and memory freed in an arena stays there. With a worker's delivery threads
    that made it about 3.5 MB larger after a sustained sendText load with webhooks (SQLite,
    bench/run.py). A MALLOC_ARENA_MAX set in the environment wins. Other C libraries are left
    as they are.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc


limit_malloc_arenas(2)

bind = [f"0.0.0.0:{settings['SERVER_PORT']}"]
workers = settings["WEB_CONCURRENCY"]
# gunicorn's default sync worker class, one per core (see config.default_worker_count). It was
# compared on 2 cores with PostgreSQL on the same host, with bench/run.py's rows. There gthread
# (2 workers of 4 threads, or 4 of 2) served connectionState and sendText within 17% of 4 sync
# workers, and the no-database route at 40% to 60% of their rate.
# Load the app once in the master: settings are checked and the schema migrated before
# workers fork, and the workers share the loaded code's memory.
preload_app = True
# Worker heartbeats in memory rather than on disk, where the system has /dev/shm.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Process titles read "gunicorn: master [evogate]" and "gunicorn: worker [evogate]" (setproctitle).
proc_name = "evogate"
# gunicorn's runtime control socket would be one more way in, and servers of one user would share it.
control_socket_disable = True

loglevel = settings["LOG_LEVEL"].lower()
accesslog = "-"
errorlog = "-"
# The path without its query string, so a key put in a URL by mistake is never logged.
logger_class = "logsafe.AccessLogger"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'

if settings["SERVER_TYPE"] == "https":
    certfile = settings["SSL_CONF_FULLCHAIN"]
    keyfile = settings["SSL_CONF_PRIVKEY"]


def on_starting(server):
    server.log.info("Workers share their Prometheus metrics in %s", metrics_directory.prepared_directory)


def when_ready(server):
    """Start the webhook delivery process before the master forks its workers (see delivery_process.py)."""
    import delivery_process

    delivery_process.start(server.app.wsgi(), [listener.fileno() for listener in server.LISTENERS])


def child_exit(server, worker):
    """Drop the live gauges of a worker that exited; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    import delivery_process

    delivery_process.stop()
    metrics_directory.remove_created()
