"""Beyond one machine: the train flow on a real Dask cluster of two worker processes."""

from __future__ import annotations

from pipelines.flows import training_flow
from training.fit import ModelConfig


def test_train_flow_runs_its_join_and_fits_on_a_dask_cluster(registry_copy) -> None:
    from distributed import Client, LocalCluster
    from prefect.server.api.server import SubprocessASGIServer

    # As on a real cluster, the workers report to the flow's Prefect API (here the ephemeral one)
    # instead of each starting a temporary server of its own.
    server = SubprocessASGIServer()
    server.start()
    config = ModelConfig(num_boost_round=40, num_leaves=7, scale_pos_weight=3.0)
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                       env={"PREFECT_API_URL": server.api_url}) as cluster,
          Client(cluster) as client):
        settings = registry_copy.replace(dask_address=cluster.scheduler_address)
        result = training_flow(settings)(settings, config)
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    # the Prefect tasks ran on the cluster, and so did LightGBM's per-worker training parts
    assert {"build_training_set", "train_model", "train_part"} <= set(prefixes)
    assert result["gate"] == "passed" and result["alias"] == "challenger" and result["version"] is not None
    assert result["best_iteration"] == config.num_boost_round  # lightgbm.dask: no early stopping
    # an equivalent model to the one machine's: data-parallel trees are built from the workers'
    # merged histograms, so the cluster's fit is close to the single fit, not bit for bit
    from pipelines.flows.train import build_training_set
    from training.fit import train
    from training.windows import Windows

    windows = Windows.from_settings(registry_copy)
    frame, features = build_training_set.fn(registry_copy, windows.train_start, windows.test_end)
    here = train(frame, features, windows, config, registry_copy)  # early stopping may end it before the 40 rounds
    there = {k: result[k] for k in ("test_average_precision", "test_roc_auc")}
    assert all(isinstance(v, float) for v in there.values()), there
    assert abs(here.metrics["test_average_precision"] - float(str(there["test_average_precision"]))) < 0.05
    assert abs(here.metrics["test_roc_auc"] - float(str(there["test_roc_auc"]))) < 0.03


def test_the_feature_job_on_a_dask_cluster_gives_the_single_machine_table(tmp_path) -> None:
    import pandas as pd
    from distributed import LocalCluster

    from features.compute import FEATURES_FILE, on_dask
    from features.simulator import SimulationConfig, write_simulation
    from tests.conftest import features_from_truth, tiny_settings

    settings = tiny_settings(tmp_path, days=40)
    write_simulation(SimulationConfig.from_settings(settings.simulation, customers=200, terminals=400), settings.transactions_dir)
    features_from_truth(settings, tmp_path / "here")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        features_from_truth(settings, tmp_path / "dask", buckets=4, run=on_dask(cluster.scheduler_address))
    here, there = (pd.read_parquet(tmp_path / where / FEATURES_FILE) for where in ("here", "dask"))
    assert len(here) > 1_000
    pd.testing.assert_frame_equal(there, here)
