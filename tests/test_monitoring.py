"""The drift verdict on synthetic traffic: quiet when nothing changed, loud when something did."""

from __future__ import annotations

from dataclasses import replace

import json

import numpy as np
import pandas as pd
import pytest

from core.settings import Settings
from monitoring.drift import DriftLimits, Reference, drift_report

FEATURES = ["amount", "customer_tx_count_7d", "terminal_risk_7d", "is_night"]  # is_night: a clock feature, never tested


def traffic(n: int, seed: int, amount_scale: float = 1.0, score_shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 25.0, n) * amount_scale,
            "customer_tx_count_7d": rng.poisson(14, n).astype(float),
            "terminal_risk_7d": rng.beta(0.5, 30, n),
            "is_night": (rng.uniform(size=n) < 0.2).astype(float),
            "score": np.clip(rng.beta(0.6, 20, n) + score_shift, 0, 1),
        }
    )


def live(frame: pd.DataFrame, variant: str = "champion", version: str = "1", missing: int = 0) -> pd.DataFrame:
    return frame.assign(variant=variant, model_version=version, features_missing=missing)


def run(tmp_path, current: pd.DataFrame, challenger: bool = False, **overrides):
    references = {"champion": Reference("1", traffic(5_000, 0))}
    if challenger:
        references["challenger"] = Reference("2", traffic(5_000, 1))
    limits = replace(DriftLimits.from_settings(Settings().monitoring), **({"drift_share": 0.3, "min_rows": 200, "max_missing_share": 0.05} | overrides))
    summary, _ = drift_report(references, current, FEATURES, tmp_path, limits)
    return summary


def test_same_distribution_is_ok(tmp_path) -> None:
    summary = run(tmp_path, live(traffic(3_000, 7)))
    assert summary.verdict == "ok" and not summary.prediction["champion"].drifted
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == "ok"
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_inflated_amounts_are_data_drift(tmp_path) -> None:
    summary = run(tmp_path, live(traffic(3_000, 7, amount_scale=1.6)), drift_share=0.3)
    assert summary.verdict == "drift"
    assert {c.column for c in summary.columns if c.drifted} == {"amount"}


def test_prediction_drift_is_judged_per_variant(tmp_path) -> None:
    current = pd.concat([live(traffic(2_000, 7)), live(traffic(2_000, 8, score_shift=0.2), "challenger", "2")], ignore_index=True)
    summary = run(tmp_path, current, challenger=True)
    assert summary.verdict == "drift"
    assert summary.prediction["challenger"].drifted and not summary.prediction["champion"].drifted
    assert (tmp_path / "prediction_drift_challenger.html").exists()


def test_too_few_rows_is_insufficient_data_not_an_error(tmp_path) -> None:
    assert run(tmp_path, live(traffic(50, 7))).verdict == "insufficient_data"


def test_null_and_constant_columns_are_excluded_and_reported(tmp_path) -> None:
    current = live(traffic(3_000, 7)).assign(terminal_risk_7d=np.nan)
    summary = run(tmp_path, current)
    assert summary.excluded["terminal_risk_7d"] == "all values missing in current data"
    assert summary.excluded["is_night"].startswith("clock feature")
    assert "terminal_risk_7d" not in {c.column for c in summary.columns}


def test_missing_features_are_checked_on_their_own(tmp_path) -> None:
    current = live(traffic(3_000, 7))
    current.loc[:400, "features_missing"] = 3  # 13% of answers fell back to defaults
    summary = run(tmp_path, current)
    assert summary.verdict == "warn" and summary.missing_share == pytest.approx(401 / 3_000)


@pytest.mark.parametrize("shift, drifted", [(0.0, False), (0.15, True)])
def test_small_variant_samples_use_a_test_with_a_p_value(tmp_path, shift, drifted) -> None:
    current = pd.concat([live(traffic(2_000, 7)), live(traffic(300, 9, score_shift=shift), "challenger", "2")], ignore_index=True)
    summary = run(tmp_path, current, challenger=True)
    assert summary.prediction["challenger"].method == "ks"
    assert summary.prediction["challenger"].drifted is drifted


def test_the_decision_rate_is_judged_per_variant(tmp_path) -> None:
    current = live(traffic(3_000, 7))
    current["is_fraud_predicted"] = current["score"] >= 0.5
    calm = run(tmp_path, current)
    assert not calm.decision_rate["champion"].drifted and calm.decision_rate["champion"].method == "z"
    flagging = current.assign(is_fraud_predicted=np.random.default_rng(3).uniform(size=len(current)) < 0.08)
    assert run(tmp_path, flagging).decision_rate["champion"].drifted  # the model flags far more than on its reference


