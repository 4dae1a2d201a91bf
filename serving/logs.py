"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to, so a
log search for one id shows the access line, the scoring warnings and the admin changes together."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import orjson

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.asgi import HttpMiddleware

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _Ids:
    """Our own request ids: a random prefix per process and a counter, unique across workers and
    replicas. uuid4 reads the kernel's random source on every request, which cost more than the model
    (`make bench`). A forked worker draws its own prefix."""

    def __init__(self) -> None:
        self.draw()

    def draw(self) -> None:
        self.prefix, self.sequence = uuid.uuid4().hex[:12], itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.sequence):x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.draw)
access = logging.getLogger("fraudops.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str) -> None:
    """JSON lines on stderr for everything under `fraudops`; idempotent, since each worker and each
    app built in a test calls it."""
    root = logging.getLogger("fraudops")
    root.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.propagate = False


class AccessLog:
    """Per request: take the caller's `X-Request-ID` when it is well formed, else make one; bind it to
    the logs of this request; at the end count the answer and write an access line, for every answer
    that is not a success and for a `sample` share of the successes. A line costs more than scoring a
    transaction (`make bench`), and every success is already in the prediction log and the metrics.
    One per app, shared by the `RequestId` middleware and the scoring lane (`serving.lane`), which
    answers ahead of the middleware."""

    def __init__(self, observe: Callable[[str, int], None] | None = None, sample: float = 1.0) -> None:
        self.observe, self.sample = observe, sample
        self._draw = random.Random().random  # its own generator: leaves the global one to the application

    def open(self, scope: Scope) -> tuple[str, contextvars.Token[str | None]]:
        """The request's id, bound to this context's logs until `close`."""
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else _ids.next()
        return rid, request_id.set(rid)

    def close(self, scope: Scope, status: int, started: float, token: contextvars.Token[str | None]) -> None:
        if self.observe is not None:
            self.observe(scope["path"], status)
        if access.isEnabledFor(logging.INFO) and (status >= 300 or self._draw() < self.sample):
            access.info("request", extra={"fields": {
                "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }})
        request_id.reset(token)


class RequestId(HttpMiddleware):
    """`AccessLog` as middleware: the id goes back on the answer's headers too."""

    def __init__(self, app: ASGIApp, access: AccessLog) -> None:
        super().__init__(app)
        self.access = access

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid, token = self.access.open(scope)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.access.close(scope, status, started, token)
