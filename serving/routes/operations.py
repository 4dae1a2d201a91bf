"""What operators and orchestrators poll: liveness, readiness with what is loaded, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.routes.deps import Service

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
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


@router.get("/metrics")
async def metrics(svc: Service) -> Response:
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
