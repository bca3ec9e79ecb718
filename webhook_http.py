"""The HTTP client for webhook deliveries: requests, with a deadline on the whole attempt.

requests' own timeout applies to each socket operation, so a receiver that sends its answer
one byte at a time could hold an attempt open for ever. Here every connection a client
opens is registered, and a timer shuts those sockets down when an attempt's deadline passes.
The blocked read then fails, and the attempt counts as timed out.

A `Client` keeps its connections open between attempts, so the deliveries of one batch
share a connection to their receiver instead of opening one each.

NOTE: a name lookup cannot be interrupted, so a resolver that hangs can still stretch an
attempt past its deadline; the lease margin of the delivery worker absorbs a few seconds.
"""

import socket
import threading

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_attempt = threading.local()


class DeadlineExceeded(requests.Timeout):
    """The whole attempt took longer than its deadline."""


def _register(sock) -> None:
    sockets = getattr(_attempt, "sockets", None)
    if sockets is None:
        return
    sockets.append(sock)
    if _attempt.expired.is_set():
        # Connecting took the whole deadline (a slow handshake), so the timer found no socket.
        _shut_down(sock)


def _shut_down(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


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


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool,
        }


class Client:
    """A requests session for several attempts in one thread, each bounded by its own deadline."""

    def __init__(self):
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or .netrc from the server's environment
        self.session.mount("http://", _WatchedAdapter())
        self.session.mount("https://", _WatchedAdapter())
        # Every socket this client's connections opened; a deadline shuts down those still open.
        self.sockets: list = []

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def post(self, url: str, deadline_seconds: float, **kwargs) -> requests.Response:
        """POST like `requests.post`, reading the whole response, within `deadline_seconds` in all.

        When a kept-open connection turns out to be closed by the receiver, the request is
        sent once more on a new connection, within the same deadline.
        """
        self.sockets = [sock for sock in self.sockets if sock.fileno() != -1]
        open_before = len(self.sockets)
        try:
            return self._post_once(url, deadline_seconds, **kwargs)
        except requests.ConnectionError as error:
            # The request went over a kept-open connection when no new socket was opened.
            reused = open_before > 0 and len(self.sockets) == open_before
            if not reused or isinstance(error, requests.Timeout):
                raise
            return self._post_once(url, deadline_seconds, **kwargs)

    def _post_once(self, url: str, deadline_seconds: float, **kwargs) -> requests.Response:
        expired = _attempt.expired = threading.Event()
        _attempt.sockets = self.sockets

        def shut_down_sockets():
            expired.set()
            for sock in list(self.sockets):
                _shut_down(sock)

        timer = threading.Timer(deadline_seconds, shut_down_sockets)
        timer.daemon = True
        try:
            timer.start()
            response = self.session.post(url, timeout=deadline_seconds, **kwargs)
            response.content  # noqa: B018 - read the whole body inside the deadline
        except requests.RequestException as error:
            if expired.is_set():
                raise DeadlineExceeded(f"no complete response within {deadline_seconds} s") from error
            raise
        finally:
            timer.cancel()
            _attempt.sockets = None
        # A shut-down socket can also read as a clean, early end of the response.
        if expired.is_set():
            raise DeadlineExceeded(f"no complete response within {deadline_seconds} s")
        return response