@pytest.mark.parametrize("drift, detected", [((), False), (("terminal_wave",), True)])
def test_a_fraud_wave_shows_in_the_labels_and_a_stable_period_does_not(tmp_path, drift, detected) -> None:
    """A wave of compromised terminals barely moves features or scores at first (terminal risk learns
    from labels a week late), so it is caught where it shows: the fraud rate of the labelled traffic."""
    from datetime import date

    from features.offline import read_transactions
    from features.simulator import Drift, SimulationConfig, write_simulation
    from monitoring.drift import rate_drift

    cfg = SimulationConfig(customers=1_000, terminals=2_000, days=50, start_date=date(2025, 4, 1),
                           drift=tuple(Drift(d) for d in drift), drift_start_day=30)
    write_simulation(cfg, tmp_path)
    reference = read_transactions(tmp_path, "timestamp >= TIMESTAMP '2025-04-17' AND timestamp < TIMESTAMP '2025-05-01'")
    labelled = read_transactions(tmp_path, "timestamp >= TIMESTAMP '2025-05-05' AND timestamp < TIMESTAMP '2025-05-12'")
    result = rate_drift(labelled["is_fraud"], reference["is_fraud"], "is_fraud", p_value=0.01)
    assert result.method == "z" and result.drifted is detected


def test_a_rate_test_counts_customers_not_rows() -> None:
    """One card with ten flagged charges in a small canary sample: drift if rows were independent,
    none once each customer counts as one unit; a real change across many customers still shows."""
    import pandas as pd

    from monitoring.drift import rate_drift

    rng = np.random.default_rng(0)
    reference = pd.Series(rng.uniform(size=20_000) < 0.015)
    ref_customers = pd.Series(rng.integers(0, 4_000, 20_000))
    calm = pd.Series(np.r_[rng.uniform(size=362) < 0.015, np.ones(10, dtype=bool)])
    calm_customers = pd.Series(np.r_[rng.integers(0, 80, 362), np.full(10, 999)])
    assert rate_drift(calm, reference, "flagged", 0.01).drifted  # rows as units: a false alarm
    clustered = rate_drift(calm, reference, "flagged", 0.01, calm_customers, ref_customers)
    assert clustered.method == "z, customers as clusters" and not clustered.drifted
    wave = pd.Series(rng.uniform(size=4_000) < 0.05)
    assert rate_drift(wave, reference, "flagged", 0.01, pd.Series(rng.integers(0, 800, 4_000)), ref_customers).drifted


def test_out_of_range_values_and_new_categories_warn(tmp_path) -> None:
    calm = run(tmp_path, live(traffic(3_000, 7)))
    assert not calm.new_values and all(share < 0.01 for share in calm.out_of_range.values())
    current = live(traffic(3_000, 7))
    current.loc[:34, "amount"] = traffic(5_000, 0)["amount"].max() * 1.02  # 1.2% just beyond the reference: too few to move a drift test
    current.loc[:4, "is_night"] = 2.0  # a flag with a value it never had
    summary = run(tmp_path, current)
    assert summary.out_of_range["amount"] >= 35 / 3_000 and not any(c.drifted for c in summary.columns)
    assert summary.new_values == {"is_night": [2.0]}
    assert summary.verdict == "warn"


def test_a_monitor_run_merges_the_finished_days_of_the_prediction_log_before_it_reads(registry_copy) -> None:
    """The merge runs where the log is read, so a deployment compacts without a job of its own."""
    from pipelines.flows import monitor_flow
    from core import predictions
    from tests.conftest import log_parts, log_records

    settings = registry_copy.replace(retrain_on_drift=False)
    log_parts(settings, "2025-07-01", [log_records("a", 3), log_records("b", 2)])
    monitor_flow(settings, "compaction")
    assert [p.name.startswith("part-compacted-") for p in (settings.predictions_dir / "date=2025-07-01").iterdir()] == [True]
    assert sorted(predictions.read(settings)["transaction_id"]) == ["a0", "a1", "a2", "b0", "b1"]


def scored_traffic(n: int, seed: int) -> pd.DataFrame:
    """2% fraud, 40% of it scored far above everything else (what the model declines), the rest
    only a little above legitimate traffic."""
    rng = np.random.default_rng(seed)
    fraud = rng.uniform(size=n) < 0.02
    obvious = fraud & (rng.uniform(size=n) < 0.4)
    score = np.where(obvious, rng.uniform(0.9, 1.0, n), np.where(fraud, rng.beta(3, 7, n), rng.beta(1.5, 10, n)))
    return pd.DataFrame({"score": score, "is_fraud": fraud.astype(int), "amount": rng.gamma(2.0, 25.0, n),
                         "customer_id": rng.integers(0, 2_000, n).astype(str), "timestamp": pd.Timestamp("2025-06-01")})


