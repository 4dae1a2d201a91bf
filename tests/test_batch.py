"""Batch scoring: the training features as of each transaction, the registry's model, one file written
whole or not at all, the same scores on a Dask cluster, and the nightly flow."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from core import registry
from features.offline import transactions_between
from pipelines.batch import BatchError, read_input, score
from training.windows import Windows

COLUMNS = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]


def held_out_window(settings) -> pd.DataFrame:
    windows = Windows.from_settings(settings)
    return transactions_between(settings.transactions_dir, windows.test_start, windows.test_end)


def shipped_reference(settings) -> pd.DataFrame:
    """The champion's scores of its test window, as training computed them and logged them."""
    client = registry.connect(settings)
    run = registry.logged_run(client, client.get_model_version_by_alias(settings.stores.model_name, registry.CHAMPION))
    return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reference/reference.parquet"))


def test_a_csv_scored_in_batch_gives_the_scores_training_logged_in_input_order(registry_copy, tmp_path) -> None:
    tx = held_out_window(registry_copy)
    shuffled = tx[COLUMNS].sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled.to_csv(tmp_path / "in.csv", index=False)
    result = score(registry_copy, read_input(tmp_path / "in.csv"), tmp_path / "out" / "scores.parquet", explain=True)
    out = pd.read_parquet(result.path)
    assert list(out["transaction_id"]) == list(shuffled["transaction_id"].astype(str))  # the input's order
    reference = shipped_reference(registry_copy)
    expected = pd.Series(reference["score"].to_numpy(), index=transactions_between(
        registry_copy.transactions_dir, reference["event_timestamp"].min())["transaction_id"].head(len(reference)).astype(str))
    np.testing.assert_allclose(out["score"].to_numpy(), expected.loc[out["transaction_id"]].to_numpy(), rtol=1e-9)
    assert (out["is_fraud_predicted"] == (out["score"] >= out["threshold"])).all() and out["is_fraud_predicted"].any()
    assert set(out["model_version"]) == {result.version} and set(out["alias"]) == {"champion"}
    # reason codes: up to three distinct features of the model that raised the score, the largest first
    features = json.loads(registry.logged_run(registry.connect(registry_copy), registry.connect(registry_copy).get_model_version_by_alias(
        registry_copy.stores.model_name, "champion")).data.tags["features"])
    reasons = out[["reason_1", "reason_2", "reason_3"]]
    contributions = out[["reason_1_contribution", "reason_2_contribution", "reason_3_contribution"]].to_numpy()
    assert (reasons.isin(features) | reasons.isna()).all().all() and (reasons.nunique(axis=1) == reasons.notna().sum(axis=1)).all()
    assert (np.nan_to_num(contributions, nan=1.0) > 0).all() and (reasons.isna().to_numpy() == np.isnan(contributions)).all()
    assert (reasons.notna().sum(axis=1) == 3).any()  # the flagged rows have three
    assert (np.diff(np.nan_to_num(contributions, nan=0.0), axis=1) <= 0).all()


def test_reason_contributions_add_up_to_the_score(registry_copy) -> None:
    """LightGBM's contributions plus its bias are the raw score: the reasons are the model's own."""
    from model.loaded import fetch

    model = fetch(registry_copy, "champion")
    assert model is not None
    rows = np.random.default_rng(0).uniform(0, 50, size=(20, len(model.features)))
    contributions = np.asarray(model.booster.predict(rows, pred_contrib=True))
    np.testing.assert_allclose(contributions.sum(axis=1), np.asarray(model.booster.predict(rows, raw_score=True)), rtol=1e-9)
    order, top = model.reasons(rows)
    np.testing.assert_allclose(top[:, 0], contributions[:, :-1].max(axis=1))


def test_a_bad_row_names_its_row_and_nothing_is_written(registry_copy, tmp_path) -> None:
    tx = held_out_window(registry_copy)[COLUMNS].head(10).copy()
    tx["amount"] = tx["amount"].astype(object)
    tx.loc[3, "amount"] = "-5"
    tx.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(BatchError, match=r"column amount: negative amount at rows 3"):
        read_input(tmp_path / "bad.csv")
    unknown = held_out_window(registry_copy)[COLUMNS].head(10).copy()
    unknown.loc[[2, 7], "transaction_id"] = ["never-ingested-1", "never-ingested-2"]
    out = tmp_path / "out" / "scores.parquet"
    with pytest.raises(BatchError, match=r"rows 2, 7: no feature row"):
        score(registry_copy, unknown, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no file, no partial file
    with pytest.raises(BatchError, match="no model behind the alias 'nobody'"):
        score(registry_copy, held_out_window(registry_copy)[COLUMNS].head(3), out, alias="nobody")


def test_the_cli_scores_a_file_and_refuses_a_bad_one_with_exit_2(registry_copy, tmp_path) -> None:
    from pipelines.cli import app
    from pipelines.demo import settings_env

    env = {k: v for k, v in settings_env(registry_copy).items() if k.startswith("FRAUDOPS_")}
    held_out_window(registry_copy)[COLUMNS].head(50).to_parquet(tmp_path / "in.parquet")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "s.parquet")], env=env)
    assert result.exit_code == 0, result.output
    assert "scored 50 transactions with champion" in result.output and len(pd.read_parquet(tmp_path / "s.parquet")) == 50
    (tmp_path / "in.csv").write_text("transaction_id,timestamp\nx,2025-01-01\n")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "in.csv"), "--out", str(tmp_path / "t.parquet")], env=env)
    message = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    assert result.exit_code == 2 and "missing column(s) customer_id, terminal_id, amount" in message
    assert not (tmp_path / "t.parquet").exists()


