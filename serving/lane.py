"""The two scoring routes as plain ASGI, in front of FastAPI.

`POST /predict` and `POST /predict/features` are what the card-authorisation path calls, thousands of
times a second. Through FastAPI each request also pays for its own layers (the app and Starlette's
entry, the error and telemetry middleware, route matching, a Request object, dependency solving) and
for a wrapper per middleware around every message sent. Here they pay for the request id and access
line (`serving.logs.AccessLog`), the body limit (`serving.asgi`), one pass of pydantic-core over the
body, the scoring work and one JSON answer. Everything else goes on to FastAPI's stack.

What it gives, measured beside FastAPI's own routes at equal work in one `make bench` run (serving
section, ratios (1)/(1b) and (2)/(2b)): about twice the requests a second with the features in the
request, and about a quarter more on the full path, where the live state's step is most of the work.

What it costs: a second front door to keep equal to FastAPI's. The rules and the error bodies are
FastAPI's (content type, validation errors, 405, 413, 503), `/openapi.json` documents both routes
(`document`), and tests/test_api.py sends hostile bodies to every path with the lane on and off and
requires the same answers. `FRAUDOPS_SCORING_LANE=false` turns it off: FastAPI's routes answer
(serving/routes/scoring.py), through the same functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from core.settings import Settings
from serving.asgi import BodyTooLarge, read_body, send_json, too_large
from serving.logs import AccessLog
from serving.native.fastapi_route import name_route
from serving.schemas import Score, Transaction, TransactionWithFeatures
from serving.service import ScoringService

M = TypeVar("M", bound=BaseModel)
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
log = logging.getLogger("fraudops.api")
# nginx's status for a request whose client left before it was answered. Counted as a 500, a caller
# that gives up on slow answers would page on-call for server errors the server never made (the 5xx
# alert in infra/prometheus/alerts.yml); its slowness shows in the latency metrics instead.
CLIENT_LEFT = 499


# FastAPI's answer to a body that is not declared JSON (its `strict_content_type`, on by default): JSON
# under another content type, such as a form or text/plain that a browser sends cross-site without
# asking, is refused, not parsed.
NOT_JSON = [{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary or object to extract fields from"}]


def declared_json(scope: Scope) -> bool:
    """FastAPI's rule: the content type is application/json or application/*+json, parameters aside."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    return False


EXPLAIN = "Add up to 3 features that pushed the score towards fraud most, only those that raised it (reason codes); costs about one more prediction."
FLAG = TypeAdapter(bool)  # FastAPI's reading of a boolean query parameter: true/false, 1/0, yes/no, on/off


def explain_flag(scope: Scope) -> tuple[bool, list[dict[str, Any]]]:
    """`?explain=` as FastAPI reads it (the last value wins), with its errors. A request without a
    query string, the authorisation path's, pays one comparison."""
    query = scope.get("query_string", b"")
    if not query:
        return False, []
    values = [v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "explain"]
    if not values:
        return False, []
    try:
        return FLAG.validate_python(values[-1]), []
    except ValidationError as exc:
        return False, [{**e, "loc": ("query", "explain")} for e in exc.errors()]


