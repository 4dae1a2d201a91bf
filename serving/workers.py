"""Run an ASGI app in worker processes that each listen on their own socket.

uvicorn's `--workers` binds one socket in the parent and every worker accepts from it: they share one
accept queue, and the worker that wakes first can take every connection waiting. Callers that keep
connections open (a gateway, a load balancer, wrk) then stay pinned to one worker while the others
idle: in half of twelve 6-second wrk runs of `/predict`, one of its two workers served them all, at
about 2,000 req/s instead of 6,300. Here each worker binds its own
listening socket with SO_REUSEPORT, and Linux spreads new connections across the workers' sockets by
a hash of the client address and port, as nginx's `reuse_port` does.

uvicorn's supervisor still starts, health-checks, restarts and stops the workers; it hands each worker
the parent's socket through pickling, and `ReusePortSocket` pickles as "bind a new socket to this
address", so every worker, a restarted one too, gets a socket of its own. The price: connections
waiting in a worker's own queue when it stops (a crash, a restart on SIGHUP) are reset instead of
going to another worker, where a shared queue would have kept them: a handful of callers see a reset
connection during a restart under load.

With `pin`, each worker is also held to one CPU of its own (`CpuPlan`). A worker has two busy threads,
the event loop and the scoring thread (`serving.batcher`), which take turns at the GIL: left to the
scheduler they ran on different cores and handed the GIL across them for every batch; on one core
the hand-over is a plain switch. `/predict` answered 1.075x as many requests in alternating wrk runs
(docs/06). A pinned worker also runs under SCHED_BATCH: a thread it wakes (the scoring thread given a
batch, the event loop given the answers) then waits for the waker to block instead of preempting it,
only to find the GIL still held and switch back: 1.04x in alternating runs, every round faster
(docs/06). Off where other busy processes share the CPUs: a pinned worker cannot move away from them.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from core.native import written_for
from core.runtime import poll_until

# The supervisor's hand-over of sockets to its workers (pickled for the spawned process) is how
# uvicorn works, not a promise of its API: with another version, its own shared socket is used.
UVICORN = "0.54.0"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class CpuPlan:
    """The CPU for each worker the supervisor starts: the one that the fewest live workers hold, and
    among those the one given out longest ago. So the first workers take a CPU each (also when one has
    not pinned itself yet), a crashed worker's replacement takes the CPU it left, and during a rolling
    restart (SIGHUP) each replacement takes the CPU of the worker it is about to retire."""

    def __init__(self, cpus: Iterable[int]) -> None:
        self.cpus = sorted(cpus)
        self.given: list[int] = []  # in the order given out

    def next(self) -> int:
        held = dict.fromkeys(self.cpus, 0)
        for child in multiprocessing.active_children():
            try:
                allowed = os.sched_getaffinity(child.pid) if child.pid else set()
            except OSError:  # it has just exited
                continue
            if len(allowed) == 1 and (cpu := next(iter(allowed))) in held:  # a worker still starting has not pinned itself yet
                held[cpu] += 1
        last_given = {cpu: i for i, cpu in enumerate(self.given)}
        cpu = min(self.cpus, key=lambda c: (held[c], last_given.get(c, -1)))
        self.given.append(cpu)
        return cpu


class ReusePortSocket(socket.socket):
    """A TCP socket bound with SO_REUSEPORT that a new process receives as a new socket of its own,
    and, when the parent's socket has a `CpuPlan`, pinned to the CPU the plan gives it."""

    plan: CpuPlan | None = None

    @classmethod
    def bind_to(cls, host: str, port: int, cpu: int | None = None) -> ReusePortSocket:
        if cpu is not None:  # in the new worker, before it starts a thread: its threads inherit CPU and policy
            try:
                os.sched_setaffinity(0, {cpu})
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            except OSError as exc:  # the CPU was taken from this process's set since the plan was made
                print(f"worker {os.getpid()} not pinned to CPU {cpu} under SCHED_BATCH: {exc}", file=sys.stderr)
        sock = cls(_family(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        return sock

    def __reduce__(self) -> tuple[Callable[[str, int, int | None], ReusePortSocket], tuple[str, int, int | None]]:
        host, port = self.getsockname()[:2]
        return ReusePortSocket.bind_to, (host, port, self.plan.next() if self.plan else None)


def serve(app: str, host: str, port: int, workers: int, pin: bool = False, log_level: str = "warning") -> None:
    """Serve the app factory `app` ("module:function"); with one worker, in this process. `pin`: each
    worker on a CPU of its own (`CpuPlan`)."""
    # uvicorn's own access line is off: the app writes a structured one (`serving.logs.AccessLog`), and
    # below its log level uvicorn still built each line's client address and quoted path to discard it
    options: dict[str, Any] = {"factory": True, "host": host, "port": port, "workers": workers, "log_level": log_level, "access_log": False}
    # elsewhere SO_REUSEPORT does not spread connections; another uvicorn may hand sockets over otherwise
    if workers == 1 or not sys.platform.startswith("linux") or not written_for("uvicorn", UVICORN):
        return uvicorn.run(app, **options)
    # A port someone else listens on must fail here, as uvicorn would: a socket with SO_REUSEPORT would
    # instead join any group of the same user's sockets on that port and quietly share its traffic.
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # The parent's socket only holds the port: it never listens, so it is never given a connection.
    sock = ReusePortSocket.bind_to(host, port)
    if pin:
        sock.plan = CpuPlan(os.sched_getaffinity(0))
    Multiprocess(uvicorn.Config(app, **options), sockets=[sock]).run()


def listening(port: int) -> int:
    """Sockets listening on `port` on this host (IPv4), whichever process holds them: how a caller
    tells that every worker is taking connections, where a health check reaches only one."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "0A")  # 0A: LISTEN


def wait_listening(port: int, sockets: int, timeout: float) -> None:
    """Wait until `sockets` sockets listen on `port`: every worker has finished starting up."""
    try:
        poll_until(lambda: True if listening(port) >= sockets else None, timeout, 0.05)
    except TimeoutError:
        raise TimeoutError(f"{listening(port)} of {sockets} workers listening on port {port} after {timeout:g} s") from None
