"""Models by registry alias, with a disk cache so the service can start while the registry is down.

Only aliases of the configured model name are ever loaded: nothing in a request can point the
service at a path or URI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from core.runtime import write_atomically
from core.settings import Settings
from model.calibration import IDENTITY, Calibration
from model.decisions import Bands
from model.native.lightgbm_row import RowScorer, row_predictor

log = logging.getLogger("fraudops.models")
REASONS = 3  # reason codes per answer: what an analyst reads first


@dataclass(frozen=True)
class LoadedModel:
    alias: str
    version: str
    booster: lgb.Booster
    features: tuple[str, ...]
    threshold: float
    bands: Bands
    source: str  # "registry" or "cache"
    calibration: Calibration = IDENTITY  # the identity for a version logged before calibration
    score_one: RowScorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = row_predictor(self.booster, len(self.features))
        if self.calibration == IDENTITY:
            object.__setattr__(self, "score_one", raw)
            return
        to_probability = self.calibration.one

        def score_one(row: Sequence[float] | np.ndarray) -> float:
            return to_probability(raw(row))

        object.__setattr__(self, "score_one", score_one)

    @classmethod
    def from_meta(cls, alias: str, version: str, booster: lgb.Booster, meta: dict[str, Any], source: str) -> LoadedModel:
        """From the metadata training logged with the model; a version from before the decision
        bands decides by its threshold alone (flagged means review), and one from before calibration
        serves the booster's raw score."""
        threshold = float(meta["threshold"])
        bands = Bands(*map(float, meta["bands"])) if "bands" in meta else Bands.from_threshold(threshold)
        calibration = Calibration(*map(float, meta["calibration"])) if "calibration" in meta else IDENTITY
        return cls(alias, version, booster, tuple(meta["features"]), threshold, bands, source, calibration)

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "features": list(self.features), "threshold": self.threshold, "bands": self.bands.cuts().tolist(),
                "calibration": self.calibration.params()}

    def __reduce__(self) -> tuple[type[LoadedModel], tuple[str, str, lgb.Booster, tuple[str, ...], float, Bands, str, Calibration]]:
        """Pickled without the row scorer, which holds native buffers, and rebuilt with a new one
        where it lands (a Dask worker of the batch job)."""
        return LoadedModel, (self.alias, self.version, self.booster, self.features, self.threshold, self.bands, self.source, self.calibration)

    def score(self, rows: np.ndarray, threads: int = 1) -> np.ndarray:
        """Calibrated scores for rows already in `features` order: the booster on a NumPy array, no DataFrame."""
        return self.calibration.apply(np.asarray(self.booster.predict(rows, num_threads=threads)))

    def reasons(self, rows: np.ndarray, top: int = REASONS, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Why each row scored as it did: the indices into `features` of its `top` largest
        contributions towards fraud, and those contributions (log-odds; LightGBM's own SHAP values,
        `pred_contrib`, exact for trees). Costs about one more prediction per row, so only a caller
        who asks pays it (`?explain=true`, `fraudops score --explain`)."""
        contributions = np.asarray(self.booster.predict(rows, pred_contrib=True, num_threads=threads))[:, :-1]  # last column: the bias
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :top]
        return order, np.take_along_axis(contributions, order, axis=1)


def _cache_dir(settings: Settings, alias: str) -> Path:
    return settings.model_cache_dir / alias


def _write_cache(settings: Settings, model: LoadedModel) -> None:
    target = _cache_dir(settings, model.alias)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in (("model.txt", model.booster.model_to_string()), ("meta.json", json.dumps(model.meta()))):
        write_atomically(target / name, text)


def load_cached(settings: Settings, alias: str) -> LoadedModel | None:
    target = _cache_dir(settings, alias)
    if not (target / "meta.json").exists():
        return None
    meta = json.loads((target / "meta.json").read_text())
    booster = lgb.Booster(model_str=(target / "model.txt").read_text())
    return LoadedModel.from_meta(alias, meta["version"], booster, meta, "cache")


def check(model: LoadedModel) -> None:
    """Refuse a model that cannot score a plausible row with finite numbers."""
    probe = np.zeros((2, len(model.features)))
    scores = model.score(probe)
    if scores.shape != (2,) or not np.all(np.isfinite(scores)) or not np.isfinite(model.score_one(probe[0])):
        raise ValueError(f"{model.alias} version {model.version} gives non-finite scores")


def fetch(settings: Settings, alias: str) -> LoadedModel | None:
    """The version behind `alias`, checked, or None if the alias is not set. Raises if the registry is
    unreachable: a batch job must not score with a stale model without saying so."""
    import mlflow

    from core import registry

    client = registry.connect(settings)
    version = registry.aliased_version(client, settings.stores.model_name, alias)
    if version is None:
        return None
    version = str(version)
    uri = f"models:/{settings.stores.model_name}/{version}"
    booster = mlflow.lightgbm.load_model(uri)
    meta = mlflow.models.get_model_info(uri).metadata or {}
    model = LoadedModel.from_meta(alias, version, booster, meta, "registry")
    check(model)
    return model


def load_from_registry(settings: Settings, alias: str) -> LoadedModel | None:
    """`fetch`, keeping a copy on disk for a start while the registry is down."""
    model = fetch(settings, alias)
    if model is not None:
        _write_cache(settings, model)
    return model


def load(settings: Settings, alias: str) -> LoadedModel | None:
    """Registry first; the disk cache if the registry cannot be reached."""
    try:
        return load_from_registry(settings, alias)
    except Exception as exc:  # registry down or model broken: serve what we had, say so in /readyz
        log.warning("loading %s from the registry failed (%s); trying the disk cache", alias, exc)
        return load_cached(settings, alias)