def parse(model: type[M], body: bytes, scope: Scope) -> tuple[M, bool]:
    """Validate the raw body in one pass and the `explain` flag, with the rules, the error locations
    and the order (query first) of a FastAPI route: every error of both in one 422."""
    explained, errors = explain_flag(scope)
    if not declared_json(scope):
        raise RequestValidationError(errors + NOT_JSON)
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(errors + [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    if errors:
        raise RequestValidationError(errors)
    return parsed, explained


def validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Name the field and the rule; leave out the echoed input, which may be NaN or huge."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def ready_service(state: State) -> ScoringService:
    """The worker's service, or a 503 while it has no champion to answer with."""
    service: ScoringService = state.service
    if not service.ready:
        raise HTTPException(503, "no champion model loaded yet")
    return service


async def within_budget(state: State, settings: Settings, transactions: Sequence[Transaction], explained: bool = False) -> list[Score]:
    """Score on the worker's scoring thread (`serving.batcher`), never on the event loop, and answer
    503 when the transactions overrun `predict_timeout_ms` each: a lookup stuck on a locked or
    unreachable store costs 503s, not a hung worker."""
    service = ready_service(state)
    budget = settings.serving.predict_timeout_ms * len(transactions) / 1000
    try:
        return await state.batcher.submit(transactions, time.perf_counter() + budget, explained)
    except TimeoutError:
        service.metrics.timeouts.inc()
        raise HTTPException(503, f"prediction exceeded its time limit of {settings.serving.predict_timeout_ms:g} ms") from None


def score_with_features(state: State, request: TransactionWithFeatures, explained: bool = False) -> Score:
    """Scored on the event loop itself: with the features in the request there is no I/O to wait for
    and nothing that could hang (the trees take microseconds), so the time limit and the hop to a
    scoring thread, which cost more than the work, are left out."""
    service = ready_service(state)
    needed = set(service.models["champion"].features) | set(getattr(service.models.get("challenger"), "features", ()))
    missing = sorted(needed - set(request.features))
    if missing:
        raise HTTPException(422, f"features: missing {', '.join(missing)}")
    values = {k: float("nan") if v is None else v for k, v in request.features.items()}
    return service.score_features(request.transaction, values, explained)


class ScoringLane:
    """Answers the scoring routes itself; passes every other request on to `app`, FastAPI's own stack."""

    paths = ("/predict", "/predict/features")

    def __init__(self, app: ASGIApp, state: State, settings: Settings, access: AccessLog) -> None:
        self.app, self.state, self.settings, self.access = app, state, settings, access
        self.routes: dict[str, Callable[[bytes, Scope], Awaitable[Score]]] = dict(zip(self.paths, (self.predict, self.predict_features)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        if "fastapi.telemetry" in scope:  # OpenTelemetry is on: name the span as FastAPI's router would
            name_route(scope)
        rid, token = self.access.open(scope)
        started = time.perf_counter()
        status = CLIENT_LEFT  # what the access line and the metric say if the client leaves before its answer
        try:
            answer = await self._answer(route, scope, receive)
            if answer is not None:
                status, payload, headers = answer
                await send_json(send, status, payload, [*headers, (b"x-request-id", rid.encode())])
        finally:
            self.access.close(scope, status, started, token)

    async def _answer(self, route: Callable[[bytes, Scope], Awaitable[Score]], scope: Scope, receive: Receive) -> Answer | None:
        if scope["method"] != "POST":
            return 405, orjson.dumps({"detail": "Method Not Allowed"}), [(b"allow", b"POST")]
        try:
            body = await read_body(scope, receive, self.settings.serving.max_body_bytes)
        except BodyTooLarge:
            return 413, too_large(self.settings.serving.max_body_bytes), []
        if body is None:  # the client left
            return None
        try:
            return 200, (await route(body, scope)).model_dump_json().encode(), []
        except RequestValidationError as exc:
            return 422, orjson.dumps({"detail": validation_detail(exc)}), []
        except HTTPException as exc:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
            return exc.status_code, orjson.dumps({"detail": exc.detail}), headers
        except Exception:  # a bug: answered as FastAPI's error middleware would, which the lane runs ahead of
            log.exception("scoring request failed")
            return 500, orjson.dumps({"detail": "Internal Server Error"}), []

    async def predict(self, body: bytes, scope: Scope) -> Score:
        transaction, explained = parse(Transaction, body, scope)
        return (await within_budget(self.state, self.settings, [transaction], explained))[0]

    async def predict_features(self, body: bytes, scope: Scope) -> Score:
        return score_with_features(self.state, *parse(TransactionWithFeatures, body, scope))


def document(app: FastAPI) -> None:
    """Add the lane's routes to the app's OpenAPI document, as FastAPI would have written them, so
    clients, the docs page and the schemathesis fuzz test see one API."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        _, definitions = models_json_schema(
            [(m, "validation") for m in (Transaction, TransactionWithFeatures)] + [(Score, "serialization")],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
        for path, model, summary in (
            ("/predict", Transaction, "Score a transaction with online features: lookup, routing, model, log"),
            ("/predict/features", TransactionWithFeatures, "Score a transaction with features the caller brings: routing, model, log"),
        ):
            schema["paths"][path] = {"post": {
                "tags": ["scoring"],
                "summary": summary,
                "operationId": "predict" + path.replace("/", "_"),
                "parameters": [{"name": "explain", "in": "query", "required": False, "description": EXPLAIN,
                                "schema": {"type": "boolean", "default": False, "title": "Explain", "description": EXPLAIN}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
                "responses": {
                    "200": {"description": "The score and the decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Score"}}}},
                    "422": {"description": "Validation Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}},
                    "503": {"description": "No model loaded yet, or the prediction overran its time limit"},
                },
            }}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
