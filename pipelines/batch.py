"""Batch scoring: a file or a day of transactions scored with the point-in-time features training
used (Feast's offline store, as of each transaction's own time) and the model behind a registry
alias, written whole to Parquet or not at all.

Real time answers the authorisation; batch answers what can wait a night: re-scoring yesterday for
the analysts' queue, back-testing a challenger over a month, scoring a portfolio for a report. Both
read one feature service and one registry, so a batch score and the API's score of the same
transaction agree (tests/test_batch.py). With a Dask client the join and the model run on the
cluster's workers, a slice of rows each, and the caller writes the one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.runtime import atomic_path
from core.settings import Settings
from features import lists
from features.live import ANSWER_VALUES
from features.schema import SchemaError, validate_transactions
from model import rules
from model.decisions import DECISIONS
from model.loaded import LoadedModel, fetch
from model.reasons import reason_columns

if TYPE_CHECKING:
    from distributed import Client

ROW = "input_row"  # the row's number in the input (0-based, as the schema's messages count)
SHOWN = 5


class BatchError(ValueError):
    """An input that cannot be scored; the message names the rows and why. Nothing was written."""


@dataclass(frozen=True)
class Scored:
    path: Path
    rows: int
    alias: str
    version: str
    threshold: float
    flagged: int


def read_input(path: Path) -> pd.DataFrame:
    """Transactions from a CSV or Parquet file, checked against the raw schema without labels."""
    if not path.is_file():
        raise BatchError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise BatchError(f"{path}: expected a .csv or .parquet file")
    frame = pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
    if frame.empty:
        raise BatchError(f"{path}: no rows to score")
    try:
        return validate_transactions(frame, source=str(path), labelled=False)
    except SchemaError as exc:
        raise BatchError(str(exc)) from exc


def _rows(rows: np.ndarray) -> str:
    more = f" (and {len(rows) - SHOWN} more)" if len(rows) > SHOWN else ""
    return ", ".join(str(int(r)) for r in rows[:SHOWN]) + more


def score_rows(settings: Settings, model: LoadedModel, transactions: pd.DataFrame, explain: bool = False,
               threads: int = 2, with_features: bool = False) -> pd.DataFrame:
    """Features for each transaction as of its own time, then scores and decisions (the band, then the
    rules of `FRAUDOPS_RULES_FILE` and the block and allow lists, as the API decides), in input order (`with_features`: the model's features too, as the prediction log keeps them).
    A transaction the feature table does not hold (not ingested, or ingested after the feature job
    ran) has no features to score with and fails the batch, with its rows named."""
    from features.store import historical_features, open_store

    ruleset = rules.load(settings.rules.rules_file, ANSWER_VALUES)  # a bad file fails before the join
    entity_lists = lists.read(settings)
    entity = transactions.assign(**{ROW: np.arange(len(transactions))}) if ROW not in transactions else transactions
    joined = historical_features(open_store(settings), settings.features.feature_service, entity).sort_values(ROW, ignore_index=True)
    # The card's count includes the transaction itself: never missing where the feature row exists.
    absent = joined[ROW].to_numpy()[joined["customer_tx_count_1d"].isna().to_numpy()]
    if absent.size:
        raise BatchError(f"rows {_rows(absent)}: no feature row as of the transaction's time in the offline store "
                         f"(ingest the transactions and run `fraudops features apply` before scoring them)")
    matrix = joined[list(model.features)].to_numpy(np.float64)
    scores = model.score(matrix, threads)
    kept = [ROW, "transaction_id", "event_timestamp", "customer_id", "terminal_id", "amount"]
    kept += [f for f in model.features if f not in kept] if with_features else []
    out = joined[kept].rename(columns={"event_timestamp": "timestamp"})
    bands = np.asarray(DECISIONS)[model.bands.decide(scores)].tolist()
    values = joined[[name for name in ANSWER_VALUES if name in joined]].to_dict("records") if ruleset.rules else []
    listed = None if entity_lists.empty else [entity_lists.actions(str(c), str(t)) for c, t in zip(joined["customer_id"], joined["terminal_id"])]
    decisions, fired, shadowed = ruleset.decide_rows(bands, values, scores.tolist(), listed)
    out = out.assign(score=scores, is_fraud_predicted=scores >= model.threshold, decision=decisions, rules=fired, rules_shadow=shadowed,
                     threshold=model.threshold, model_version=model.version)
    return out.assign(**reason_columns(model, matrix, threads)) if explain else out


def _score_part(settings: Settings, model: LoadedModel, part: pd.DataFrame, explain: bool) -> pd.DataFrame:
    """One worker's slice, with one thread: the cluster's parallelism is its workers."""
    return score_rows(settings, model, part, explain, threads=1)


def score_on_dask(settings: Settings, model: LoadedModel, transactions: pd.DataFrame, explain: bool, client: Client) -> pd.DataFrame:
    """The same rows scored on every worker of the cluster, a slice each; the slices keep their
    input row numbers, so the result is the single-machine one, in the same order."""
    entity = transactions.assign(**{ROW: np.arange(len(transactions))})
    parts = max(1, len(client.scheduler_info()["workers"]))
    futures = client.map(_score_part, [settings] * parts, [model] * parts, np.array_split(entity, parts), [explain] * parts, pure=False)
    return pd.concat(client.gather(futures), ignore_index=True).sort_values(ROW, ignore_index=True)


def write_scores(scored: pd.DataFrame, out: Path, alias: str) -> None:
    """The scores as one Parquet file, renamed into place when whole (`atomic_path`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stamped = scored.drop(columns=[ROW]).assign(alias=alias, scored_at=datetime.now(timezone.utc).replace(tzinfo=None))
    with atomic_path(out) as partial:
        stamped.to_parquet(partial, index=False)


def score(settings: Settings, transactions: pd.DataFrame, out: Path, alias: str = "champion", explain: bool = False,
          client: Client | None = None) -> Scored:
    """Score validated transactions with the model behind `alias` and write them to `out`: on
    `client`'s cluster if given, else on the one at `settings.training.dask_address` if set, else here."""
    if out.suffix.lower() != ".parquet":
        raise BatchError(f"{out}: the output is written as Parquet; name it *.parquet")
    if client is None and settings.training.dask_address is not None:
        from distributed import Client

        with Client(settings.training.dask_address) as cluster:
            return score(settings, transactions, out, alias, explain, cluster)
    model = fetch(settings, alias)
    if model is None:
        raise BatchError(f"no model behind the alias {alias!r} of {settings.stores.model_name}: train one first (fraudops train)")
    scored = score_rows(settings, model, transactions, explain) if client is None else score_on_dask(settings, model, transactions, explain, client)
    write_scores(scored, out, alias)
    return Scored(out, len(scored), alias, model.version, model.threshold, int(scored["is_fraud_predicted"].sum()))
