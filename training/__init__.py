"""Training as plain functions: the protocol's windows and split, the fit (one process or Dask), the
baselines, the registration gate and fingerprint, the test figures and the plots. The train flow
(pipelines/flows/train.py) composes them into the DAG with MLflow lineage."""
