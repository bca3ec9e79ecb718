"""The directory in which gunicorn's workers share their Prometheus counts.

prometheus-client's multiprocess mode keeps each process's counters in files named like
`counter_<pid>.db` under PROMETHEUS_MULTIPROC_DIR and adds them up at scrape time. The
library reads that variable when it is first imported, so gunicorn.conf.py calls `prepare`
before it loads the app. This module imports nothing from prometheus-client for that reason.
"""

import os
import re
import shutil
import tempfile

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The files prometheus-client writes; nothing else in a configured directory is removed.
METRIC_FILE_PATTERN = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")

# Kept here rather than in gunicorn.conf.py, which gunicorn runs again on every reload (SIGHUP).
prepared_directory: str | None = None
created_directory: str | None = None


def prepare(configured: str | None) -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at this server's metrics directory, once per process.

    A configured directory is cleared of the metric files an earlier run left there. Without
    one, a private temporary directory (mode 0700) is made, and `remove_created` deletes it.
    """
    global prepared_directory, created_directory
    if prepared_directory is None:
        if configured:
            remove_metric_files(configured)
            prepared_directory = configured
        else:
            prepared_directory = created_directory = tempfile.mkdtemp(prefix="evogate-metrics-")
        os.environ[VARIABLE] = prepared_directory
    return prepared_directory


def remove_metric_files(directory: str) -> None:
    for name in os.listdir(directory):
        if METRIC_FILE_PATTERN.fullmatch(name):
            os.remove(os.path.join(directory, name))


def remove_created() -> None:
    """Delete the temporary directory that `prepare` made, if it made one."""
    if created_directory is not None:
        shutil.rmtree(created_directory, ignore_errors=True)
