"""Evidently jobs over the prediction log: data drift, prediction drift, and the verdict that closes
the loop back to retraining."""
