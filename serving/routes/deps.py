"""What a route needs from its worker, as FastAPI dependencies: the settings and the scoring service."""

from __future__ import annotations

from typing import Annotated

import hmac

from fastapi import Depends, HTTPException, Request

from core.settings import Settings
from serving.service import ScoringService


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _service(request: Request) -> ScoringService:
    return request.app.state.service


SettingsDep = Annotated[Settings, Depends(_settings)]
Service = Annotated[ScoringService, Depends(_service)]


def require_bearer(token: str | None, authorization: str | None, api: str, setting: str) -> None:
    """404 while the API is off (no token set), 401 unless the header carries its token; compared in
    constant time, so the answer's timing tells nothing about how much of a guess was right."""
    if not token:
        raise HTTPException(404, f"{api} is off: set {setting} to enable it")
    if not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
        raise HTTPException(401, f"{api} needs 'Authorization: Bearer <token>'")
