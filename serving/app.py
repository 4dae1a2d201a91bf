"""The FastAPI application: the worker's lifespan, the middleware and the routers (serving/routes)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp

from core.settings import Settings, get_settings
from serving import logs
from serving.asgi import BodyLimit
from serving.batcher import Batcher
from serving.lane import ScoringLane, document, validation_detail
from serving.routes import admin, labels, operations, scoring
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A worker's scoring service and its scoring thread, for as long as the worker runs."""
    settings: Settings = app.state.settings
    service = ScoringService(settings)
    service.start()
    app.state.service = service
    app.state.batcher = Batcher(service.score_many, settings.serving.scoring_batch_max)
    app.state.batcher.start()
    # Everything loaded so far (MLflow, the models) lives as long as the worker: freezing it keeps the
    # collector from walking it on every full collection, which stalled requests for hundreds of
    # milliseconds under load (the p99 at saturation in `make bench`).
    gc.collect()
    gc.freeze()
    yield
    app.state.batcher.stop()
    service.stop()
    service.metrics.flush_responses()
    service.metrics.worker_exited()


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_detail(exc)}, status_code=422)


def response_counter(app: FastAPI) -> Callable[[str, int], None]:
    """Count each answer by route and status; unknown paths share one label, so a scanner cannot grow
    the metric."""
    known: set[str] = set()

    def observe(path: str, status: int) -> None:
        if not known:
            known.update(getattr(route, "path", "") for route in app.routes)
            known.update(ScoringLane.paths)
        service: ScoringService | None = getattr(app.state, "service", None)
        if service is not None:
            service.metrics.responded(path if path in known else "other", status)

    return observe


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FrontedAPI(
        title="fraudops scoring API",
        version="0.1.0",
        description="Scores card transactions with the champion model, or the challenger for a sticky share of customers.",
        lifespan=lifespan,
        telemetry=None if settings.serving.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    logs.configure(settings.serving.log_level)
    app.add_middleware(BodyLimit, limit=settings.serving.max_body_bytes)
    access = logs.AccessLog(observe=response_counter(app), sample=settings.serving.access_log_sample)
    app.add_middleware(logs.RequestId, access=access)  # outermost of the stack: even a 413 carries its request id
    app.exception_handler(RequestValidationError)(invalid)
    if settings.serving.scoring_lane:  # ahead of it all, with the same request id and body limit
        app.front = lambda stack: ScoringLane(stack, app.state, settings, access)
    else:
        app.include_router(scoring.single)
    for router in (scoring.router, operations.router, admin.router, labels.router):
        app.include_router(router)
    if settings.serving.scoring_lane:
        document(app)
    return app