def test_the_dask_job_gives_the_single_machine_scores(registry_copy, tmp_path) -> None:
    from distributed import Client, LocalCluster

    tx = held_out_window(registry_copy)[COLUMNS]
    here = score(registry_copy, tx, tmp_path / "here.parquet", explain=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        there = score(registry_copy, tx, tmp_path / "there.parquet", explain=True, client=client)
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "score_part" in ran  # the parts ran on the cluster (dask names a prefix without its underscore)
    a, b = (pd.read_parquet(r.path).drop(columns="scored_at") for r in (here, there))
    pd.testing.assert_frame_equal(b, a)


def test_the_nightly_flow_scores_the_newest_day(registry_copy) -> None:
    from features.store import latest_transaction
    from pipelines.flows import score_flow

    result = score_flow(registry_copy)
    day = latest_transaction(registry_copy).date()
    assert result.path == registry_copy.scores_dir / f"{day}.parquet"
    out = pd.read_parquet(result.path)
    assert len(out) == result.rows > 0 and (out["timestamp"].dt.date == day).all()
    assert "reason_1" in out


def test_decisions_follow_the_bands_training_chose_and_registered(registry_copy, tmp_path) -> None:
    """The bands are chosen on validation, logged with the model and applied by the batch path: every
    row's decision is its score's band, and the review band keeps to the daily capacity on test."""
    from model.decisions import DECISIONS, Bands
    from model.loaded import fetch

    client = registry.connect(registry_copy)
    version = client.get_model_version_by_alias(registry_copy.stores.model_name, "champion")
    run = registry.logged_run(client, version)
    meta = mlflow.models.get_model_info(f"models:/{registry_copy.stores.model_name}/{version.version}").metadata or {}
    bands = Bands(*meta["bands"])
    assert bands.step_up <= bands.review <= bands.decline
    assert run.data.metrics["test_reviews_per_day"] <= registry_copy.costs.top_k * 1.5  # chosen on validation, judged on test
    model = fetch(registry_copy, "champion")
    assert model is not None and model.bands == bands
    out = pd.read_parquet(score(registry_copy, held_out_window(registry_copy)[COLUMNS], tmp_path / "s.parquet").path)
    assert list(out["decision"]) == [DECISIONS[i] for i in bands.decide(out["score"].to_numpy())]


def test_batch_answers_logged_through_the_apis_sink_are_what_the_monitor_judges(registry_copy) -> None:
    """The concept-drift bench logs batch-scored days instead of replaying them over HTTP: the log
    must hold what the API's records hold, and the monitor must judge it like the API's."""
    from datetime import timedelta

    from core import predictions
    from model.loaded import fetch
    from pipelines.bench.concept_section import log_scored
    from pipelines.flows import monitor_flow

    settings = registry_copy.replace(retrain_on_drift=False)
    start = Windows.from_settings(settings).test_start.to_pydatetime()
    scored = log_scored(settings, start, start + timedelta(days=2))
    logged = predictions.read(settings, start, start + timedelta(days=2))
    model = fetch(settings, "champion")
    assert model is not None and len(logged) == len(scored) > 0
    assert set(model.features) <= set(logged.columns) and set(predictions.COLUMNS) <= set(logged.columns)
    assert scored["is_fraud"].isin([0, 1]).all(), "each answer carries the simulator's truth for the bench"
    outcome = monitor_flow(settings, "batch-logged", start, start + timedelta(days=2))
    assert outcome.drift.current_rows == len(scored) and "champion" in outcome.drift.prediction


def test_batch_decisions_take_the_rules_file_as_the_api_does(registry_copy, tmp_path) -> None:
    """The rules act after the band on `fraudops score` too, with the answer's precedence; a bad file
    stops the job before any work, with exit 2 and the rule named, and writes nothing."""
    from model.decisions import DECISIONS
    from model.loaded import fetch
    from pipelines.cli import app
    from pipelines.demo import settings_env

    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "big"\nwhen = "amount > 100"\naction = "decline"\n'
                    '[[rule]]\nname = "repeat-card"\nwhen = "customer_tx_count_1h >= 2"\naction = "review"\nmode = "shadow"\n')
    settings = registry_copy.replace(rules_file=path)
    out = pd.read_parquet(score(settings, held_out_window(settings)[COLUMNS], tmp_path / "s.parquet").path)
    model = fetch(settings, "champion")
    assert model is not None
    band = np.asarray(DECISIONS)[model.bands.decide(out["score"].to_numpy())]
    big = (out["amount"] > 100).to_numpy()
    assert big.any() and (~big).any()
    assert (out["decision"][big] == "decline").all() and (out["rules"][big] == "big").all()
    assert (out["decision"][~big] == band[~big]).all() and (out["rules"][~big] == "").all()
    assert set(out["rules_shadow"]) == {"", "repeat-card"}  # named where it fired, acted nowhere

    path.write_text('[[rule]]\nname = "big"\nwhen = "amount > 100"\naction = "block"\n')
    env = {k: v for k, v in settings_env(settings).items() if k.startswith("FRAUDOPS_")}  # FRAUDOPS_RULES_FILE among them
    held_out_window(settings)[COLUMNS].head(5).to_parquet(tmp_path / "in.parquet")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "t.parquet")], env=env)
    assert result.exit_code == 2 and "rule 'big': action 'block'" in " ".join(result.output.split())
    assert not (tmp_path / "t.parquet").exists()
