"""The webhook delivery process beside real gunicorn workers: one per server, replaced when it dies.

The gunicorn master forks a supervisor, which runs the delivery process. The workers only
serve requests, and both delivery processes stop with the master.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.test_webhook_delivery import FAST_RETRIES, create_instance, message_statuses, send_text


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def running(pid: int) -> bool:
    """Return whether process `pid` exists and has not exited (a zombie has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def wait_until_exited(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes still running after {timeout} s: {pids}"
        time.sleep(0.05)


def test_workers_leave_delivery_to_one_process(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")

    supervisor, deliverer = server.delivery_pids()
    workers = server.worker_pids()
    assert len(workers) == 2
    assert supervisor not in workers
    # The delivery loop runs in the main thread, beside its sender threads.
    assert thread_count(deliverer) > 1
    for worker in workers:
        assert thread_count(worker) == 1


def test_killed_delivery_process_replaced(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")
    supervisor, deliverer = server.delivery_pids()

    receiver.hang(60)
    sent = send_text(server, "shop1", "cut short")
    cut_short = receiver.wait_for_count(1, 10, event="send.message")[0]
    os.kill(deliverer, signal.SIGKILL)
    receiver.respond(200)

    deadline = time.monotonic() + 10
    while server.delivery_pids() == (supervisor, deliverer):
        assert time.monotonic() < deadline, "the killed delivery process was not replaced"
        time.sleep(0.05)
    assert server.delivery_pids()[0] == supervisor
    assert f"Webhook delivery process {deliverer} exited (killed by SIGKILL)" in server.log()
    # The new process sends the cut-short delivery again once its lease ends, with the same id.
    repeated = receiver.wait_for_count(2, 30, event="send.message")[1]
    assert repeated.webhook_id == cut_short.webhook_id
    later = send_text(server, "shop1", "after the kill")
    receiver.wait_for(lambda deliveries: any(
        delivery.event == "send.message" and delivery.json["data"]["key"]["id"] == later["key"]["id"]
        for delivery in deliveries), 10, "the message sent after the kill")
    assert message_statuses(server, "shop1")[sent["key"]["id"]] == "SERVER_ACK"


def test_stop_records_delivery_in_flight(backend, databases, server_factory, receivers):
    receiver = receivers()
    database_url = databases.create(backend)
    server = server_factory(backend, database_url=database_url, **FAST_RETRIES)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")

    receiver.hang(60)
    sent = send_text(server, "shop1", "in flight at the stop")
    receiver.wait_for_count(1, 10, event="send.message")
    # The receiver responds while the server stops, within the delivery process's grace period.
    threading.Timer(0.5, receiver.respond, (200,)).start()
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5
    assert "webhook batches in flight" not in server.log()

    # Recorded before the stop: the message is acknowledged at once, not after its lease ends.
    restarted = server_factory(backend, database_url=database_url, **FAST_RETRIES)
    assert message_statuses(restarted, "shop1")[sent["key"]["id"]] == "SERVER_ACK"
    receiver.wait_for_count(1, 10, event="messages.update")
    assert len(receiver.events("send.message")) == 1


def test_stop_grace_ends_then_resent(backend, databases, server_factory, receivers):
    receiver = receivers()
    database_url = databases.create(backend)
    # An attempt that outlasts the 5-second grace period of the stop; the lease is 14 s.
    settings = {**FAST_RETRIES, "WEBHOOK_REQUEST_TIMEOUT_MS": "8000"}
    server = server_factory(backend, database_url=database_url, **settings)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")

    receiver.hang(60)
    sent = send_text(server, "shop1", "still in flight at the stop")
    cut_short = receiver.wait_for_count(1, 10, event="send.message")[0]
    assert server.stop() == 0
    assert "Stopped with 1 webhook batches in flight" in server.log()
    receiver.respond(200)

    # Not recorded, so the restarted server sends it again once its lease ends, with the same id.
    restarted = server_factory(backend, database_url=database_url, **settings)
    repeated = receiver.wait_for_count(2, 30, event="send.message")[1]
    assert repeated.webhook_id == cut_short.webhook_id
    receiver.wait_for_count(1, 10, event="messages.update")
    assert message_statuses(restarted, "shop1")[sent["key"]["id"]] == "SERVER_ACK"


def test_group_sighup_keeps_delivering(backend, server_factory, receivers):
    receiver = receivers()
    server = server_factory(backend)
    create_instance(server, "shop1", webhook={"url": receiver.url()})
    receiver.wait_for_count(1, 10, event="instance.create")
    delivery_pids = server.delivery_pids()

    # A closed terminal sends SIGHUP to the whole process group; gunicorn reloads its workers.
    os.killpg(server.process.pid, signal.SIGHUP)
    time.sleep(1)
    sent = send_text(server, "shop1", "after the hangup")

    receiver.wait_for(lambda deliveries: any(
        delivery.event == "send.message" and delivery.json["data"]["key"]["id"] == sent["key"]["id"]
        for delivery in deliveries), 10, "the message sent after the hangup")
    assert server.delivery_pids() == delivery_pids


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_master_exit_stops_delivery(backend, server_factory, stop_signal):
    server = server_factory(backend)
    supervisor, deliverer = server.delivery_pids()

    os.kill(server.process.pid, stop_signal)
    wait_until_exited([supervisor, deliverer], 10)


def test_killed_supervisor_reported(backend, server_factory):
    server = server_factory(backend)
    supervisor, deliverer = server.delivery_pids()

    # Nothing replaces a killed supervisor, so its delivery process stops and logs an ERROR line.
    os.kill(supervisor, signal.SIGKILL)
    wait_until_exited([deliverer], 10)
    assert f"The parent of webhook delivery process {deliverer} exited" in server.log()
    assert server.request("GET", "/health/live")[0] == 200
