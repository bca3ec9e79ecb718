"""A webhook receiver for tests: records every POST and responds as the test sets it at run time.

The receiver listens on 127.0.0.1 only. It can respond with any status and extra headers, for
example 429 with `Retry-After` or 302 with `Location`. It can hold each request open for a
number of seconds before responding, or send its response a byte at a time. It can also be
down: `down()` closes the listening socket, so deliveries get "connection refused", and `up()`
listens again on the same port.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Maximum request body the receiver reads. evogate's payloads are far smaller.
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class Delivery:
    """One POST as the receiver saw it."""

    target: str  # the request target: path and query string
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: object  # None when the body is not JSON
    arrived_at: float  # time.monotonic() when the request had been read
    arrived_wall: float  # time.time() at the same moment
    # Set once the response is written, although a sender that gave up may never read it.
    response_status: int | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    @property
    def event(self) -> str | None:
        return self.json.get("event") if isinstance(self.json, dict) else None

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("x-webhook-id")


@dataclass
class Behaviour:
    """How the receiver responds: a status with headers, after holding the request for a while."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0
    # Seconds over which the response's bytes are spread evenly; 0 sends them at once.
    trickle_seconds: float = 0.0


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records POSTs; use as a context manager or call stop()."""

    def __init__(self, port: int = 0):
        self.deliveries: list[Delivery] = []
        self.behaviour = Behaviour()
        self.condition = threading.Condition()
        # Set to end every hang at once: on a change of behaviour, on down() and on stop().
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = port
        self.up()

    # Behaviour

    def respond(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Respond to every later request at once with `status` and `headers`."""
        self.set_behaviour(Behaviour(status=status, headers=dict(headers or {})))

    def hang(self, seconds: float, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Hold every later request open for `seconds` before responding with `status`."""
        self.set_behaviour(Behaviour(status=status, headers=dict(headers or {}), hang_seconds=seconds))

    def trickle(self, seconds: float, status: int = 200) -> None:
        """Respond to every later request with `status`, one byte at a time, taking `seconds` in all."""
        self.set_behaviour(Behaviour(status=status, trickle_seconds=seconds))

    def set_behaviour(self, behaviour: Behaviour) -> None:
        with self.condition:
            self.behaviour = behaviour
            # Requests already hanging get their response now, with the behaviour they started with.
            self.release.set()
            self.release = threading.Event()

    # Listening socket

    def up(self) -> None:
        """Listen on the receiver's port (a free one the first time)."""
        if self.server is not None:
            return
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"receiver-{self.port}", daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Close the listening socket: new connections are refused until up() is called."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.shutdown()
        server.server_close()
        self.thread.join(5)
        with self.condition:
            self.release.set()
            self.release = threading.Event()

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # Addresses

    def url(self, path: str = "/hook", userinfo: str = "") -> str:
        """Return a URL on this receiver; `userinfo` is `user:password` for basic authentication."""
        credentials = f"{userinfo}@" if userinfo else ""
        return f"http://{credentials}127.0.0.1:{self.port}{path}"

    # Recorded deliveries

    def snapshot(self) -> list[Delivery]:
        with self.condition:
            return list(self.deliveries)

    def events(self, event: str | None = None, instance: str | None = None) -> list[Delivery]:
        """Return the deliveries of one dotted event name and/or instance, in arrival order."""
        return [
            delivery for delivery in self.snapshot()
            if (event is None or delivery.event == event)
            and (instance is None or (isinstance(delivery.json, dict) and delivery.json.get("instance") == instance))
        ]

    def wait_for(self, predicate, timeout: float, description: str = "the expected deliveries"):
        """Wait until `predicate(deliveries)` is truthy and return its value; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                result = predicate(list(self.deliveries))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.condition.wait(min(remaining, 0.2))
        received = [(delivery.event, delivery.target, delivery.response_status) for delivery in self.snapshot()]
        raise AssertionError(f"timed out after {timeout} s waiting for {description}; received {received}")

    def wait_for_count(self, count: int, timeout: float, event: str | None = None,
                       instance: str | None = None) -> list[Delivery]:
        """Wait until at least `count` deliveries match and return all that match."""
        def enough(deliveries):
            matching = [
                delivery for delivery in deliveries
                if (event is None or delivery.event == event)
                and (instance is None or (isinstance(delivery.json, dict) and delivery.json.get("instance") == instance))
            ]
            return matching if len(matching) >= count else None

        return self.wait_for(enough, timeout, f"{count} deliveries of {event or 'any event'}"
                             + (f" for {instance}" if instance else ""))

    # Request handling

    def record(self, delivery: Delivery) -> tuple[Behaviour, threading.Event]:
        with self.condition:
            self.deliveries.append(delivery)
            self.condition.notify_all()
            return self.behaviour, self.release

    def mark_responded(self, delivery: Delivery, status: int) -> None:
        with self.condition:
            delivery.response_status = status
            self.condition.notify_all()

    def handler_class(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                delivery = Delivery(
                    target=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=body,
                    json=parsed,
                    arrived_at=time.monotonic(),
                    arrived_wall=time.time(),
                )
                behaviour, release = receiver.record(delivery)
                if behaviour.hang_seconds > 0:
                    release.wait(behaviour.hang_seconds)
                try:
                    response = self.response_bytes(behaviour)
                    if behaviour.trickle_seconds > 0:
                        pause = behaviour.trickle_seconds / len(response)
                        for index in range(len(response)):
                            self.wfile.write(response[index:index + 1])
                            self.wfile.flush()
                            if release.wait(pause):
                                pause = 0  # released: send the rest at once
                    else:
                        self.wfile.write(response)
                        self.wfile.flush()
                except OSError:
                    return  # the sender stopped waiting, so no response is recorded
                receiver.mark_responded(delivery, behaviour.status)

            def response_bytes(self, behaviour: Behaviour) -> bytes:
                reason = self.responses.get(behaviour.status, ("Unknown",))[0]
                lines = [f"HTTP/1.0 {behaviour.status} {reason}"]
                lines += [f"{name}: {value}" for name, value in behaviour.headers.items()]
                lines += ["Content-Type: application/json", "Content-Length: 2"]
                return ("\r\n".join(lines) + "\r\n\r\n{}").encode("latin-1")

            def log_message(self, format, *args):
                pass  # keep test output quiet; deliveries are recorded instead

        return Handler
