"""The nightly batch-scoring flow: the newest day in the offline store (yesterday, where ingest runs
daily) scored with the champion, into the state folder's scores/, one file per day."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow, get_run_logger, task

from core.settings import Settings
from pipelines.batch import Scored, score


@task
def day_to_score(settings: Settings) -> date:
    from features.store import latest_transaction

    return latest_transaction(settings).date()


@task(retries=2, retry_delay_seconds=5)
def score_day(settings: Settings, day: date, alias: str, explain: bool) -> Scored:
    """Retried as a whole: the output is renamed into place only when complete, so a retry never
    finds half of a previous attempt."""
    from features.offline import transactions_between

    transactions = transactions_between(settings.transactions_dir, day, day + timedelta(days=1))
    if transactions.empty:
        raise ValueError(f"no transactions on {day} in {settings.transactions_dir}")
    return score(settings, transactions.drop(columns=["is_fraud", "fraud_scenario"]), settings.scores_dir / f"{day}.parquet", alias, explain)


@flow(name="score")
def score_flow(settings: Settings | None = None, day: date | None = None, alias: str = "champion", explain: bool = True) -> Scored:
    """Score one day (default: the newest in the offline store) with `alias`; the analysts' queue
    reads the file, reason codes included."""
    settings = settings or Settings()
    day = day or day_to_score(settings)
    scored = score_day(settings, day, alias, explain)
    get_run_logger().info("scored %d transactions of %s with %s v%s: %d flagged, in %s", scored.rows, day, alias, scored.version, scored.flagged, scored.path)
    return scored
