"""The newest monitor run as Prometheus metrics, for dashboards and alert rules.

The monitor is a batch job and Prometheus scrapes services, so the job writes its outcome to
`reports/latest.json` (whole, by rename) and the API's /metrics reads it at scrape time through this
collector: no push gateway, and the figures are exactly those of the last report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATEST = "latest.json"
VERDICTS = ("ok", "warn", "drift", "insufficient_data")


class MonitoringCollector(Collector):
    def __init__(self, reports_dir: Path) -> None:
        self.path = reports_dir / LATEST

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            run = json.loads(self.path.read_text())
            stamp = self.path.stat().st_mtime
        except (OSError, ValueError):  # no monitor run yet: no monitoring metrics, not an error
            return
        drift = run["drift"]
        yield GaugeMetricFamily("fraudops_monitor_last_run_timestamp_seconds", "When the newest monitor run finished", value=stamp)
        verdict = GaugeMetricFamily("fraudops_drift_verdict", "1 for the newest run's verdict", labels=["verdict"])
        for name in VERDICTS:
            verdict.add_metric([name], 1.0 if drift["verdict"] == name else 0.0)
        yield verdict
        yield GaugeMetricFamily("fraudops_drifted_feature_share", "Share of features drifted against the champion's reference", value=drift["drifted_share"])
        yield GaugeMetricFamily("fraudops_missing_feature_share", "Share of answers with defaulted features", value=drift["missing_share"])
        for key, name, text in (("prediction", "fraudops_score_drifted", "Score distribution drifted, per variant"),
                                ("decision_rate", "fraudops_decision_rate_drifted", "Share flagged drifted, per variant")):
            family = GaugeMetricFamily(name, text, labels=["variant"])
            for variant, column in drift[key].items():
                family.add_metric([variant], 1.0 if column["drifted"] else 0.0)
            yield family
        quality = GaugeMetricFamily("fraudops_live_average_precision", "AP on predictions whose labels arrived, per variant", labels=["variant"])
        shipped = GaugeMetricFamily("fraudops_shipped_average_precision", "AP on the test window when registered, per variant", labels=["variant"])
        reference = GaugeMetricFamily("fraudops_reference_average_precision",
                                      "AP of the model's reference traffic cut at the live decline share: what live AP is judged against", labels=["variant"])
        for variant, q in run["quality"].items():
            quality.add_metric([variant], q["average_precision"])
            shipped.add_metric([variant], q["shipped_average_precision"])
            reference.add_metric([variant], q["reference_average_precision"])
        yield quality
        yield shipped
        yield reference
        estimate = run.get("estimate")  # a run written before estimates were made has none
        if estimate is not None and estimate["live"]["rows"]:
            yield GaugeMetricFamily("fraudops_estimated_average_precision",
                                    "The champion's AP estimated from its calibrated scores on the newest window, before its labels", value=estimate["live"]["average_precision"])
        segment_ap = GaugeMetricFamily("fraudops_segment_average_precision", "The champion's live AP in one band of one segment",
                                        labels=["segment", "band"])
        segment_frauds = GaugeMetricFamily("fraudops_segment_labelled_frauds", "Labelled frauds in one band of one segment", labels=["segment", "band"])
        segment_alarm = GaugeMetricFamily("fraudops_segment_quality_alarm",
                                          "1 where a band's live AP fell below (1 - max_quality_drop) of the same band's reference AP, its interval wholly below that AP", labels=["segment", "band"])
        for g in run.get("segments", []):  # a run written before segments were judged has none
            segment_ap.add_metric([g["segment"], g["band"]], g["average_precision"])
            segment_frauds.add_metric([g["segment"], g["band"]], g["frauds"])
            segment_alarm.add_metric([g["segment"], g["band"]], 1.0 if g["alarm"] else 0.0)
        yield segment_ap
        yield segment_frauds
        yield segment_alarm
        yield from _rules(run.get("rules", []))  # a run written before rules were measured has none
        if run["label_drift"] is not None:
            yield GaugeMetricFamily("fraudops_label_drifted", "Fraud rate of labelled traffic drifted", value=1.0 if run["label_drift"]["drifted"] else 0.0)
        yield GaugeMetricFamily("fraudops_retrain_triggered", "The newest run triggered a retrain", value=0.0 if run["retrain"] is None else 1.0)


def _rules(rules: list[dict[str, object]]) -> Iterator[GaugeMetricFamily]:
    """Each rule's figures (monitoring/rules.py), by rule and mode; a precision with no labelled hit
    yet is left out rather than exported as NaN."""
    families = {key: GaugeMetricFamily(name, text, labels=["rule", "mode"]) for key, name, text in (
        ("hit_rate", "fraudops_rule_hit_rate", "Share of the newest window's answers on which the rule fired"),
        ("labelled_hits", "fraudops_rule_labelled_hits", "The rule's hits in the matured window that have a verdict"),
        ("precision", "fraudops_rule_precision", "Frauds among the rule's labelled hits"),
        ("frauds_model_missed", "fraudops_rule_frauds_model_missed", "Labelled frauds the rule hit whose score was below the model's threshold"))}
    for rule in rules:
        for key, family in families.items():
            value = float(rule[key])  # type: ignore[arg-type]
            if value == value:
                family.add_metric([str(rule["rule"]), str(rule["mode"])], value)
    yield from families.values()
