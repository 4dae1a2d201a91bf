"""POST /labels: the feed of verdicts (chargebacks, analysts' decisions), behind its own token.

The token is not the admin token (settings refuse the same one): a label feed, often run by another
team's system, must be able to report fraud and nothing else. Verdicts go through the one recording
path, `features.labels.record`, as the bulk load and the replay's feed do.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException

from serving.routes.deps import Service, SettingsDep, require_bearer
from serving.schemas import LabelReceipt, Verdicts
from serving.service import REMEMBER_SECONDS

log = logging.getLogger("fraudops.api")


def labeller(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    require_bearer(settings.serving.labels_token, authorization, "labels API", "FRAUDOPS_LABELS_TOKEN")


router = APIRouter(tags=["labels"], dependencies=[Depends(labeller)])


@router.post("/labels", responses={422: {"description": "A verdict breaks the rules; nothing was recorded."},
                                   503: {"description": "The label store cannot be reached; nothing was recorded."}})
def post_labels(body: Verdicts, settings: SettingsDep, svc: Service) -> LabelReceipt:
    """Record verdicts, all or none. Idempotent: sending a batch again changes nothing. Verdicts on
    transactions fraudops has never seen are counted and listed, not stored. A plain function, so
    FastAPI runs it on its thread pool: the store's writes never hold up the event loop."""
    import pandas as pd

    from features.labels import record
    from features.schema import SchemaError

    frame = pd.DataFrame([verdict.model_dump() for verdict in body.labels])
    try:
        # the other workers remember what they answered every REMEMBER_SECONDS: a verdict on one of
        # those is looked up again after a few periods instead of refused
        receipt = record(settings, frame, "api", where="labels", unknown_wait_seconds=4 * REMEMBER_SECONDS)
    except SchemaError as exc:
        raise HTTPException(422, str(exc)) from exc
    except Exception as exc:  # the store or the offline store could not be read or written
        log.exception("labels: nothing recorded")
        raise HTTPException(503, f"the label store cannot be written now, so nothing was: {type(exc).__name__}: {exc}") from exc
    svc.metrics.labelled(receipt.counts())
    return LabelReceipt.model_validate(receipt.as_dict())
