"""Naming the route of a request the scoring lane answers ahead of FastAPI, for OpenTelemetry.

What it gives: with OpenTelemetry on, FastAPI's wrapper opens each request's span but only its router
names the route; the lane answers before the router, so without this, traces and HTTP metrics show a
bare `POST` instead of `POST /predict`.

What it costs: FastAPI's private `fastapi.telemetry._api._route_selected`. With another FastAPI
version, or without that name, the span keeps its bare name (a warning says so) and nothing else
changes: there is no public call that does this.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope

from core.native import log, written_for

FASTAPI = "0.150.0"


def _door() -> Callable[..., None] | None:
    if not written_for("fastapi", FASTAPI):
        return None
    try:
        from fastapi.telemetry._api import _route_selected
    except ImportError as exc:
        log.warning("FastAPI's route naming for telemetry is unavailable (%s): lane spans keep a bare name", exc)
        return None
    return _route_selected


_route_selected = _door()


def name_route(scope: Scope) -> None:
    """Give the request's open span its route, as FastAPI's router would."""
    if _route_selected is not None:
        _route_selected(scope=scope, path=scope["path"])
