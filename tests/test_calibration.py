"""The served score is a probability: Platt scaling recovers a known distortion, keeps the ranking,
and the loaded model serves the calibrated score on both of its paths (batch and one row)."""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score

from model.calibration import IDENTITY, Calibration, expected_calibration_error
from model.decisions import Bands
from model.loaded import LoadedModel


def distorted(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities near 1% fraud, and a score that is their log-odds
    doubled and shifted up by 3, as an over-confident model trained with frauds weighted up is."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-5.0, 1.5, rows)
    truth = expit(z)
    return (rng.random(rows) < truth).astype(int), truth, expit(2.0 * z + 3.0)


def test_platt_scaling_recovers_a_known_distortion_and_keeps_the_order() -> None:
    labels, _, raw = distorted(200_000, seed=1)
    fitted = Calibration.fit(raw, labels)
    assert fitted.slope == pytest.approx(0.5, abs=0.03) and fitted.intercept == pytest.approx(-1.5, abs=0.15), fitted
    test_labels, truth, test_raw = distorted(100_000, seed=2)
    served = fitted.apply(test_raw)
    assert np.abs(served - truth).mean() < 0.001 and np.abs(served - truth).max() < 0.05
    assert expected_calibration_error(test_labels, served) < 0.2 * expected_calibration_error(test_labels, test_raw)
    assert average_precision_score(test_labels, served) == pytest.approx(average_precision_score(test_labels, test_raw), abs=1e-12)
    assert [fitted.one(float(x)) for x in test_raw[:100]] == pytest.approx(served[:100].tolist(), rel=1e-12)


def test_the_expected_calibration_error_of_true_probabilities_is_small_and_of_a_shifted_one_is_the_shift() -> None:
    labels, truth, _ = distorted(400_000, seed=3)
    assert expected_calibration_error(labels, truth) < 0.001
    shifted = np.clip(truth + 0.05, 0, 1)
    assert expected_calibration_error(labels, shifted) == pytest.approx(0.05, abs=0.002)


def test_calibration_refuses_rows_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="both frauds and legitimate"):
        Calibration.fit(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="not positive"):
        Calibration.fit(np.array([0.1, 0.2, 0.3, 0.4] * 50), np.array([1, 1, 0, 0] * 50))


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(2_000, 3))
    labels = (rng.random(2_000) < expit(2 * rows[:, 0] - 3)).astype(int)
    return lgb.train({"objective": "binary", "num_leaves": 4, "verbosity": -1, "num_threads": 1}, lgb.Dataset(rows, labels), 20)


def test_the_loaded_model_serves_the_calibrated_score_on_both_paths_and_keeps_it_when_pickled(booster: lgb.Booster) -> None:
    calibration = Calibration(0.7, -0.4)
    meta = {"threshold": 0.5, "bands": [0.1, 0.2, 0.3], "features": ["a", "b", "c"], "calibration": calibration.params()}
    model = LoadedModel.from_meta("champion", "3", booster, meta, "registry")
    rows = np.random.default_rng(5).normal(size=(50, 3))
    raw = np.asarray(booster.predict(rows))
    assert model.score(rows) == pytest.approx(calibration.apply(raw), rel=1e-12)
    assert [model.score_one(row) for row in rows] == pytest.approx(model.score(rows).tolist(), rel=1e-9)
    again = pickle.loads(pickle.dumps(model))
    assert again.calibration == calibration and again.score_one(rows[0]) == pytest.approx(model.score_one(rows[0]), rel=1e-12)
    assert LoadedModel.from_meta("champion", "3", booster, meta, "cache").meta()["calibration"] == calibration.params()


def test_a_version_logged_before_calibration_serves_its_raw_score(booster: lgb.Booster) -> None:
    model = LoadedModel.from_meta("champion", "1", booster, {"threshold": 0.5, "features": ["a", "b", "c"]}, "registry")
    rows = np.random.default_rng(6).normal(size=(10, 3))
    assert model.calibration == IDENTITY and model.bands == Bands.from_threshold(0.5)
    assert model.score(rows).tolist() == np.asarray(booster.predict(rows)).tolist()
    assert model.score_one(rows[0]) == pytest.approx(float(booster.predict(rows[:1])[0]), rel=1e-12)
