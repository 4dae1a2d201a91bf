"""The API's launcher: every worker listens on its own socket, connections reach all of them, and each
worker holds a CPU of its own, under the batch scheduling policy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.runtime import poll_until, wait_until_up
from serving.workers import ReusePortSocket, listening, wait_listening
from tests.conftest import free_port

WORKERS = 2
CONNECTIONS = 256


def pid_app() -> Callable:
    """An app that answers with the id of the worker process that took the connection."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            pid = str(os.getpid()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(pid)).encode())]})
            await send({"type": "http.response.body", "body": pid})

    return app


def launch(port: int) -> subprocess.Popen[bytes]:
    code = f"from serving.workers import serve; serve('tests.test_workers:pid_app', '127.0.0.1', {port}, {WORKERS}, pin=True)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextmanager
def launched() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A launcher with every worker listening: its port and its process."""
    port = free_port()
    process = launch(port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", process, timeout=60.0)  # one worker is up
        wait_listening(port, WORKERS, timeout=20.0)  # and then all of them
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server() -> Iterator[int]:
    with launched() as (port, _):
        yield port


def worker_of(sock: socket.socket) -> str:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1].decode()


def test_each_worker_listens_on_a_socket_of_its_own(server: int) -> None:
    # uvicorn's own --workers share one listening socket
    assert listening(server) == WORKERS


def cpus_of(pids: set[str]) -> list[set[int]]:
    return [os.sched_getaffinity(int(pid)) for pid in sorted(pids)]


def spread_evenly(pinned: list[set[int]]) -> bool:
    """One CPU each, and as many different CPUs as the workers and this machine allow."""
    return all(len(cpus) == 1 for cpus in pinned) and len(set.union(*pinned)) == min(len(pinned), len(os.sched_getaffinity(0)))


def under_batch_policy(pids: set[str]) -> bool:
    """A thread a pinned worker wakes waits for the waker to block instead of preempting it."""
    return all(os.sched_getscheduler(int(pid)) == os.SCHED_BATCH for pid in pids)


def test_connections_opened_at_once_spread_over_the_workers(server: int) -> None:
    """Linux hashes each new connection to one of the workers' sockets. (From one shared socket the
    split of such a burst on idle workers varied from even to two to one here; the pinning of every
    connection to one worker showed under load, in `make bench`, which is where it is measured.)"""
    connections = [socket.socket() for _ in range(CONNECTIONS)]
    try:
        for sock in connections:  # all at once, before a worker wakes up, as wrk does
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server))
        for sock in connections:
            sock.setblocking(True)
        served = Counter(worker_of(sock) for sock in connections)
    finally:
        for sock in connections:
            sock.close()
    assert len(served) == WORKERS, served
    assert spread_evenly(cpus_of(set(served))), cpus_of(set(served))
    assert under_batch_policy(set(served))
    # the kernel hashes each connection to a worker: for a fair coin, 96 of 256 or fewer is 1 in 30,000
    assert min(served.values()) >= 96, served


def test_a_worker_that_dies_is_replaced_by_one_with_its_own_socket_and_cpu(server: int) -> None:
    """uvicorn's supervisor restarts a dead worker with the parent's socket: here that means binding a
    new one, so the replacement must be listening and taking connections again, and pinning it to the
    CPU the dead worker left, not to one a live worker holds."""
    import signal

    def workers_answering() -> set[str]:
        answered = set()
        for _ in range(32):
            try:
                with socket.create_connection(("127.0.0.1", server)) as sock:
                    answered.add(worker_of(sock))
            except (OSError, IndexError):  # a connection queued at the dying worker is reset
                pass
        return answered

    before = workers_answering()
    assert len(before) == WORKERS
    victim = min(before)
    os.kill(int(victim), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = workers_answering()
        if len(now) == WORKERS and victim not in now:
            break
    assert len(now) == WORKERS and victim not in now, (before, now)
    assert listening(server) == WORKERS
    assert spread_evenly(cpus_of(now)), cpus_of(now)
    assert under_batch_policy(now)


def test_a_port_already_in_use_fails_the_start_instead_of_sharing_it() -> None:
    """Another server with SO_REUSEPORT on the port would otherwise quietly share its traffic."""
    port = free_port()
    holder = ReusePortSocket.bind_to("127.0.0.1", port)
    holder.listen()
    try:
        process = launch(port)
        output, _ = process.communicate(timeout=60)
    finally:
        holder.close()
    assert process.returncode != 0
    assert f"127.0.0.1:{port}" in output.decode(), output.decode()


def test_a_rolling_restart_gives_each_replacement_the_cpu_of_the_worker_it_retires() -> None:
    """On SIGHUP uvicorn starts each replacement while the worker it replaces still runs; a plan that
    counted live workers alone would put the second replacement beside the first."""
    import signal

    with launched() as (_, process):
        before = workers_of(process.pid)
        process.send_signal(signal.SIGHUP)

        def replaced() -> set[str] | None:
            now = workers_of(process.pid)
            return now if len(now) == WORKERS and not now & before else None

        now = poll_until(replaced, 60.0, 0.2)
        assert spread_evenly(cpus_of(now)), cpus_of(now)


def workers_of(pid: int) -> set[str]:
    """The worker processes of a launcher, as `pid_app` names them: its children that are not
    multiprocessing's helpers."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {child for child in children if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()}
