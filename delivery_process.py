"""The webhook delivery process that the gunicorn master runs beside its workers.

When the master is ready, before it forks the workers, `start` forks a supervisor. The
supervisor forks the delivery process, which runs the delivery loop and its sender threads
(`delivery_worker.py`), and forks a new one whenever it exits. The workers only serve
requests. When every worker also ran deliveries, the request thread waited for the GIL
behind the worker's sender threads and delivery loop. Under a paced sendText load with one
webhook receiver (2 workers, PostgreSQL, 330 requests/s), the median latency was then 42 to
60 ms, against 6 to 14 ms in the runs that this process kept up with.

Both processes stop with the master. The master's `on_exit` hook calls `stop`, and each
process also stops when its parent exits, for instance when the master is killed.
"""

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

from flask import Flask
from setproctitle import getproctitle, setproctitle

import delivery_worker
from models import db

logger = logging.getLogger(__name__)

# Pause before the supervisor replaces a delivery process that exited, so one that fails at
# start is not restarted in a tight loop.
RESTART_PAUSE_SECONDS = 1
# How often the supervisor checks its delivery process and its own parent.
CHECK_SECONDS = 0.25
# How long the supervisor waits for a stopping delivery process before it kills it.
DELIVERY_STOP_SECONDS = delivery_worker.STOP_GRACE_SECONDS + 5
# Process titles, as `ps` and `top` show them next to gunicorn's own.
SUPERVISOR_TITLE = "evogate: webhook delivery supervisor"
DELIVERY_TITLE = "evogate: webhook delivery"
# The signals that stop the supervisor and the delivery process, as they stop gunicorn's workers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# The other signals the gunicorn master handles, which its forked children ignore: a SIGHUP
# sent to the whole process group, as a closed terminal sends, must not end deliveries.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

_supervisor_pid: int | None = None


def start(app: Flask, inherited_fds: Iterable[int] = ()) -> None:
    """Fork the supervisor, which keeps one delivery process running.

    Call it in the gunicorn master while it has a single thread, before it forks the workers.
    It turns off `WEBHOOK_DELIVERY_WORKER`, so the workers start no delivery worker of their
    own. `inherited_fds` are the master's listening sockets, which the supervisor closes.
    """
    global _supervisor_pid
    # NOTE: nothing restarts the supervisor itself. gunicorn's master reaps children it did not
    # fork as workers without telling any hook, so a killed supervisor stops deliveries until
    # the server restarts.
    app.config["WEBHOOK_DELIVERY_WORKER"] = False
    master_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        run_child(lambda: Supervisor(app, master_pid).run(), inherited_fds)
    _supervisor_pid = pid
    logger.info("Webhook delivery supervisor started as process %d", pid)


def stop() -> None:
    """Stop the supervisor that `start` forked, with its delivery process, and wait for both."""
    # A supervisor that already exited, and that gunicorn may have reaped, is not signalled,
    # because its process id may belong to another process by now.
    if _supervisor_pid is not None and reap(_supervisor_pid) is None:
        terminate(_supervisor_pid, DELIVERY_STOP_SECONDS + 2 * CHECK_SECONDS + 1)


class Supervisor:
    """The process that keeps one delivery process running while the gunicorn master runs."""

    def __init__(self, app: Flask, master_pid: int):
        self.app = app
        self.master_pid = master_pid
        self.stopping = False

    def request_stop(self, signum=None, frame=None) -> None:
        self.stopping = True

    def run(self) -> None:
        setproctitle(SUPERVISOR_TITLE)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.request_stop)
        child = None
        while not self.stopping and os.getppid() == self.master_pid:
            if child is None:
                child = fork_delivery_process(self.app)
            else:
                exit_code = reap(child)
                if exit_code is not None:
                    logger.log(logging.WARNING if exit_code == 0 else logging.ERROR,
                               "Webhook delivery process %d exited (%s); starting a new one in %d s",
                               child, describe_exit(exit_code), RESTART_PAUSE_SECONDS)
                    child = None
                    time.sleep(RESTART_PAUSE_SECONDS)
                    continue
            time.sleep(CHECK_SECONDS)
        if not self.stopping:
            logger.warning("The gunicorn master %d exited; stopping webhook delivery", self.master_pid)
        if child is not None:
            terminate(child, DELIVERY_STOP_SECONDS)


def fork_delivery_process(app: Flask) -> int:
    """Fork a delivery process from the supervisor and return its process id."""
    supervisor_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        run_child(lambda: deliver(app, supervisor_pid), ())
    logger.info("Webhook delivery process %d started", pid)
    return pid


def deliver(app: Flask, supervisor_pid: int) -> None:
    """Run the delivery loop until a stop signal arrives or the supervisor exits."""
    setproctitle(DELIVERY_TITLE)
    with app.app_context():
        # Pooled connections copied from the master belong to it, so this process opens its own.
        db.engine.dispose(close=False)
    worker = delivery_worker.DeliveryWorker(app)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: worker.request_stop())
    worker.run(parent_pid=supervisor_pid)


def run_child(main: Callable[[], None], inherited_fds: Iterable[int]) -> NoReturn:
    """Run `main` in a child just forked from a gunicorn process, then end the child.

    The child ignores the gunicorn master's signals other than STOP_SIGNALS, takes back the
    default handlers for those and for SIGCHLD, and closes `inherited_fds`. It ends with
    `os._exit`, so exit handlers registered by the parent do not run twice.
    """
    exit_code = 1
    try:
        for signum in IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for fd in inherited_fds:
            os.close(fd)
        main()
        exit_code = 0
    except BaseException:  # noqa: BLE001 - the exit code and this log line report any failure
        logger.exception("%s (process %d) failed", getproctitle(), os.getpid())
    finally:
        logging.shutdown()
        os._exit(exit_code)


def reap(pid: int) -> int | None:
    """Return the exit code of child process `pid` once it has exited, else None.

    A negative code is the signal that ended it. A child that another wait already reaped,
    such as the gunicorn master's, counts as exited with code 0.
    """
    try:
        waited_pid, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return os.waitstatus_to_exitcode(wait_status) if waited_pid else None


def terminate(pid: int, timeout: float) -> None:
    """Send SIGTERM to child process `pid` and wait up to `timeout` seconds, then kill it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap(pid) is not None:
            return
        time.sleep(0.05)
    logger.warning("Process %d did not stop within %.0f s of SIGTERM; killing it", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"
