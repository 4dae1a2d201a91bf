"""Routing, reloads, promotion and rollback, rules and the block and allow lists, behind the admin
token (off when none is set)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path
from pydantic import BaseModel, Field

from features import lists
from features.lists import Kind, ListName
from model.rules import RuleError
from serving.router import Mode
from serving.routes.deps import Service, SettingsDep, require_bearer
from serving.schemas import ID_PATTERN
from serving.service import ScoringService

log = logging.getLogger("fraudops.api")


def admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    require_bearer(settings.serving.admin_token, authorization, "admin API", "FRAUDOPS_ADMIN_TOKEN")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])


class Routing(BaseModel):
    model_config = {"extra": "forbid"}
    challenger_share: float | None = Field(None, ge=0.0, le=1.0)
    mode: Mode | None = None


class Promotion(BaseModel):
    reason: str = Field(min_length=3, max_length=500)


@router.get("/routing")
async def get_routing(svc: Service) -> dict[str, object]:
    return svc.routing()


@router.put("/routing")
async def set_routing(body: Routing, svc: Service) -> dict[str, object]:
    try:
        previous, current = svc.set_routing(body.challenger_share, body.mode)
    except Exception as exc:
        raise HTTPException(503, f"the registry holds the routing and cannot be written now: {exc}") from exc
    return {"previous": previous, **current}


@router.post("/reload")
async def reload(svc: Service) -> dict[str, str | None]:
    return svc.reload()


@router.get("/rules")
async def get_rules(svc: Service) -> dict[str, object]:
    return {"source": svc.rules.source, "rules": [vars(rule) for rule in svc.rules.rules]}


@router.post("/rules/reload")
async def reload_rules(svc: Service) -> dict[str, object]:
    """Read the rules file now, on this worker (the others follow it at their next poll). A file that
    fails validation is a 422 naming the rule, and the rules before it keep running."""
    try:
        svc.reload_rules()
    except RuleError as exc:
        raise HTTPException(422, f"rules not reloaded, the previous rules keep running: {exc}") from exc
    return await get_rules(svc)


class ListEntry(BaseModel):
    model_config = {"extra": "forbid"}
    list: ListName
    reason: str = Field(min_length=3, max_length=500)


class Removal(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str = Field(min_length=3, max_length=500)


@router.get("/lists")
async def get_lists(settings: SettingsDep) -> dict[str, object]:
    return {"entries": lists.entries(settings)}


def change_list(svc: ScoringService, kind: Kind, entity_id: str, list_name: ListName | None, reason: str) -> dict[str, object]:
    """Record the change for every worker (the label store's database), then act on it here at once;
    the other workers follow at their next poll."""
    try:
        lists.put(svc.settings, kind, entity_id, list_name, "admin-api", reason)
    except Exception as exc:
        raise HTTPException(503, f"the lists' store cannot be written now, so nothing changed: {exc}") from exc
    log.warning("%s %s %s: %s", kind, entity_id, f"put on the {list_name} list" if list_name else "taken off its list", reason)
    svc.refresh_lists()
    return {"kind": kind, "entity_id": entity_id, "list": list_name, "reason": reason}


@router.put("/lists/{kind}/{entity_id}")
async def put_on_list(kind: Kind, entity_id: Annotated[str, Path(pattern=ID_PATTERN)], body: ListEntry, svc: Service) -> dict[str, object]:
    return change_list(svc, kind, entity_id, body.list, body.reason)


@router.delete("/lists/{kind}/{entity_id}")
async def take_off_list(kind: Kind, entity_id: Annotated[str, Path(pattern=ID_PATTERN)], body: Removal, svc: Service) -> dict[str, object]:
    return change_list(svc, kind, entity_id, None, body.reason)


def move_champion(action: str, body: Promotion, svc: ScoringService) -> dict[str, str | None]:
    """Promote or roll back in the registry, log previous and new, then hot-swap by reloading."""
    from core import registry

    try:
        previous, new = getattr(registry, action)(svc.settings, body.reason, who="admin-api")
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    except Exception as exc:  # the registry failed part-way: `all_or_nothing` put it back
        raise HTTPException(503, f"the registry could not be changed now, so nothing was: {exc}") from exc
    log.warning("%s: champion version %s -> %s: %s", action, previous, new, body.reason)
    return {"previous_champion": previous, "champion": new, **{f"loaded_{k}": v for k, v in svc.reload().items()}}


@router.post("/promote")
async def promote(body: Promotion, svc: Service) -> dict[str, str | None]:
    return move_champion("promote", body, svc)


@router.post("/rollback")
async def rollback(body: Promotion, svc: Service) -> dict[str, str | None]:
    return move_champion("rollback", body, svc)
