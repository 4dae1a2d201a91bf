"""Scoring routes that FastAPI answers: the batch route always, and `/predict` and
`/predict/features` when the scoring lane is off (`Settings.scoring_lane`). Both ways share the
lane's functions, so the answer to a body is the same whichever answers it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from serving.lane import EXPLAIN, score_with_features, within_budget
from serving.routes.deps import SettingsDep
from serving.schemas import Batch, Score, Scores, Transaction, TransactionWithFeatures

Explain = Annotated[bool, Query(description=EXPLAIN)]
router = APIRouter(tags=["scoring"])
single = APIRouter(tags=["scoring"])  # what the lane answers when it is on


@router.post("/predict/batch", response_model=Scores)
async def predict_batch(batch: Batch, request: Request, settings: SettingsDep, explain: Explain = False) -> Scores:
    if len(batch.transactions) > settings.serving.max_batch_size:
        raise HTTPException(413, f"transactions: at most {settings.serving.max_batch_size} per batch, got {len(batch.transactions)}")
    return Scores(scores=await within_budget(request.app.state, settings, batch.transactions, explain))


@single.post("/predict", response_model=Score, summary="Score a transaction with online features: lookup, routing, model, log")
async def predict(transaction: Transaction, request: Request, settings: SettingsDep, explain: Explain = False) -> Score:
    return (await within_budget(request.app.state, settings, [transaction], explain))[0]


@single.post("/predict/features", response_model=Score, summary="Score a transaction with features the caller brings: routing, model, log")
async def predict_features(body: TransactionWithFeatures, request: Request, explain: Explain = False) -> Score:
    return score_with_features(request.app.state, body, explain)
