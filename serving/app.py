"""The FastAPI application: thin routes over ScoringService."""

from __future__ import annotations

import gc
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from core.settings import Settings, get_settings
from serving import logs
from serving.asgi import BodyLimit
from serving.batcher import Batcher
from serving.lane import ScoringLane, document, validation_detail, within_budget
from serving.schemas import Batch, Scores
from serving.service import ScoringService

log = logging.getLogger("fraudops.api")


class FrontedAPI(FastAPI):
    """FastAPI with a handler in front of its whole middleware stack (`front`, given the stack to pass
    the rest to): the scoring lane answers the hot routes there, past every layer it does not need.
    FastAPI's own entry, and its OpenTelemetry wrapper when that is on, still come first."""

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


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
        app.state.batcher = Batcher(service.score_many, settings.scoring_batch_max)
        app.state.batcher.start()
        # Everything loaded so far (Feast, MLflow, the models) lives as long as the worker: freezing it
        # keeps the collector from walking it on every full collection, which stalled requests for
        # hundreds of milliseconds under load (the p99 at saturation in `make bench`).
        gc.collect()
        gc.freeze()
        yield
        app.state.batcher.stop()
        service.stop()
        service.metrics.flush_responses()
        service.metrics.worker_exited()

    app = FrontedAPI(
        title="fraudops scoring API",
        version="0.1.0",
        description="Scores card transactions with the champion model, or the challenger for a sticky share of customers.",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    logs.configure(settings.log_level)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def observe(path: str, status: int) -> None:
        service: ScoringService | None = getattr(app.state, "service", None)
        if service is not None:  # unknown paths share one label: a scanner cannot grow the metric
            service.metrics.responded(path if path in known_paths else "other", status)

    access = logs.AccessLog(observe=observe, sample=settings.access_log_sample)
    app.add_middleware(logs.RequestId, access=access)  # outermost of the stack: even a 413 carries its request id
    app.front = lambda stack: ScoringLane(stack, app.state, settings, access)  # ahead of it all, with the same id and limit

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if not settings.admin_token:
            raise HTTPException(404, "admin API is off: set FRAUDOPS_ADMIN_TOKEN to enable it")
        if not hmac.compare_digest((authorization or "").encode(), f"Bearer {settings.admin_token}".encode()):
            raise HTTPException(401, "admin API needs 'Authorization: Bearer <token>'")

    @app.post("/predict/batch", response_model=Scores, tags=["scoring"])
    async def predict_batch(batch: Batch, request: Request) -> Scores:
        if len(batch.transactions) > settings.max_batch_size:
            raise HTTPException(413, f"transactions: at most {settings.max_batch_size} per batch, got {len(batch.transactions)}")
        return Scores(scores=await within_budget(request.app.state, settings, batch.transactions))

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
            # answers go on without the store (degraded), so this informs; it does not fail readiness
            "online_store": "skipped until the next retry" if svc.online.breaker.open else "ok",
        }
        return JSONResponse(body, status_code=200 if svc.ready else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics(svc: Service) -> Response:
        return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

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
        from core import registry

        try:
            previous, new = getattr(registry, action)(settings, body.reason, who="admin-api")
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        except Exception as exc:  # the registry failed part-way: `all_or_nothing` put it back
            raise HTTPException(503, f"the registry could not be changed now, so nothing was: {exc}") from exc
        log.warning("%s: champion version %s -> %s: %s", action, previous, new, body.reason)
        return {"previous_champion": previous, "champion": new, **{f"loaded_{k}": v for k, v in svc.reload().items()}}

    @app.post("/admin/promote", dependencies=[Depends(admin)], tags=["admin"])
    async def promote(body: Promotion, svc: Service) -> dict[str, str | None]:
        return move_champion("promote", body, svc)

    @app.post("/admin/rollback", dependencies=[Depends(admin)], tags=["admin"])
    async def rollback(body: Promotion, svc: Service) -> dict[str, str | None]:
        return move_champion("rollback", body, svc)

    document(app)
    known_paths = {getattr(route, "path", "") for route in app.routes} | set(ScoringLane.paths)
    return app
