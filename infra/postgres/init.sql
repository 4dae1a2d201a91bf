-- One PostgreSQL, one database per concern: MLflow's tracking store, Prefect's orchestration state,
-- MLflow's users (basic auth), Feast's registry, the API's prediction log, and the label store. Run once by the postgres image on an empty volume.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
CREATE DATABASE feast;
CREATE DATABASE predictions;
CREATE DATABASE labels;
