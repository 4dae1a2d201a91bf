"""Bring your own data: a foreign layout written by the test, ingested, checked, trained on."""

from __future__ import annotations

import json
import pickle
from datetime import date

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.ingest import PRESETS, ingest, parse_columns
from features.schema import SchemaError
from features.simulator import SimulationConfig, simulate_chunks
from tests.conftest import tiny_settings

FOREIGN = {"txn": "transaction_id", "when": "timestamp", "card": "customer_id", "shop": "terminal_id", "value": "amount", "label": "is_fraud"}


def foreign_csv(frame: pd.DataFrame, path) -> None:
    """Our raw schema in somebody else's layout: renamed columns, prefixed string ids, CSV."""
    out = frame.rename(columns={v: k for k, v in FOREIGN.items()}).drop(columns="fraud_scenario")
    out["card"] = "CARD-" + out["card"]
    out["shop"] = "T" + out["shop"]
    out.to_csv(path, index=False)


@pytest.fixture
def simulated() -> pd.DataFrame:
    return pd.concat(simulate_chunks(SimulationConfig(customers=100, terminals=200, days=20, start_date=date(2025, 1, 1))), ignore_index=True)


def parts(directory) -> list:
    return sorted(directory.glob("*.parquet")) if directory.exists() else []


def test_ingest_is_idempotent_and_incremental(tmp_path, simulated) -> None:
    store = tmp_path / "store"
    first, later = simulated[simulated["timestamp"] < "2025-01-11"], simulated[simulated["timestamp"] >= "2025-01-06"]
    foreign_csv(first, tmp_path / "jan-1-10.csv")
    foreign_csv(later, tmp_path / "jan-6-20.csv")  # overlaps five days with the first export
    mapping = parse_columns(",".join(f"{k}={v}" for k, v in FOREIGN.items()))

    report = ingest([tmp_path / "jan-1-10.csv"], store, mapping)
    assert report.rows_added == len(first)
    again = ingest([tmp_path / "jan-1-10.csv"], store, mapping)
    assert again.rows_added == 0 and "already ingested" in again.files[0].note
    report = ingest([tmp_path / "jan-6-20.csv"], store, mapping)
    assert report.rows_added == int((simulated["timestamp"] >= "2025-01-11").sum())  # only the new days

    stored = pd.concat(pd.read_parquet(p) for p in parts(store))
    assert len(stored) == len(simulated) and stored["transaction_id"].is_unique
    assert stored["customer_id"].str.startswith("CARD-").all()


def test_handbook_preset_reads_the_published_column_names(tmp_path, simulated) -> None:
    handbook = simulated.rename(columns={v: k for k, v in PRESETS["handbook"].items()})
    handbook["TRANSACTION_ID"] = handbook["TRANSACTION_ID"].astype(int)  # ids may arrive as integers
    handbook.to_parquet(tmp_path / "handbook.parquet")
    report = ingest([tmp_path], tmp_path / "store", parse_columns("handbook"))
    assert report.rows_added == len(simulated)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda f: f.drop(columns="value"), "missing column(s) amount"),
        (lambda f: f.assign(value=f["value"].where(f.index != 3, "-4.0")), "column amount: negative amount at rows 3"),
        (lambda f: f.assign(value=f["value"].where(f.index != 2, "ten")), "column amount: not a finite number at rows 2"),
        (lambda f: f.assign(when=f["when"].where(f.index != 1, "31/31/2025")), "column timestamp: unparseable timestamp at rows 1"),
        (lambda f: f.assign(txn=f["txn"].where(f.index != 4, f["txn"].iloc[0])), "column transaction_id: duplicate id at rows 0, 4"),
        (lambda f: f.assign(label=f["label"].where(f.index != 0, "yes")), "column is_fraud: must be one of [0, 1] at rows 0"),
    ],
)
def test_bad_file_is_rejected_whole_naming_file_column_rows(tmp_path, simulated, breakage, expected) -> None:
    good = tmp_path / "good.csv"
    foreign_csv(simulated.head(50), good)
    bad = tmp_path / "bad.csv"
    breakage(pd.read_csv(good, dtype=str)).to_csv(bad, index=False)
    store = tmp_path / "store"
    with pytest.raises(SchemaError) as error:
        ingest([bad], store, FOREIGN)
    assert expected in str(error.value) and "bad.csv" in str(error.value)
    assert parts(store) == []


def test_pickles_are_never_loaded(tmp_path) -> None:
    target = tmp_path / "evil.pkl"
    target.write_bytes(pickle.dumps({"not": "data"}))
    with pytest.raises(SchemaError, match="not a Parquet or CSV file"):
        ingest([target], tmp_path / "store", {})


def test_cli_ingest_then_train_reports_every_model(tmp_path) -> None:
    """The whole path on ingested data: ingest, labels, features, train with the window on the command
    line. The export's label column stays with the transactions; training reads only the label store."""
    from pipelines.cli import app
    from pipelines.demo import settings_env

    settings = tiny_settings(tmp_path / "state")
    frame = pd.concat(simulate_chunks(SimulationConfig(customers=300, terminals=600, days=50, start_date=date(2024, 2, 1))), ignore_index=True)
    foreign_csv(frame, tmp_path / "export.csv")
    env = {k: v for k, v in settings_env(settings).items() if k.startswith("FRAUDOPS_")}
    runner = CliRunner()
    mapping = ",".join(f"{k}={v}" for k, v in FOREIGN.items())
    result = runner.invoke(app, ["ingest", str(tmp_path / "export.csv"), "--columns", mapping], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ingest", str(tmp_path / "export.csv"), "--columns", mapping], env=env)
    assert "0 transactions added" in result.output
    out = tmp_path / "metrics.json"
    train = ["train", "--train-start", "2024-02-11", "--train-days", "14", "--delay-days", "7", "--test-days", "7", "--scale-pos-weight", "1",
             "--json", str(out)]
    assert runner.invoke(app, ["features", "apply"], env=env).exit_code == 0
    unlabelled = runner.invoke(app, train, env=env)
    assert unlabelled.exit_code != 0 and "0 frauds in the train window" in str(unlabelled.exception)
    result = runner.invoke(app, ["labels", str(tmp_path / "export.csv"), "--columns", mapping, "--source", "chargeback"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(frame):,} recorded" in result.output  # every verdict, the legitimate ones too
    assert runner.invoke(app, ["features", "apply"], env=env).exit_code == 0  # terminal risk from the verdicts now stored
    result = runner.invoke(app, train, env=env)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["models"]
    assert set(metrics) == {"lightgbm", "logistic_regression", "amount_rule"}
    for model in metrics.values():
        assert 0.0 <= model["roc_auc"] <= 1.0 and 0.0 <= model["average_precision"] <= 1.0
        assert model["card_precision_at_100"] is not None and model["test_rows"] > 0 and model["test_frauds"] > 0
