"""The FastAPI application: thin routes over ScoringService."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.settings import Settings, get_settings
from serving import logs
from serving.schemas import Batch, Score, Scores, Transaction, TransactionWithFeatures
from serving.service import ScoringService

log = logging.getLogger("fraudops.api")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not the client sent Content-Length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
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
                await self._reject(send)
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

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body exceeds {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def parse(model: type[M], body: bytes) -> M:
    """The hot routes validate the raw body in one pass of pydantic-core, with the same rules and the
    same 422 as a FastAPI body parameter, but without json.loads, dependency solving and response
    re-validation, which cost more than the lookup and the model together (`make bench`)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def body_schema(model: type[BaseModel]) -> dict[str, object]:
    """The OpenAPI request body of a route that parses its own body (nested models are components)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def answer(score: Score) -> Response:
    return Response(score.model_dump_json(), media_type="application/json")


def _service(request: Request) -> ScoringService:
    return request.app.state.service


Service = Annotated[ScoringService, Depends(_service)]


class Routing(BaseModel):
    model_config = {"extra": "forbid"}
    challenger_share: float | None = Field(None, ge=0.0, le=1.0)
    mode: Literal["canary", "shadow"] | None = None


class Promotion(BaseModel):
    reason: str = Field(min_length=3, max_length=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ScoringService(settings)
        service.start()
        app.state.service = service
        # Scoring runs on these threads, never on the event loop: a lookup stuck on a locked or
        # unreachable store costs one thread and one 503, not the whole worker.
        app.state.scoring = ThreadPoolExecutor(settings.scoring_threads, thread_name_prefix="scoring")
        # Everything loaded so far (Feast, MLflow, the models) lives as long as the worker: freezing it
        # keeps the collector from walking it on every full collection, which stalled requests for
        # hundreds of milliseconds under load (the p99 at saturation in `make bench`).
        gc.collect()
        gc.freeze()
        yield
        app.state.scoring.shutdown(wait=False, cancel_futures=True)
        service.stop()

    app = FastAPI(
        title="fraudops scoring API",
        version="0.1.0",
        description="Scores card transactions with the champion model, or the challenger for a sticky share of customers.",
        lifespan=lifespan,
    )
    logs.configure(settings.log_level)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def observe(path: str, status: int) -> None:
        service: ScoringService | None = getattr(app.state, "service", None)
        if service is not None:  # unknown paths share one label: a scanner cannot grow the metric
            service.metrics.responses.labels(path if path in known_paths else "other", str(status)).inc()

    app.add_middleware(logs.RequestId, observe=observe)  # outermost: even a 413 carries its request id

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the rule; leave out the echoed input, which may be NaN or huge.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if not settings.admin_token:
            raise HTTPException(404, "admin API is off: set FRAUDOPS_ADMIN_TOKEN to enable it")
        if authorization != f"Bearer {settings.admin_token}":
            raise HTTPException(401, "admin API needs 'Authorization: Bearer <token>'")

    async def within_budget(request: Request, predictions: int, work: Callable[..., T], *args: object) -> T:
        """Answer 503 when the predictions overrun `predict_timeout_ms` each, rather than hang."""
        svc: ScoringService = request.app.state.service
        if not svc.ready:
            raise HTTPException(503, "no champion model loaded yet")
        budget = settings.predict_timeout_ms * predictions / 1000
        context = contextvars.copy_context()  # the request id follows the work onto the scoring thread
        future = asyncio.get_running_loop().run_in_executor(request.app.state.scoring, context.run, work, *args)
        try:
            return await asyncio.wait_for(future, budget)
        except TimeoutError:
            svc.metrics.timeouts.inc()
            raise HTTPException(503, f"prediction exceeded its time limit of {settings.predict_timeout_ms:g} ms") from None

    @app.post("/predict", response_model=Score, tags=["scoring"], openapi_extra=body_schema(Transaction))
    async def predict(request: Request) -> Response:
        tx = parse(Transaction, await request.body())
        return answer(await within_budget(request, 1, request.app.state.service.score, tx))

    @app.post("/predict/features", response_model=Score, tags=["scoring"], openapi_extra=body_schema(TransactionWithFeatures))
    async def predict_with_features(request: Request) -> Response:
        body = parse(TransactionWithFeatures, await request.body())
        svc: ScoringService = request.app.state.service
        if not svc.ready:
            raise HTTPException(503, "no champion model loaded yet")
        needed = set(svc.models["champion"].features) | set(getattr(svc.models.get("challenger"), "features", ()))
        missing = sorted(needed - set(body.features))
        if missing:
            raise HTTPException(422, f"features: missing {', '.join(missing)}")
        values = {k: float("nan") if v is None else v for k, v in body.features.items()}
        return answer(await within_budget(request, 1, svc.score_features, body.transaction, values))

    @app.post("/predict/batch", response_model=Scores, tags=["scoring"])
    async def predict_batch(batch: Batch, request: Request, svc: Service) -> Scores:
        if len(batch.transactions) > settings.max_batch_size:
            raise HTTPException(413, f"transactions: at most {settings.max_batch_size} per batch, got {len(batch.transactions)}")
        scores = await within_budget(request, len(batch.transactions), lambda: [svc.score(tx) for tx in batch.transactions])
        return Scores(scores=scores)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(svc: Service) -> JSONResponse:
        body = {
            "ready": svc.ready,
            "models": {alias: {"version": m.version, "source": m.source} for alias, m in svc.models.items()},
            **svc.routing(),
            "last_guardrail_trip": svc.last_trip,
        }
        return JSONResponse(body, status_code=200 if svc.ready else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics(svc: Service) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/routing", dependencies=[Depends(admin)], tags=["admin"])
    async def get_routing(svc: Service) -> dict[str, object]:
        return svc.routing()

    @app.put("/admin/routing", dependencies=[Depends(admin)], tags=["admin"])
    async def set_routing(body: Routing, svc: Service) -> dict[str, object]:
        try:
            previous, current = svc.set_routing(body.challenger_share, body.mode)
        except Exception as exc:
            raise HTTPException(503, f"the registry holds the routing and cannot be written now: {exc}") from exc
        return {"previous": previous, **current}

    @app.post("/admin/reload", dependencies=[Depends(admin)], tags=["admin"])
    async def reload(svc: Service) -> dict[str, str | None]:
        return svc.reload()

    def move_champion(action: str, body: Promotion, svc: ScoringService) -> dict[str, str | None]:
        """Promote or roll back in the registry, log previous and new, then hot-swap by reloading."""
        from pipelines import registry

        try:
            previous, new = getattr(registry, action)(settings, body.reason, who="admin-api")
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        log.warning("%s: champion version %s -> %s: %s", action, previous, new, body.reason)
        return {"previous_champion": previous, "champion": new, **{f"loaded_{k}": v for k, v in svc.reload().items()}}

    @app.post("/admin/promote", dependencies=[Depends(admin)], tags=["admin"])
    async def promote(body: Promotion, svc: Service) -> dict[str, str | None]:
        return move_champion("promote", body, svc)

    @app.post("/admin/rollback", dependencies=[Depends(admin)], tags=["admin"])
    async def rollback(body: Promotion, svc: Service) -> dict[str, str | None]:
        return move_champion("rollback", body, svc)

    known_paths = {getattr(route, "path", "") for route in app.routes}
    return app
