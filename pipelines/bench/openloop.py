"""An open-loop load generator: requests leave on a schedule, whatever the answers do.

A closed-loop client (wrk, or hey, whose clients each wait for their answer) sends its next request
only when the last one has been answered, so a server that stalls for 20 ms is sent nothing during
the stall, and the stall shows as one slow request per connection; the users who would have arrived
meanwhile are never counted (coordinated omission). Card authorisations arrive whether or not the
server is stalled. Here request i is due at its scheduled time (a constant rate, or Poisson
arrivals); its latency is measured from that time, so a stall shows as the queue behind it.

Each connection is a thread with a blocking keep-alive socket and its own share of the schedule
(every `connections`-th request, as wrk2 does): while it waits for an answer, its next requests
wait too and are late, and their lateness is counted. The time a request left after its scheduled
time when nothing held it is the generator's own overhead (`Result.overhead_p99_ms`), measured in
the same run. Bodies are built per request, so every request can be a distinct transaction.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class Result:
    offered: float  # requests a second the schedule asked for
    achieved: float  # requests a second answered over the run
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int  # answers that were not 2xx, or connections that failed
    overhead_p99_ms: float  # p99 of how late a request left when its connection was idle: the generator's own cost


def schedule(rate: float, seconds: float, arrivals: str = "constant", rng_seed: int = 0) -> np.ndarray:
    """Send times in seconds from the start: evenly spaced, or Poisson (exponential gaps)."""
    n = int(rate * seconds)
    if arrivals == "constant":
        return np.arange(n) / rate
    if arrivals == "poisson":
        return np.cumsum(np.random.default_rng(rng_seed).exponential(1.0 / rate, n))
    raise ValueError(f"arrivals must be constant or poisson, got {arrivals!r}")


def _fill(sock: socket.socket, buffer: bytearray, until: Callable[[], bool]) -> None:
    while not until():
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk


def _read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one HTTP/1.1 response (a Content-Length body, or a chunked one); its status code."""
    _fill(sock, buffer, lambda: b"\r\n\r\n" in buffer)
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[:len(head) + 4]
    status = int(head.split(b" ", 2)[1])
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:  # each chunk: its size in hex, CRLF, the data, CRLF; a size of 0 ends the body
            _fill(sock, buffer, lambda: b"\r\n" in buffer)
            size = int(bytes(buffer).split(b"\r\n", 1)[0].split(b";")[0], 16)
            start = bytes(buffer).index(b"\r\n") + 2
            _fill(sock, buffer, lambda: len(buffer) >= start + size + 2)
            del buffer[:start + size + 2]
            if size == 0:
                return status
    length = int(fields.get(b"content-length", b"0"))
    _fill(sock, buffer, lambda: len(buffer) >= length)
    del buffer[:length]
    return status


def _connection(url: str, body: Callable[[int], str], due: np.ndarray, indices: range, start: float,
                latency: np.ndarray, lag: np.ndarray, status: np.ndarray) -> None:
    connection = None
    try:
        connection = Connection(url, reopen=False)
        for i in indices:
            payload = connection.request(body(i))  # built before its time: the body's cost is not the server's
            wait = start + due[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            lag[i] = time.perf_counter() - (start + due[i])
            status[i], answered = connection.send(payload)
            latency[i] = answered - (start + due[i])
    except (OSError, ValueError, IndexError):
        pass  # a refused connection or an answer that is not HTTP: the requests it left keep no latency, and count as errors
    finally:
        if connection is not None:
            connection.close()


class Connection:
    """One keep-alive connection to `url` whose requests go one at a time: an open- or closed-loop
    client's, or a probe's that must know when each answer came back (freshness_section.py).

    With `reopen`, a connection the server closed while it idled (its keep-alive timeout) is opened
    again and the request sent once more, but only where the connection had answered before and
    this request failed before any byte of its answer came, as such a close does; a request whose
    answer had begun is never sent again. A load generator's connections do not reopen: there a
    failure counts as an error."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, reopen: bool = True) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.headers, self.reopen = headers, reopen
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.answered = 0

    def request(self, body: str) -> bytes:
        """The keep-alive POST of the JSON `body` to this connection's path, encoded before it is timed."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in (self.headers or {}).items())
        data = body.encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data

    def send(self, request: bytes) -> tuple[int, float]:
        """Send an encoded request and read its answer: the status, and `perf_counter` when it was read."""
        try:
            self.sock.sendall(request)
            _fill(self.sock, self.buffer, lambda: len(self.buffer) > 0)  # the answer's first byte
        except ConnectionError:
            if not (self.reopen and self.answered):
                raise
            self.close()
            self._connect()
            self.sock.sendall(request)
        status = _read_response(self.sock, self.buffer)
        self.answered += 1
        return status, time.perf_counter()

    def close(self) -> None:
        self.sock.close()


def run(url: str, body: Callable[[int], str], rate: float, seconds: float, connections: int = 16,
        arrivals: str = "constant", rng_seed: int = 0) -> Result:
    """Send body(0), body(1), ... to `url` at `rate` a second for `seconds`, open loop."""
    due = schedule(rate, seconds, arrivals, rng_seed)
    n = len(due)
    latency, lag, status = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    start = time.perf_counter() + 0.2  # every connection open before the first request is due
    threads = [threading.Thread(target=_connection, args=(url, body, due, range(k, n, connections), start, latency, lag, status),
                                daemon=True) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    answered = ~np.isnan(latency)
    # a request's lateness is the generator's own only where its connection's previous answer came
    # back before it was due: otherwise it waited in the queue behind that answer, which is the server's
    previous_done = np.full(n, -np.inf)
    previous_done[connections:] = (due + latency)[:-connections]
    idle = answered & (previous_done <= due)
    ms = latency[answered] * 1000
    elapsed = float(np.nanmax(due + latency)) if answered.any() else seconds
    return Result(
        offered=rate,
        achieved=float(answered.sum()) / elapsed,
        p50_ms=float(np.quantile(ms, 0.5)) if ms.size else float("nan"),
        p99_ms=float(np.quantile(ms, 0.99)) if ms.size else float("nan"),
        p999_ms=float(np.quantile(ms, 0.999)) if ms.size else float("nan"),
        errors=int((~answered).sum() + ((status[answered] < 200) | (status[answered] >= 300)).sum()),
        overhead_p99_ms=float(np.quantile(lag[idle] * 1000, 0.99)) if idle.any() else float("nan"),
    )


def closed_loop(url: str, body: Callable[[int], str], requests: int, connections: int = 1) -> Result:
    """The same requests closed loop: each connection sends its next when its last is answered, and
    a latency is measured from the actual send. What wrk and hey report; the peer in the test."""
    latency, status = np.full(requests, np.nan), np.zeros(requests, dtype=np.int64)

    def one(indices: range) -> None:
        connection = Connection(url, reopen=False)
        for i in indices:
            payload = connection.request(body(i))
            sent = time.perf_counter()
            status[i], answered = connection.send(payload)
            latency[i] = answered - sent
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(range(k, requests, connections),), daemon=True) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = latency * 1000
    return Result(offered=float("nan"), achieved=requests / (time.perf_counter() - started), p50_ms=float(np.quantile(ms, 0.5)),
                  p99_ms=float(np.quantile(ms, 0.99)), p999_ms=float(np.quantile(ms, 0.999)),
                  errors=int(((status < 200) | (status >= 300)).sum()), overhead_p99_ms=float("nan"))