def test_live_quality_is_judged_against_the_reference_cut_at_the_live_decline_share(tmp_path) -> None:
    """Declined transactions never get a label, and they are the frauds a model catches best: the
    labelled rest of an unchanged model scores far below its test AP. Judged against that, every
    model that declines reads as broken; against its reference cut at the same decline share, an
    unchanged model does not."""
    from sklearn.metrics import average_precision_score

    from monitoring.quality import judge, reference_ap

    reference, today = scored_traffic(40_000, 0), scored_traffic(40_000, 1)
    declined = today["score"] >= today["score"].quantile(0.99)
    logged = today.assign(decision=np.where(declined, "decline", "approve"), shadow=False, variant="champion", model_version="1",
                          is_fraud_predicted=declined)
    labelled = logged[~declined]
    shipped = float(average_precision_score(reference["is_fraud"], reference["score"]))
    comparable = reference_ap(reference, logged)
    live_ap = float(average_precision_score(labelled["is_fraud"], labelled["score"]))
    assert live_ap < 0.5 * shipped, "the censoring alone halves AP: the case this test is about"
    assert abs(comparable - live_ap) < 0.35 * live_ap, "the reference cut the same way reads what live traffic reads"
    judged, _ = judge(labelled, {"champion": ("1", shipped, comparable)}, tmp_path, 5.0, 100, 0.5, 20)
    assert not judged["champion"].dropped and judged["champion"].reference_average_precision == comparable
    # the same model with its obvious frauds gone unflagged is a drop against the same reference
    worse = labelled.assign(score=np.where(labelled["is_fraud"] == 1, labelled["score"] * 0.3, labelled["score"]))
    judged, _ = judge(worse, {"champion": ("1", shipped, comparable)}, tmp_path, 5.0, 100, 0.5, 20)
    assert judged["champion"].dropped


def test_each_rule_is_measured_on_its_hits_active_and_shadow_apart() -> None:
    """Hit rate on the live window; precision, its Wilson interval and the frauds the model's threshold
    missed on the labelled one; shadow scoring's records are not answers and count nowhere."""
    from statsmodels.stats.proportion import proportion_confint

    from monitoring.rules import rule_figures

    rng = np.random.default_rng(5)
    n = 400
    live = pd.DataFrame({"rules": rng.choice(["", "burst", "burst,big"], n, p=[0.8, 0.15, 0.05]),
                         "rules_shadow": rng.choice(["", "watch"], n, p=[0.9, 0.1]), "shadow": rng.random(n) < 0.1})
    labelled = live.assign(is_fraud=rng.random(n) < 0.3, is_fraud_predicted=rng.random(n) < 0.5)
    figures = {(f.rule, f.mode): f for f in rule_figures(live, labelled)}
    assert set(figures) == {("burst", "active"), ("big", "active"), ("watch", "shadow")}
    answered = labelled[~labelled["shadow"]]
    for (rule, mode), f in figures.items():
        column = "rules" if mode == "active" else "rules_shadow"
        hit = answered[column].str.split(",").apply(lambda names: rule in names)
        frauds = int(answered.loc[hit, "is_fraud"].sum())
        assert (f.hits, f.labelled_hits, f.frauds) == (int(hit.sum()), int(hit.sum()), frauds)
        assert f.hit_rate == pytest.approx(hit.mean()) and f.precision == pytest.approx(frauds / hit.sum())
        assert (f.precision_low, f.precision_high) == pytest.approx(proportion_confint(frauds, int(hit.sum()), method="wilson"))
        assert f.frauds_model_missed == int((hit & answered["is_fraud"] & ~answered["is_fraud_predicted"]).sum())


def test_rule_figures_reach_metrics_and_a_rule_without_labels_exports_no_precision(tmp_path) -> None:
    from dataclasses import asdict

    from prometheus_client import CollectorRegistry

    from core.monitor_metrics import LATEST, MonitoringCollector
    from monitoring.rules import rule_figures

    live = pd.DataFrame({"rules": ["burst", "", "burst"], "rules_shadow": ["", "watch", ""], "shadow": [False] * 3})
    labelled = live.iloc[[0]].assign(is_fraud=[True], is_fraud_predicted=[False])
    run = {"drift": {"verdict": "ok", "drifted_share": 0.0, "missing_share": 0.0, "prediction": {}, "decision_rate": {}},
           "quality": {}, "label_drift": None, "retrain": None, "rules": [asdict(f) for f in rule_figures(live, labelled)]}
    (tmp_path / LATEST).write_text(json.dumps(run))
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(tmp_path))
    value = lambda name, rule, mode: registry.get_sample_value(name, {"rule": rule, "mode": mode})  # noqa: E731
    assert value("fraudops_rule_hit_rate", "burst", "active") == pytest.approx(2 / 3)
    assert value("fraudops_rule_precision", "burst", "active") == 1.0 and value("fraudops_rule_frauds_model_missed", "burst", "active") == 1.0
    assert value("fraudops_rule_hit_rate", "watch", "shadow") == pytest.approx(1 / 3)
    assert value("fraudops_rule_precision", "watch", "shadow") is None  # no labelled hit yet
