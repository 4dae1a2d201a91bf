"""Quality by segment (monitoring/segments.py): the band the model stopped catching is the one that
raises the alarm, a band with too few labelled frauds is never judged, and the AP interval holds
what it claims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sklearn.metrics import average_precision_score

from core.monitor_metrics import LATEST, MonitoringCollector
from monitoring.segments import CONFIDENCE, ap_interval, segment_quality


def traffic(n: int, seed: int, blind_from: float | None = None, blind_to: float | None = None) -> pd.DataFrame:
    """Transactions with a model that separates frauds well, except (when given) for the frauds with
    amounts in [blind_from, blind_to), which it scores like genuine ones."""
    rng = np.random.default_rng(seed)
    amount = rng.uniform(0, 300, n)
    is_fraud = (rng.random(n) < 0.08).astype("int64")
    score = np.clip(0.6 * is_fraud + rng.normal(0.2, 0.12, n), 0, 1)
    if blind_from is not None and blind_to is not None:
        blind = (is_fraud == 1) & (amount >= blind_from) & (amount < blind_to)
        score[blind] = np.clip(rng.normal(0.2, 0.12, int(blind.sum())), 0, 1)
    return pd.DataFrame({"amount": amount, "customer_tx_count_30d": rng.integers(1, 40, n).astype("float64"),
                         "terminal_risk_30d": rng.choice([0.0, 0.02, 0.2], n), "is_fraud": is_fraud, "score": score,
                         "decision": np.where(score > 0.55, "review", "approve")})


def test_only_the_band_the_model_stopped_catching_raises_the_alarm() -> None:
    reference = traffic(8_000, seed=1)
    live = traffic(8_000, seed=2, blind_from=20.0, blind_to=100.0)
    bands = {(g.segment, g.band): g for g in segment_quality(live, reference, min_frauds=20, max_drop=0.5)}
    assert {band for band, g in bands.items() if g.alarm} == {("amount", "20-100")}
    broken = bands[("amount", "20-100")]
    assert broken.judged and broken.average_precision < 0.5 * broken.reference_average_precision
    assert broken.average_precision_high < broken.reference_average_precision
    assert broken.recall_at_review < 0.2 < bands[("amount", "100-220")].recall_at_review
    assert {segment for segment, _ in bands} == {"amount", "card age", "terminal risk"}
    # the same world without the blind spot: nothing to alarm about
    assert not any(g.alarm for g in segment_quality(traffic(8_000, seed=3), reference, min_frauds=20, max_drop=0.5))


def test_a_band_with_too_few_labelled_frauds_is_reported_but_never_judged() -> None:
    reference = traffic(8_000, seed=1)
    live = traffic(600, seed=4, blind_from=0.0, blind_to=300.0)  # blind everywhere, on too few frauds to say so
    found = segment_quality(live, reference, min_frauds=60, max_drop=0.5)
    assert found and all(g.frauds < 60 and not g.judged and not g.alarm for g in found)


def test_the_ap_interval_covers_the_population_ap_about_as_often_as_it_claims() -> None:
    population = traffic(200_000, seed=5)
    truth = average_precision_score(population["is_fraud"], population["score"])
    samples = 20
    covered = 0
    for seed in range(samples):
        sample = population.sample(2_000, random_state=seed)
        low, high = ap_interval(sample["is_fraud"].to_numpy(), sample["score"].to_numpy(), resample_seed=seed)
        covered += low <= truth <= high
    assert covered >= samples * CONFIDENCE - 4  # 95% claimed; 16 of 20 leaves room for chance, not for a broken interval


def test_metrics_export_each_band_and_its_alarm(tmp_path: Path) -> None:
    reference = traffic(8_000, seed=1)
    segments = segment_quality(traffic(8_000, seed=2, blind_from=20.0, blind_to=100.0), reference, min_frauds=20, max_drop=0.5)
    run = {"drift": {"verdict": "ok", "drifted_share": 0.0, "missing_share": 0.0, "prediction": {}, "decision_rate": {}},
           "quality": {}, "label_drift": None, "retrain": None, "segments": [g.__dict__ for g in segments]}
    (tmp_path / LATEST).write_text(json.dumps(run))
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(tmp_path))
    text = generate_latest(registry).decode()
    assert 'fraudops_segment_quality_alarm{band="20-100",segment="amount"} 1.0' in text
    assert 'fraudops_segment_quality_alarm{band="new",segment="card age"} 0.0' in text
    del run["segments"]  # a run written before segments were judged
    (tmp_path / LATEST).write_text(json.dumps(run))
    assert "fraudops_segment_quality_alarm{" not in generate_latest(registry).decode()


def test_a_monitor_run_judges_the_champion_by_segment_and_estimates_its_ap_on_its_logged_traffic(registry_copy) -> None:
    """The week after the test window scored into the prediction log as the API logs it, its
    chargebacks delivered, then the monitor as deployed: every segment has its bands in the run, and
    the AP its scores promised stands beside the AP its labels gave."""
    from datetime import timedelta

    from features.simulator import deliver_chargebacks
    from pipelines.bench.concept_section import log_scored
    from pipelines.flows import monitor_flow
    from training.windows import Windows

    settings = registry_copy.replace(retrain_on_drift=False)
    start = Windows.from_settings(settings).test_end
    week, delay = timedelta(days=7), timedelta(days=settings.features.label_delay_days)
    log_scored(settings, start, start + week)
    deliver_chargebacks(settings, start + week + delay)
    outcome = monitor_flow(settings, "segments", start + week, start + week + delay)
    assert "champion" in outcome.quality
    assert {g.segment for g in outcome.segments} == {"amount", "card age", "terminal risk"}
    for segment in ("amount", "card age", "terminal risk"):  # the bands of a segment split the judged traffic
        assert sum(g.rows for g in outcome.segments if g.segment == segment) == outcome.quality["champion"].labelled_rows
    assert all(g.judged == (g.frauds >= settings.monitoring.min_labelled_frauds and g.reference_frauds >= settings.monitoring.min_labelled_frauds)
               for g in outcome.segments if g.average_precision_high == g.average_precision_high)
    saved = json.loads((settings.reports_dir / "segments" / "monitor.json").read_text())
    assert len(saved["segments"]) == len(outcome.segments)
    # and the estimate from the scores, beside what the labels then said, on one plot (monitoring/estimate.py)
    assert outcome.estimate is not None and outcome.estimate.matured.rows == outcome.quality["champion"].labelled_rows
    assert outcome.estimate.realized_average_precision == pytest.approx(outcome.quality["champion"].average_precision)
    assert outcome.estimate.plot and Path(outcome.estimate.plot).stat().st_size > 10_000
    assert saved["estimate"]["matured"]["rows"] == outcome.estimate.matured.rows
