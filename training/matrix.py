"""The model's input: a frame's feature columns as one float64 array, in the model's feature order."""

from __future__ import annotations

import numpy as np
import pandas as pd


def matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    return frame[features].to_numpy(np.float64)
