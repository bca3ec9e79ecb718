"""The HTTP client for webhook deliveries: urllib3, with a deadline on the whole attempt.

urllib3's own timeout applies to each socket operation, so a receiver that sends its answer
one byte at a time could hold an attempt open for ever. Here every connection a client
opens is registered, and a watchdog thread, one per process, shuts those sockets down when
an attempt's deadline passes. The blocked read then fails, and the attempt counts as timed
out.

A `Client` keeps its connections open between attempts, so the deliveries of one batch
share a connection to their receiver instead of opening one each. It uses urllib3 directly:
without requests' session layer, the worker CPU per delivered message fell by about a fifth
in one benchmark run.

NOTE: a name lookup cannot be interrupted, so a resolver that hangs can still stretch an
attempt past its deadline; the lease margin of the delivery worker absorbs a few seconds.
"""

import os
import socket
import threading
import time
from collections.abc import Callable

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError
from urllib3.response import BaseHTTPResponse

# Receivers a client keeps connections to. Beyond this, the least recently used pool is closed.
KEPT_RECEIVERS = 10

_attempt = threading.local()


class DeadlineExceeded(urllib3.exceptions.TimeoutError):
    """The whole attempt took longer than its deadline."""


def _register(sock) -> None:
    sockets = getattr(_attempt, "sockets", None)
    if sockets is None:
        return
    sockets.append(sock)
    if _attempt.expired.is_set():
        # Connecting took the whole deadline (a slow handshake), so the watchdog found no socket.
        _shut_down(sock)


def _shut_down(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watchdog:
    """A thread that calls each watched attempt's expiry function once its deadline passes.

    One thread serves every attempt of the process. With a timer thread started per attempt,
    the sender threads used about half as much CPU again in a benchmark. The expiry functions
    run with the watchdog's lock held, so once `unwatch` returns, the attempt's function has
    run or never will.
    """

    def __init__(self):
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.condition = threading.Condition()
        self.deadlines: dict[object, tuple[float, Callable[[], None]]] = {}
        # When the thread wakes next, on the time.monotonic() clock, or None while it waits for work.
        self.wakes_at: float | None = None
        self.thread: threading.Thread | None = None

    def watch(self, seconds: float, on_expiry: Callable[[], None]) -> object:
        """Schedule `on_expiry` to run in `seconds` and return the handle that `unwatch` cancels it with."""
        handle = object()
        deadline = time.monotonic() + seconds
        with self.condition:
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="evogate-webhook-deadlines", daemon=True)
                self.thread.start()
            self.deadlines[handle] = (deadline, on_expiry)
            if self.wakes_at is None or deadline < self.wakes_at:
                self.condition.notify()
        return handle

    def unwatch(self, handle: object) -> None:
        with self.condition:
            self.deadlines.pop(handle, None)

    def run(self) -> None:
        with self.condition:
            while True:
                now = time.monotonic()
                for handle, (deadline, on_expiry) in list(self.deadlines.items()):
                    if deadline <= now:
                        del self.deadlines[handle]
                        on_expiry()
                self.wakes_at = min((deadline for deadline, _ in self.deadlines.values()), default=None)
                self.condition.wait(None if self.wakes_at is None else self.wakes_at - now)


_watchdog = _Watchdog()


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self):
        super().connect()
        _register(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self):
        super().connect()
        _register(self.sock)


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class Client:
    """Connections for several attempts in one thread, each attempt bounded by its own deadline.

    TLS certificates are verified against `ca_bundle`, or the system's store without one.
    No proxy settings or `.netrc` of the server's environment apply, and redirects are not
    followed.
    """

    def __init__(self, ca_bundle: str | None = None):
        self.pool_manager = urllib3.PoolManager(
            num_pools=KEPT_RECEIVERS, maxsize=1, retries=False, cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle,
        )
        self.pool_manager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool,
        }
        # Every socket this client's connections opened; a deadline shuts down those still open.
        self.sockets: list = []

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.pool_manager.clear()

    def post(self, url: str, deadline_seconds: float, body: bytes, headers: dict | None = None) -> BaseHTTPResponse:
        """POST `body` and read the whole response, within `deadline_seconds` in all.

        When a kept-open connection turns out to be closed by the receiver, the request is
        sent once more on a new connection, within the same deadline. Failures raise
        urllib3's exceptions: its `TimeoutError` (`DeadlineExceeded` included) or another
        `HTTPError`.
        """
        self.sockets = [sock for sock in self.sockets if sock.fileno() != -1]
        open_before = len(self.sockets)
        started = time.monotonic()
        try:
            return self._post_once(url, deadline_seconds, body, headers)
        except ProtocolError as error:
            # The request went over a kept-open connection when no new socket was opened.
            if open_before == 0 or len(self.sockets) != open_before:
                raise
            left = deadline_seconds - (time.monotonic() - started)
            if left <= 0:
                raise DeadlineExceeded(f"no complete response within {deadline_seconds} s") from error
            return self._post_once(url, left, body, headers)

    def _post_once(self, url: str, deadline_seconds: float, body: bytes, headers: dict | None) -> BaseHTTPResponse:
        expired = _attempt.expired = threading.Event()
        _attempt.sockets = self.sockets

        def shut_down_sockets():
            expired.set()
            for sock in list(self.sockets):
                _shut_down(sock)

        watched = _watchdog.watch(deadline_seconds, shut_down_sockets)
        try:
            # preload_content reads the whole body inside the deadline.
            response = self.pool_manager.request(
                "POST", url, body=body, headers=headers, redirect=False, retries=False,
                timeout=urllib3.Timeout(connect=deadline_seconds, read=deadline_seconds), preload_content=True,
            )
        except urllib3.exceptions.HTTPError as error:
            if expired.is_set():
                raise DeadlineExceeded(f"no complete response within {deadline_seconds} s") from error
            raise
        finally:
            _watchdog.unwatch(watched)
            _attempt.sockets = None
        # A shut-down socket can also read as a clean, early end of the response.
        if expired.is_set():
            raise DeadlineExceeded(f"no complete response within {deadline_seconds} s")
        return response
