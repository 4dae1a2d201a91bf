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
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from pipelines.runtime import poll_until


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class ReusePortSocket(socket.socket):
    """A TCP socket bound with SO_REUSEPORT that a new process receives as a new socket of its own."""

    @classmethod
    def bind_to(cls, host: str, port: int) -> ReusePortSocket:
        sock = cls(_family(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        return sock

    def __reduce__(self) -> tuple[Callable[[str, int], ReusePortSocket], tuple[str, int]]:
        host, port = self.getsockname()[:2]
        return ReusePortSocket.bind_to, (host, port)


def serve(app: str, host: str, port: int, workers: int, log_level: str = "warning") -> None:
    """Serve the app factory `app` ("module:function"); with one worker, in this process."""
    options: dict[str, Any] = {"factory": True, "host": host, "port": port, "workers": workers, "log_level": log_level}
    if workers == 1 or not sys.platform.startswith("linux"):  # elsewhere SO_REUSEPORT does not spread connections
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
    Multiprocess(uvicorn.Config(app, **options), sockets=[ReusePortSocket.bind_to(host, port)]).run()


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
