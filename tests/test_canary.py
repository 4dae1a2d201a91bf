"""Canary statistics: intervals over customers, the promotion criteria, and the traffic they judge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from monitoring.canary import compare


def canary(seed: int, customers: int = 400, rows_each: int = 10, challenger_gain: float = 0.0, fraud_cards: float = 0.1) -> pd.DataFrame:
    """Labelled canary traffic: a card is compromised or not, all its rows alike (as fraud comes in
    runs on one card); the challenger's scores separate the classes `challenger_gain` further apart."""
    rng = np.random.default_rng(seed)
    card = np.repeat(np.arange(customers), rows_each)
    variant = np.where(card % 2 == 0, "champion", "challenger")
    fraud = np.repeat(rng.random(customers) < fraud_cards, rows_each).astype(int)
    separation = 1.0 + challenger_gain * (variant == "challenger")
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, card.size) + separation * (2 * fraud - 1) - 1)))
    return pd.DataFrame({"customer_id": card.astype(str), "variant": variant, "model_version": np.where(variant == "champion", "1", "2"),
                         "score": score, "is_fraud": fraud, "is_fraud_predicted": score >= 0.5, "amount": rng.gamma(2.0, 50.0, card.size),
                         "timestamp": pd.Timestamp("2025-07-01") + pd.to_timedelta(rng.integers(0, 14 * 86400, card.size), unit="s")})


def test_a_clearly_better_challenger_meets_the_criteria() -> None:
    result = compare(canary(0, challenger_gain=1.5), review_fee=5.0, min_frauds=30, max_ap_loss=0.02)
    assert result.promotable, result.failures
    assert result.cost_per_1000.high < 0 and result.average_precision.low > 0
    assert result.challenger.average_precision > result.champion.average_precision
    assert result.days == 14 and result.days_needed() < result.days  # already enough traffic


def test_the_same_model_on_both_sides_is_not_promoted() -> None:
    result = compare(canary(1), review_fee=5.0, min_frauds=30, max_ap_loss=0.02)
    assert not result.promotable and result.cost_per_1000.low < 0 < result.cost_per_1000.high
    assert any("not lower than the champion's" in f for f in result.failures)


def test_too_few_labelled_frauds_is_no_verdict() -> None:
    result = compare(canary(2, customers=60, fraud_cards=0.05), review_fee=5.0, min_frauds=30, max_ap_loss=0.02)
    assert result.failures and all("fewer than the 30 a comparison needs" in f for f in result.failures)


def test_intervals_count_customers_not_rows() -> None:
    """Ten rows of one card are one observation, not ten: resampled as rows, the interval would be
    about sqrt(10) times too narrow."""
    traffic = canary(3, rows_each=10)
    per_customer = compare(traffic, 5.0, 30, 0.02).cost_per_1000
    per_row = compare(traffic.assign(customer_id=np.arange(len(traffic)).astype(str)), 5.0, 30, 0.02).cost_per_1000
    assert per_customer.standard_error > 2 * per_row.standard_error


def log_canary_traffic(settings, tmp_path) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The prediction log of a 50% canary over the tiny pipeline's test window, each variant's own
    scores, and a tenth of the rows from a retired version; and the time its labels have all arrived."""
    from features.store import historical_features, model_features, open_store
    from pipelines.batch import score
    from serving.router import Router
    from tests.conftest import log_parts
    from tests.test_batch import COLUMNS, held_out_window

    tx = held_out_window(settings)
    scored = {alias: pd.read_parquet(score(settings, tx[COLUMNS], tmp_path / f"{alias}.parquet", alias=alias).path)
              for alias in ("champion", "challenger")}
    router = Router(0.5)
    variant = np.array([router.route(str(c), True) for c in tx["customer_id"]])
    chosen = scored["champion"].where(pd.Series(variant == "champion"), scored["challenger"])
    log = chosen.assign(variant=variant, shadow=False, features_missing=0, degraded=False, latency_ms=0.5)
    log = log.assign(model_version=np.where(np.arange(len(log)) % 10 == 0, "99", log["model_version"]))  # a retired version's answers
    joined = historical_features(open_store(settings), settings.features.feature_service, tx[COLUMNS])
    features = [c for c in model_features(open_store(settings), settings.features.feature_service) if c != "amount"]
    log = log.merge(joined.assign(transaction_id=joined["transaction_id"].astype(str))[["transaction_id", *features]], on="transaction_id")
    for day, rows in log.groupby(log["timestamp"].dt.date):
        log_parts(settings, str(day), [rows[["transaction_id", "customer_id", "terminal_id", "timestamp", "score", "is_fraud_predicted",
                                             "variant", "shadow", "model_version", "features_missing", "degraded", "latency_ms",
                                             "amount", *features]].to_dict("records")])
    return tx, tx["timestamp"].max() + pd.Timedelta(days=settings.features.label_delay_days + 1)


def test_promote_refuses_without_labelled_canary_traffic_and_force_overrides(registry_copy, tmp_path) -> None:
    """The challenger is judged on the log's labelled predictions of the versions aliased now: the
    tiny pipeline's log holds the champion's and the challenger's answers to the test window, and a
    retired version's, which must not count."""
    from core import registry
    from pipelines.cli import app
    from pipelines.demo import settings_env

    tx, until = log_canary_traffic(registry_copy, tmp_path)
    from monitoring.canary import labelled_canary

    labelled = labelled_canary(registry_copy, until.to_pydatetime())
    client = registry.connect(registry_copy)
    versions = {a: registry.aliased_version(client, registry_copy.stores.model_name, a) for a in ("champion", "challenger")}
    assert set(labelled["variant"]) == {"champion", "challenger"} and "99" not in set(labelled["model_version"])
    assert (labelled["model_version"] == labelled["variant"].map(versions)).all()
    truth = tx.assign(transaction_id=tx["transaction_id"].astype(str)).set_index("transaction_id")["is_fraud"]
    assert (labelled["is_fraud"].to_numpy() == truth.loc[labelled["transaction_id"]].to_numpy()).all()

    env = {k: v for k, v in settings_env(registry_copy).items() if k.startswith("FRAUDOPS_")}
    args = ["promote", "--reason", "test", "--until", until.strftime("%Y-%m-%dT%H:%M:%S")]
    refused = CliRunner().invoke(app, args, env=env)
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "refused" in message and "challenger - champion over" in message
    assert registry.aliased_version(client, registry_copy.stores.model_name, "champion") == versions["champion"]
    forced = CliRunner().invoke(app, [*args, "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert registry.aliased_version(client, registry_copy.stores.model_name, "champion") == versions["challenger"]


@pytest.mark.parametrize("difference", [None, 5.0])
def test_days_needed_grow_with_the_square_of_a_smaller_difference(difference) -> None:
    result = compare(canary(4, challenger_gain=0.3), 5.0, 30, 0.02)
    target = abs(result.cost_per_1000.value) if difference is None else difference
    assert result.days_needed(target / 2) == pytest.approx(4 * result.days_needed(target))


def test_with_nothing_logged_yet_the_canary_has_no_verdict_not_an_error(registry_copy) -> None:
    from monitoring.canary import labelled_canary

    result = compare(labelled_canary(registry_copy), 5.0, 30, 0.02)
    assert result.champion.transactions == result.challenger.transactions == 0 and not result.promotable
