"""What a route needs from its worker, as FastAPI dependencies: the settings and the scoring service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from serving.service import ScoringService


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _service(request: Request) -> ScoringService:
    return request.app.state.service


SettingsDep = Annotated[Settings, Depends(_settings)]
Service = Annotated[ScoringService, Depends(_service)]
