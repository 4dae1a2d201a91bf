"""Models by registry alias, with a disk cache so the service can start while the registry is down.

Only aliases of the configured model name are ever loaded: nothing in a request can point the
service at a path or URI.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

from core.runtime import write_atomically
from core.settings import Settings

log = logging.getLogger("fraudops.models")


class SingleRowPredictor:
    """One row through LightGBM's C API for exactly that (LGBM_BoosterPredictForMatSingleRowFast). Its
    configuration, input and output buffers are prepared once per model, so a request pays for walking
    the trees and not for Booster.predict's per-call set-up, which took more time than the trees
    (`make bench`). The call holds the GIL: it lasts microseconds, and handing the GIL over and back
    around it (as lightgbm's own ctypes handle does) let a busy background thread stall requests."""

    def __init__(self, booster: lgb.Booster, n_features: int) -> None:
        from lightgbm.basic import _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL, _LIB, _c_str, _safe_call

        self._booster = booster  # the configuration points into it: keep it alive as long as we are
        self._n = n_features
        self._config = ctypes.c_void_p()
        # as Booster.predict does by default: up to the best iteration when early stopping found one
        iterations = booster.best_iteration if booster.best_iteration > 0 else -1
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_C_API_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(iterations),
            ctypes.c_int(_C_API_DTYPE_FLOAT64), ctypes.c_int32(n_features), _c_str("num_threads=1"), ctypes.byref(self._config),
        ))
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)
        self._predict = ctypes.PyDLL(_LIB._name).LGBM_BoosterPredictForMatSingleRowFast
        self._row, self._out, self._out_len = np.zeros(n_features), np.zeros(1), ctypes.c_int64(0)
        self._args = (self._config, self._row.ctypes.data_as(ctypes.c_void_p), ctypes.byref(self._out_len),
                      self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        self._lock = threading.Lock()  # one configuration and one pair of buffers: one row at a time

    def __call__(self, row: Sequence[float] | np.ndarray) -> float:
        """The score of one row of `n_features` values in the model's feature order."""
        if len(row) != self._n:
            raise ValueError(f"expected {self._n} features, got {len(row)}")
        with self._lock:
            self._row[:] = row
            if self._predict(*self._args) != 0:
                from lightgbm.basic import _LIB

                raise lgb.basic.LightGBMError(_LIB.LGBM_GetLastError().decode())
            return float(self._out[0])


@dataclass(frozen=True)
class LoadedModel:
    alias: str
    version: str
    booster: lgb.Booster
    features: tuple[str, ...]
    threshold: float
    source: str  # "registry" or "cache"
    score_one: SingleRowPredictor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_one", SingleRowPredictor(self.booster, len(self.features)))

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Scores for rows already in `features` order: the booster on a NumPy array, no DataFrame."""
        return np.asarray(self.booster.predict(rows, num_threads=1))


def _cache_dir(settings: Settings, alias: str) -> Path:
    return settings.model_cache_dir / alias


def _write_cache(settings: Settings, model: LoadedModel) -> None:
    target = _cache_dir(settings, model.alias)
    target.mkdir(parents=True, exist_ok=True)
    meta = {"version": model.version, "features": list(model.features), "threshold": model.threshold}
    for name, text in (("model.txt", model.booster.model_to_string()), ("meta.json", json.dumps(meta))):
        write_atomically(target / name, text)


def load_cached(settings: Settings, alias: str) -> LoadedModel | None:
    target = _cache_dir(settings, alias)
    if not (target / "meta.json").exists():
        return None
    meta = json.loads((target / "meta.json").read_text())
    booster = lgb.Booster(model_str=(target / "model.txt").read_text())
    return LoadedModel(alias, meta["version"], booster, tuple(meta["features"]), float(meta["threshold"]), "cache")


def check(model: LoadedModel) -> None:
    """Refuse a model that cannot score a plausible row with finite numbers."""
    probe = np.zeros((2, len(model.features)))
    scores = model.score(probe)
    if scores.shape != (2,) or not np.all(np.isfinite(scores)) or not np.isfinite(model.score_one(probe[0])):
        raise ValueError(f"{model.alias} version {model.version} gives non-finite scores")


def load_from_registry(settings: Settings, alias: str) -> LoadedModel | None:
    """The version behind `alias`, or None if the alias is not set. Raises if the registry is unreachable."""
    import mlflow

    from core import registry

    client = registry.connect(settings)
    version = registry.aliased_version(client, settings.model_name, alias)
    if version is None:
        return None
    version = str(version)
    uri = f"models:/{settings.model_name}/{version}"
    booster = mlflow.lightgbm.load_model(uri)
    meta = mlflow.models.get_model_info(uri).metadata or {}
    model = LoadedModel(alias, version, booster, tuple(meta["features"]), float(meta["threshold"]), "registry")
    check(model)
    _write_cache(settings, model)
    return model


def load(settings: Settings, alias: str) -> LoadedModel | None:
    """Registry first; the disk cache if the registry cannot be reached."""
    try:
        return load_from_registry(settings, alias)
    except Exception as exc:  # registry down or model broken: serve what we had, say so in /readyz
        log.warning("loading %s from the registry failed (%s); trying the disk cache", alias, exc)
        return load_cached(settings, alias)
