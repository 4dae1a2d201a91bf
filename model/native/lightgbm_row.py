"""One row through LightGBM's C API for exactly that, `LGBM_BoosterPredictForMatSingleRowFast`.

What it gives: the configuration and the input and output buffers are prepared once per model, so a
request pays for walking the trees and not for `Booster.predict`'s per-call set-up, which cost more
than the trees (`make bench`). The call holds the GIL: it lasts microseconds, and handing the GIL
over and back around it, as lightgbm's own ctypes handle does, let a busy background thread stall
requests.

What it costs: lightgbm's private `_LIB`, `_safe_call` and `Booster._handle`. Declared `argtypes`
make a changed signature raise instead of passing garbage to C; with another lightgbm version, or
without those names, `Booster.predict` answers instead (`public_predictor`).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable, Sequence

import lightgbm as lgb
import numpy as np

from core.native import written_for

LIGHTGBM = "4.7.0"
RowScorer = Callable[[Sequence[float] | np.ndarray], float]


def public_predictor(booster: lgb.Booster, n_features: int) -> RowScorer:
    """The public path: `Booster.predict` on one row (up to the best iteration, as by default)."""

    def score(row: Sequence[float] | np.ndarray) -> float:
        if len(row) != n_features:
            raise ValueError(f"expected {n_features} features, got {len(row)}")
        return float(booster.predict(np.asarray(row, dtype=np.float64).reshape(1, -1), num_threads=1)[0])

    return score


class FastRowPredictor:
    """LightGBM's single-row fast path, one configuration and one pair of buffers per model."""

    def __init__(self, booster: lgb.Booster, n_features: int) -> None:
        from lightgbm.basic import _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL, _LIB, _c_str, _safe_call

        self._booster = booster  # the configuration points into it: keep it alive as long as we are
        self._n = n_features
        self._config = ctypes.c_void_p()
        # as Booster.predict does by default: up to the best iteration when early stopping found one
        iterations = booster.best_iteration if booster.best_iteration > 0 else -1
        # functions of a handle of our own, so that declaring their argtypes leaves lightgbm's alone
        own, with_gil = ctypes.CDLL(_LIB._name), ctypes.PyDLL(_LIB._name)
        init = own.LGBM_BoosterPredictForMatSingleRowFastInit
        init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int32,
                         ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        _safe_call(init(booster._handle, _C_API_PREDICT_NORMAL, 0, iterations, _C_API_DTYPE_FLOAT64, n_features,
                        _c_str("num_threads=1"), ctypes.byref(self._config)))
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)
        self._error = _LIB.LGBM_GetLastError
        predict = with_gil.LGBM_BoosterPredictForMatSingleRowFast
        predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double)]
        predict.restype = ctypes.c_int
        self._predict = predict
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
                raise lgb.basic.LightGBMError(self._error().decode())
            return float(self._out[0])


def row_predictor(booster: lgb.Booster, n_features: int) -> RowScorer:
    """The fast path where the installed lightgbm is the one it was written for, else the public one."""
    if written_for("lightgbm", LIGHTGBM):
        try:
            return FastRowPredictor(booster, n_features)
        except (AttributeError, ImportError) as exc:
            from core.native import log

            log.warning("lightgbm's single-row fast path is unavailable (%s): using Booster.predict", exc)
    return public_predictor(booster, n_features)
