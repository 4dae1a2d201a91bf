"""What the model must beat, scored on the same rows: a linear model on the same features, and the
rule "large amounts"."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.matrix import matrix


def baselines(fit: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the model must beat: a linear model on the same features, and the rule "large amounts"."""
    logreg = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=500))
    logreg.fit(matrix(fit, features), fit["is_fraud"])
    return {
        "logistic_regression": (logreg.predict_proba(matrix(validation, features))[:, 1], logreg.predict_proba(matrix(test, features))[:, 1]),
        # a rule's score is the amount itself; its cut is chosen on validation like the model's threshold
        "amount_rule": (validation["amount"].to_numpy(), test["amount"].to_numpy()),
    }

