"""The fraud-scoring API: online features, champion/challenger routing, the model, the prediction log."""
