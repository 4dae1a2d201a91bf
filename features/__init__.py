"""The data and feature layer: the transaction simulator, the raw schema, batch feature computation
and the Feast feature repository."""
