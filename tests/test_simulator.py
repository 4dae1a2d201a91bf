from datetime import date

import numpy as np
import pandas as pd
import pytest

from features.simulator import Drift, SimulationConfig, simulate_chunks, write_simulation

SMALL = SimulationConfig(customers=500, terminals=1_000, days=40, seed=3)


def frame(cfg: SimulationConfig) -> pd.DataFrame:
    return pd.concat(list(simulate_chunks(cfg)), ignore_index=True)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = frame(SMALL), frame(SMALL)
    pd.testing.assert_frame_equal(a, b)
    other = frame(SimulationConfig(customers=500, terminals=1_000, days=40, seed=4))
    assert len(other) != len(a) or not np.allclose(other["amount"], a["amount"])


def test_fraud_share_and_scenarios_match_the_handbook() -> None:
    tx = frame(SimulationConfig(customers=2_000, terminals=4_000, days=60, seed=1, card_testing=False))
    # The handbook reports about 0.8% fraud; its three scenarios must all occur, and only those.
    assert 0.003 < tx["is_fraud"].mean() < 0.02
    assert set(tx["fraud_scenario"].unique()) == {0, 1, 2, 3}
    assert (tx.loc[tx["fraud_scenario"] == 1, "amount"] > 220).all()
    assert ((tx["fraud_scenario"] > 0) == (tx["is_fraud"] == 1)).all()


def test_card_testing_is_a_burst_of_small_charges_then_large_ones() -> None:
    tx = frame(SimulationConfig(customers=2_000, terminals=4_000, days=30, seed=1))
    tested = tx[tx["fraud_scenario"] == 4]
    assert 0 < len(tested) < 0.01 * len(tx)
    for _, burst in list(tested.groupby([tested["customer_id"], tested["timestamp"].dt.date]))[:20]:
        small = burst[burst["amount"] <= 5]
        assert len(small) >= 5 and small["timestamp"].max() - small["timestamp"].min() <= pd.Timedelta(minutes=10)
        assert burst["timestamp"].max() - burst["timestamp"].min() <= pd.Timedelta(minutes=40)
        assert burst.sort_values("timestamp")["amount"].iloc[-1] > 5  # the large charges come last
    assert tested["is_fraud"].all()


def test_ids_unique_and_time_ordered() -> None:
    tx = frame(SMALL)
    assert tx["transaction_id"].is_unique
    assert tx["timestamp"].is_monotonic_increasing
    assert tx["timestamp"].min() >= pd.Timestamp(SMALL.start_date)
    assert tx["timestamp"].max() < pd.Timestamp(SMALL.start_date) + pd.Timedelta(days=SMALL.days)


def test_amount_inflation_starts_on_its_day() -> None:
    base = frame(SMALL)
    drifted = frame(SimulationConfig(customers=500, terminals=1_000, days=40, seed=3, drift=(Drift.amount_inflation,), drift_start_day=30))
    cut = pd.Timestamp(SMALL.start_date) + pd.Timedelta(days=30)
    before = base["timestamp"] < cut
    legit = ~base["fraud_scenario"].isin([3, 4])  # leaked-card and card-testing frauds set amounts of their own
    assert np.allclose(base.loc[before, "amount"], drifted.loc[before, "amount"])
    ratio = drifted.loc[~before & legit, "amount"].mean() / base.loc[~before & legit, "amount"].mean()
    assert 1.5 < ratio < 1.7


def test_terminal_wave_raises_fraud_after_its_day() -> None:
    cfg = SimulationConfig(customers=1_000, terminals=2_000, days=60, seed=5, drift=(Drift.terminal_wave,), drift_start_day=30)
    tx, base = frame(cfg), frame(SimulationConfig(customers=1_000, terminals=2_000, days=60, seed=5))
    late = tx["timestamp"] >= pd.Timestamp(cfg.start_date) + pd.Timedelta(days=45)
    assert tx.loc[late, "is_fraud"].mean() > 3 * base.loc[late, "is_fraud"].mean()


def test_mimicry_changes_what_fraud_looks_like_and_nothing_a_label_free_signal_sees() -> None:
    """Concept drift: the same labels, amounts whose distribution barely moves, and leaked-card fraud
    that now spends like its card's owner, where it spent five times as much."""
    from scipy.stats import ks_2samp

    cfg = SimulationConfig(customers=1_000, terminals=2_000, days=60, seed=5, drift=(Drift.mimicry,), drift_start_day=30)
    tx, base = frame(cfg), frame(SimulationConfig(customers=1_000, terminals=2_000, days=60, seed=5))
    late = tx["timestamp"] >= pd.Timestamp(cfg.start_date) + pd.Timedelta(days=30)
    assert (tx["is_fraud"] == base["is_fraud"]).all() and (tx["fraud_scenario"] == base["fraud_scenario"]).all()
    assert np.allclose(tx.loc[~late, "amount"], base.loc[~late, "amount"])
    assert ks_2samp(tx.loc[late, "amount"], base.loc[late, "amount"]).statistic < 0.02
    leaked = late & (tx["fraud_scenario"] == 3)
    usual = tx[~late & (tx["is_fraud"] == 0)].groupby("customer_id")["amount"].mean()
    ratio = {name: (f.loc[leaked, "amount"] / f.loc[leaked, "customer_id"].map(usual)).median() for name, f in (("drifted", tx), ("base", base))}
    assert leaked.sum() > 50 and ratio["base"] > 4 and 0.7 < ratio["drifted"] < 1.3


def test_write_refuses_to_mix_two_simulations(tmp_path) -> None:
    cfg = SimulationConfig(customers=50, terminals=100, days=5, start_date=date(2025, 1, 1))
    assert write_simulation(cfg, tmp_path) > 0
    with pytest.raises(FileExistsError, match="--replace"):
        write_simulation(cfg, tmp_path)
    assert write_simulation(cfg, tmp_path, replace=True) > 0
