"""Evaluation discipline, the promotion gate and idempotence, on the session's trained pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from model.calibration import IDENTITY
from model.evaluation import MAX_IPS_WEIGHT, card_precision_at_k, cost_optimal_threshold, expected_cost, recall_at_fpr
from model.loaded import fetch
from tests.conftest import fail_first_call, log_parts, log_records
from training.fit import ModelConfig
from training.windows import Windows


def test_card_precision_counts_cards_per_day_and_leaves_out_cards_already_caught() -> None:
    frame = pd.DataFrame(
        {
            "event_timestamp": pd.to_datetime(["2025-01-01 10:00"] * 4 + ["2025-01-02 10:00"] * 3),
            "customer_id": ["a", "a", "b", "c", "a", "b", "c"],
            "is_fraud": [0, 1, 0, 0, 1, 0, 0],
        }
    )
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.9, 0.4, 0.3])
    # day 1: the top-2 cards by their highest score are a (compromised) and b: 1 of 2.
    # day 2: a was caught on day 1 and is blocked, so the top 2 are b and c, neither compromised: 0 of 2.
    # A per-day precision without that memory would count a again on day 2 and give 0.5.
    assert card_precision_at_k(frame, scores, 2) == pytest.approx((1 / 2 + 0 / 2) / 2)
    # a day with fewer cards than k still divides by k, as the Handbook does
    assert card_precision_at_k(frame.iloc[:1], scores[:1], 2) == pytest.approx(0.0)


def test_card_precision_matches_the_handbooks_own_loop() -> None:
    """The Handbook's `card_precision_top_k`, written here the way its chapter 4 describes it, on a
    random week of 50 cards: the same figure."""
    rng = np.random.default_rng(3)
    n = 2_000
    frame = pd.DataFrame({"event_timestamp": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 7 * 86_400, n), unit="s"),
                          "customer_id": rng.integers(0, 50, n).astype(str), "is_fraud": (rng.random(n) < 0.1).astype(int)})
    scores = rng.random(n)
    caught: list[str] = []
    daily = []
    days = frame["event_timestamp"].dt.floor("D")
    for day in sorted(days.unique()):
        today = frame.assign(score=scores)[(days == day).to_numpy()]
        today = today[~today["customer_id"].isin(caught)]
        cards = today.groupby("customer_id")[["score", "is_fraud"]].max().sort_values("score", ascending=False).head(10)
        found = list(cards.index[cards["is_fraud"] == 1])
        daily.append(len(found) / 10)
        caught += found
    assert card_precision_at_k(frame, scores, 10) == pytest.approx(float(np.mean(daily)))


def test_cost_threshold_trades_missed_fraud_against_reviews() -> None:
    labels = np.array([1, 0, 0, 0, 1])
    amounts = np.array([500.0, 10.0, 10.0, 10.0, 2.0])
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    assert expected_cost(labels, amounts, scores >= 0.85, review_fee=5) == pytest.approx(2 + 5)
    threshold, cost = cost_optimal_threshold(labels, amounts, scores, review_fee=5)
    assert threshold > 0.8 and cost == pytest.approx(7)  # catching the 2.00 fraud costs more reviews than it saves
    assert recall_at_fpr(labels, scores, 0.0) == pytest.approx(0.5)


def test_prequential_folds_end_before_the_test_window(trained) -> None:
    windows = Windows.from_settings(trained)
    folds = windows.prequential(3, 7)
    assert len(folds) == 3
    for fold in folds:
        assert fold.test_end <= windows.test_start
        assert fold.test_start - fold.train_end == windows.test_start - windows.train_end  # same delay


def test_latest_windows_use_only_labels_that_have_arrived(trained) -> None:
    as_of = pd.Timestamp("2025-05-20 15:30")
    windows = Windows.latest(as_of, trained)
    assert windows.test_end == pd.Timestamp("2025-05-20") - pd.Timedelta(days=trained.features.label_delay_days)
    assert windows.test_start - windows.train_end == pd.Timedelta(days=trained.features.label_delay_days)
    assert (windows.train_end - windows.train_start).days == trained.training.train_days


def test_the_policys_declines_are_no_labels_and_its_explored_reviews_weigh_for_them(registry_copy) -> None:
    """A declined fraud never gets a chargeback: retraining must not learn it as legitimate. The
    decisions come through the real prediction log, as the API writes and the train flow reads it."""
    from core import predictions
    from features.offline import transactions_between
    from pipelines.flows.train import censor_by_serving_policy
    from training.windows import split

    windows = Windows.from_settings(registry_copy)
    frame = transactions_between(registry_copy.transactions_dir, windows.train_start, windows.test_end)
    frame = frame.assign(transaction_id=frame["transaction_id"].astype(str), is_fraud=frame["is_fraud"].astype(int), event_timestamp=frame["timestamp"])
    frauds = frame[frame["is_fraud"] == 1]["transaction_id"].tolist()
    declined, explored, approved = frauds[0], frauds[1], frame[frame["is_fraud"] == 0]["transaction_id"].iloc[0]
    records = [{**record, "transaction_id": tx, "decision": decision, "propensity": propensity}
               for record, (tx, decision, propensity) in zip(log_records("x", 3), [(declined, "decline", 0.995), (explored, "review", 0.005),
                                                                                    (approved, "approve", 1.0)])]
    log_parts(registry_copy, "2025-07-01", [records])
    assert len(predictions.logged(registry_copy, frame["transaction_id"].tolist(), ("transaction_id", "decision", "propensity"))) == 3

    weighted = censor_by_serving_policy.fn(frame, registry_copy).set_index("transaction_id")["weight"]
    assert weighted[declined] == 0.0 and weighted[explored] == pytest.approx(MAX_IPS_WEIGHT) and weighted[approved] == 1.0
    assert (weighted.drop([declined, explored]) == 1.0).all(), "a transaction the API never answered weighs 1"
    parts = split(frame.assign(weight=weighted.to_numpy()), windows)
    assert not any(declined in set(part["transaction_id"]) for part in parts), "the censored row is in no fit and no test"
    assert sum(explored in set(part["transaction_id"]) for part in parts) == 1


def test_run_is_logged_with_lineage_baselines_and_plots(trained) -> None:
    client = MlflowClient(trained.tracking_uri)
    version = client.get_model_version_by_alias(trained.stores.model_name, "champion")
    assert version.run_id is not None
    run = client.get_run(version.run_id)
    for key in ("git_commit", "feature_service", "features", "train_window", "test_window", "fingerprint"):
        assert run.data.tags[key]
    for metric in ("test_roc_auc", "test_average_precision", "test_card_precision_at_100", "test_recall_at_fpr_0.01",
                   "test_expected_cost", "test_calibration_error", "test_calibration_error_raw",
                   "baseline_logistic_regression_average_precision", "baseline_amount_rule_average_precision"):
        assert metric in run.data.metrics
    served = fetch(trained, "champion")
    assert served is not None and served.calibration.slope > 0 and served.calibration != IDENTITY, "the calibration travels with the model"
    assert run.inputs is not None and run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "training-set"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("pr_roc", "calibration", "cost_by_threshold", "cost_by_capacity", "importance_gain_shap")}


def aliases(settings) -> dict[str, str]:
    return {alias: str(v) for alias, v in MlflowClient(settings.tracking_uri).get_registered_model(settings.stores.model_name).aliases.items()}


def test_rerun_on_same_inputs_creates_nothing_and_moves_nothing(registry_copy) -> None:
    from pipelines.flows import train_flow

    before = aliases(registry_copy)
    client = MlflowClient(registry_copy.tracking_uri)
    count = len(client.search_model_versions(f"name = '{registry_copy.stores.model_name}'"))
    result = train_flow(registry_copy, ModelConfig(num_boost_round=60))  # the fixture's champion config
    assert result["gate"] == "unchanged" and result["version"] == before["champion"]
    assert len(client.search_model_versions(f"name = '{registry_copy.stores.model_name}'")) == count
    assert aliases(registry_copy) == before


def test_candidate_below_the_bar_is_not_registered(registry_copy) -> None:
    from pipelines.flows import train_flow

    before = aliases(registry_copy)
    strict = registry_copy.replace(min_average_precision=0.999)
    result = train_flow(strict, ModelConfig(num_boost_round=20, num_leaves=7))
    assert str(result["gate"]).startswith("failed: test AP") and result["version"] is None
    assert aliases(registry_copy) == before


def test_rejected_data_fails_the_run_and_leaves_aliases(registry_copy) -> None:
    from pipelines.flows import train_flow

    before = aliases(registry_copy)
    with pytest.raises(ValueError, match="min_train_frauds"):
        train_flow(registry_copy.replace(min_train_frauds=10**6), ModelConfig(num_boost_round=20, num_leaves=5))
    assert aliases(registry_copy) == before


def test_promote_moves_champion_and_records_why(registry_copy) -> None:
    from core.registry import promote

    before = aliases(registry_copy)
    previous, new = promote(registry_copy, reason="better cost on the canary", who="tester")
    assert (previous, new) == (before["champion"], before["challenger"])
    assert aliases(registry_copy) == {"champion": before["challenger"]}
    tags = MlflowClient(registry_copy.tracking_uri).get_model_version(registry_copy.stores.model_name, new).tags
    assert tags["promoted_by"] == "tester" and tags["promoted_reason"] == "better cost on the canary"
    with pytest.raises(ValueError, match="no 'challenger'"):
        promote(registry_copy, reason="again")


@pytest.mark.parametrize("failing", ["set_registered_model_alias", "delete_registered_model_alias"])
def test_a_promotion_that_fails_part_way_leaves_the_registry_as_it_was(registry_copy, monkeypatch, failing) -> None:
    """Either alias write failing puts the aliases and the challenger's tags back. Without that, a
    retried promotion would find both aliases on one version and record it as replacing itself."""
    from core.registry import promote, rollback

    client = MlflowClient(registry_copy.tracking_uri)
    before = aliases(registry_copy)
    tags = client.get_model_version(registry_copy.stores.model_name, before["challenger"]).tags
    with monkeypatch.context() as patch:
        fail_first_call(patch, failing)
        with pytest.raises(ConnectionError, match=failing):
            promote(registry_copy, reason="canary looked good", who="tester")
    assert aliases(registry_copy) == before
    assert client.get_model_version(registry_copy.stores.model_name, before["challenger"]).tags == tags
    assert promote(registry_copy, reason="retried", who="tester") == (before["champion"], before["challenger"])
    assert rollback(registry_copy, reason="alert fired", who="oncall") == (before["challenger"], before["champion"])


def test_a_rollback_that_fails_leaves_the_champion_and_its_tags(registry_copy, monkeypatch) -> None:
    from core.registry import promote, rollback

    client = MlflowClient(registry_copy.tracking_uri)
    promote(registry_copy, reason="canary looked good", who="tester")
    before = aliases(registry_copy)
    tags = client.get_model_version(registry_copy.stores.model_name, before["champion"]).tags
    with monkeypatch.context() as patch:
        fail_first_call(patch, "set_registered_model_alias")
        with pytest.raises(ConnectionError):
            rollback(registry_copy, reason="alert fired", who="oncall")
    assert aliases(registry_copy) == before
    assert client.get_model_version(registry_copy.stores.model_name, before["champion"]).tags == tags


def test_validation_errors_are_not_retried() -> None:
    from prefect.states import Failed

    from pipelines.flows.train import _transient

    assert _transient(None, None, Failed(data=ValueError("bad data"))) is False
    assert _transient(None, None, Failed(data=ConnectionError("flaky"))) is True


def test_deployments_are_scheduled_from_settings(trained) -> None:
    from pipelines.deployments import deployments

    custom = trained.replace(retrain_cron="15 4 * * *", score_cron="0 2 * * *")
    by_name = {d.name: d for d in deployments(custom)}
    assert set(by_name) == {"daily-retrain", "hourly-monitor", "nightly-score"}
    crons = {name: [getattr(s.schedule, "cron", None) for s in d.schedules or []] for name, d in by_name.items()}
    assert crons == {"daily-retrain": ["15 4 * * *"], "hourly-monitor": ["0 * * * *"], "nightly-score": ["0 2 * * *"]}


def test_rollback_restores_the_replaced_champion(registry_copy) -> None:
    from core.registry import promote, rollback

    before = aliases(registry_copy)
    with pytest.raises(ValueError, match="nothing to roll back to"):
        rollback(registry_copy, reason="too early")
    promote(registry_copy, reason="canary looked good", who="tester")
    assert rollback(registry_copy, reason="alert fired", who="oncall") == (before["challenger"], before["champion"])
    assert aliases(registry_copy)["champion"] == before["champion"]


def test_the_gate_refuses_a_candidate_below_the_floor_the_baseline_or_the_champion() -> None:
    from training.gate import gate_failures

    good = {"test_average_precision": 0.6, "baseline_logistic_regression_average_precision": 0.5}
    assert gate_failures(good, None, 0.1) == []
    assert gate_failures(good, 0.6, 0.1) == []  # as good as the champion is enough
    assert any("min_average_precision" in f for f in gate_failures(good, None, 0.7))
    assert any("logistic-regression baseline" in f for f in gate_failures({**good, "baseline_logistic_regression_average_precision": 0.6}, None, 0.1))
    assert any("champion's 0.650" in f for f in gate_failures(good, 0.65, 0.1))
