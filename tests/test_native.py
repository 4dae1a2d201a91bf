"""Each private-API door of the serving process (serving/native) against the public API it stands in
for, on the same data, with the library the door was written for and with its fallback: an upgrade
that moves a private name fails here, or logs a warning and answers through the public API."""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

import model.native.lightgbm_row as lightgbm_row
import serving.native.prometheus_bulk as prometheus_bulk
from core.native import written_for
from serving.native import fastapi_route


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 + rng.normal(size=2_000) > 1).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 1}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=30)


def rows() -> np.ndarray:
    out = np.random.default_rng(1).normal(size=(200, 6))
    out[::7, 2] = np.nan  # missing values take the trees' default branches on both paths
    return out


def test_the_single_row_fast_path_scores_as_booster_predict(booster: lgb.Booster) -> None:
    fast = lightgbm_row.row_predictor(booster, 6)
    assert isinstance(fast, lightgbm_row.FastRowPredictor)
    data = rows()
    np.testing.assert_allclose([fast(row) for row in data], booster.predict(data), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expected 6 features, got 5"):
        fast(data[0, :5])


def test_another_lightgbm_gets_booster_predict_and_a_warning(booster: lgb.Booster, monkeypatch, caplog) -> None:
    monkeypatch.setattr(lightgbm_row, "LIGHTGBM", "0.0.1")
    with caplog.at_level(logging.WARNING, logger="fraudops.native"):
        fallback = lightgbm_row.row_predictor(booster, 6)
    assert not isinstance(fallback, lightgbm_row.FastRowPredictor)
    assert "written for 0.0.1" in caplog.text
    data = rows()
    np.testing.assert_allclose([fallback(row) for row in data], booster.predict(data), rtol=0, atol=1e-12)


@pytest.mark.parametrize("private", [True, False], ids=["private", "fallback"])
def test_a_batch_observed_at_once_reads_as_observed_one_by_one(private: bool, monkeypatch) -> None:
    """Values on the bucket bounds, past the last bound and NaN included."""
    monkeypatch.setattr(prometheus_bulk, "_PRIVATE_OK", private)
    values = [0.0, 0.01, 0.0100001, 0.05, 0.2, 0.21, 0.95, 0.99, 3.0, float("nan"), 0.01]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    for registry, observe in ((one_by_one, lambda h: [h.observe(v) for v in values]),
                              (at_once, lambda h: prometheus_bulk.observe_many(h, values))):
        observe(Histogram("scores", "s", ["variant"], registry=registry, buckets=(0.01, 0.05, 0.2, 0.95)).labels("champion"))
    expected = [line for line in generate_latest(one_by_one).decode().splitlines() if "_created" not in line]
    assert [line for line in generate_latest(at_once).decode().splitlines() if "_created" not in line] == expected
    assert 'scores_bucket{le="0.01",variant="champion"} 3.0' in expected  # the bounds are inclusive, as observe has them


def test_the_route_door_opens_only_on_the_fastapi_it_was_written_for(monkeypatch, caplog) -> None:
    assert fastapi_route._door() is not None  # the pinned FastAPI still has it (the OpenTelemetry test uses it)
    monkeypatch.setattr(fastapi_route, "FASTAPI", "0.0.1")
    with caplog.at_level(logging.WARNING, logger="fraudops.native"):
        assert fastapi_route._door() is None
    assert "fastapi" in caplog.text


def test_every_door_was_written_for_the_installed_pins() -> None:
    """The pins in requirements.lock and the versions the doors name move together."""
    from serving import workers

    for package, pinned in (("lightgbm", lightgbm_row.LIGHTGBM), ("prometheus_client", prometheus_bulk.PROMETHEUS_CLIENT),
                            ("fastapi", fastapi_route.FASTAPI), ("uvicorn", workers.UVICORN)):
        assert written_for(package, pinned), f"{package}: the door names {pinned}; check it against the installed version"
