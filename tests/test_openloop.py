"""The open-loop generator against servers whose behaviour is known: one that answers at once, and
one that stalls 20 ms every 200 ms. Open loop must show the stall and the queue behind it; closed
loop, measuring from its own sends, reports much less: the reason the bench uses the first."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from pipelines.bench import openloop

BODY = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'.encode()
# as uvicorn answers an ASGI app that sets no length: chunked, here in two chunks
CHUNKED = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'.encode()


def serve(stall_every: float | None, answer: bytes = BODY, answers_per_connection: int | None = None,
          received: list[bytes] | None = None) -> Iterator[str]:
    """A keep-alive HTTP server answering `answer`; it closes a connection after `answers_per_connection`
    answers (0: reads one request and closes without answering), and appends each body to `received`."""
    epoch = time.monotonic()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            answered = 0
            while True:
                headers = b""
                while not headers.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline()
                    if not line:
                        return
                    headers += line
                length = next((int(h.split(b":")[1]) for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
                body = self.rfile.read(length)
                if received is not None:
                    received.append(body)
                if answers_per_connection == 0:
                    return
                if stall_every is not None:
                    phase = (time.monotonic() - epoch) % stall_every
                    if phase < 0.020:  # the first 20 ms of every period: everyone waits until it ends
                        time.sleep(0.020 - phase)
                self.wfile.write(answer)
                answered += 1
                if answers_per_connection is not None and answered >= answers_per_connection:
                    return  # closed while idle, as a keep-alive timeout closes it

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def prompt() -> Iterator[str]:
    yield from serve(None)


@pytest.fixture
def chunked() -> Iterator[str]:
    yield from serve(None, CHUNKED)


@pytest.fixture
def stalling() -> Iterator[str]:
    yield from serve(0.200)


def distinct(i: int) -> str:
    return f'{{"transaction_id": "t{i}", "customer_id": "{i % 97}"}}'


@pytest.mark.serial
def test_open_loop_shows_a_stall_and_the_queue_behind_it_where_closed_loop_does_not(stalling: str) -> None:
    opened = openloop.run(stalling, distinct, rate=500, seconds=2.0, connections=8)
    closed = openloop.closed_loop(stalling, distinct, requests=1_000, connections=1)
    assert opened.errors == 0 and closed.errors == 0
    # a tenth of the time stalled: about a tenth of the scheduled requests wait, the first up to 20 ms
    assert opened.p99_ms >= 10.0, opened
    # closed loop sends nothing while it waits: one slow request per stall, under its 1%
    assert closed.p99_ms < 5.0 and opened.p99_ms > 3 * closed.p99_ms, (opened, closed)


@pytest.mark.serial
def test_against_a_prompt_server_it_holds_the_rate_with_little_overhead_of_its_own(prompt: str) -> None:
    result = openloop.run(prompt, distinct, rate=1_000, seconds=2.0, connections=8, arrivals="poisson")
    assert result.errors == 0
    assert result.achieved >= 0.95 * result.offered, result
    assert result.p99_ms < 5.0 and result.overhead_p99_ms < 1.0, result


def test_schedules_are_the_rate_asked_for() -> None:
    assert openloop.schedule(500, 2.0).tolist()[:3] == [0.0, 0.002, 0.004]
    poisson = openloop.schedule(1_000, 10.0, "poisson", rng_seed=1)
    assert len(poisson) == 10_000 and 9.5 < poisson[-1] < 10.5
    with pytest.raises(ValueError, match="constant or poisson"):
        openloop.schedule(1, 1, "bursty")


def test_a_chunked_answer_is_read_whole_so_the_next_one_on_the_connection_is_too(chunked: str) -> None:
    result = openloop.run(chunked, distinct, rate=500, seconds=1.0, connections=2)
    assert result.errors == 0 and result.achieved >= 0.95 * result.offered, result


def test_a_connection_closed_between_answers_is_reopened_and_nothing_is_sent_twice() -> None:
    received: list[bytes] = []
    for url in serve(None, answers_per_connection=1, received=received):
        probe = openloop.Connection(url)
        for i in range(3):
            status, _ = probe.send(probe.request(distinct(i)))
            assert status == 200
        probe.close()
        assert received == [distinct(i).encode() for i in range(3)]
        strict = openloop.Connection(url, reopen=False)  # a load generator's: a failure is an error
        strict.send(strict.request(distinct(9)))
        with pytest.raises(ConnectionError):
            strict.send(strict.request(distinct(10)))
        strict.close()


def test_a_request_read_and_never_answered_is_not_sent_again() -> None:
    received: list[bytes] = []
    for url in serve(None, answers_per_connection=0, received=received):
        probe = openloop.Connection(url)
        with pytest.raises(ConnectionError):
            probe.send(probe.request(distinct(1)))
        probe.close()
        assert received == [distinct(1).encode()]
