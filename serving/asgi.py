"""Plain-ASGI pieces shared by the scoring lane and the middleware in front of FastAPI's routes: one JSON
answer, and the body limit, enforced by the app itself (413) whether or not the client declared a
Content-Length."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON = [(b"content-type", b"application/json")]


class BodyTooLarge(Exception):
    pass


async def send_json(send: Send, status: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    length = [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*JSON, *length, *headers]})
    await send({"type": "http.response.body", "body": payload})


def too_large(limit: int) -> bytes:
    return orjson.dumps({"detail": f"request body exceeds {limit} bytes"})


def declared_over(scope: Scope, limit: int) -> bool:
    """A declared Content-Length over the limit: refused before a byte of the body is read."""
    declared = dict(scope["headers"]).get(b"content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None if the client left; BodyTooLarge past `limit` bytes, declared or not."""
    if declared_over(scope, limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk comes back as itself, not copied


class HttpMiddleware:
    """ASGI middleware over HTTP requests only: everything else (the lifespan) passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class BodyLimit(HttpMiddleware):
    """The body limit for FastAPI's routes, which read the body as a stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        super().__init__(app)
        self.limit = limit

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if declared_over(scope, self.limit):
            return await send_json(send, 413, too_large(self.limit))
        received = 0
        rejected = False

        async def limited() -> Message:
            # Past the limit, answer 413 ourselves and tell the app the client left: frameworks turn
            # an exception raised here into their own 400, which would hide the real reason.
            nonlocal received, rejected
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit and not rejected:
                rejected = True
                await send_json(send, 413, too_large(self.limit))
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not rejected:
                raise
