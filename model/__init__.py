"""The model from score to decision: the loaded model and its loading by registry alias with a disk
cache, scoring one row or many, reason codes, the decision bands and their fitting, exploration and
its propensities, the customer bucket hash, and the metrics a model is judged by. serving, training,
monitoring and pipelines all read it; it reads only core."""
