"""A rule against an attack the model never saw: card testing starts the day after the test window,
in a world simulated without it, so the champion was trained with no card-testing fraud at all.

The week after the start is scored through the batch path (the API's decisions, `fraudops score`)
three times: without rules, with a velocity rule in shadow, and with the same rule active. The shadow
run's figures are what the monitor reports of a rule (monitoring/rules.py) once the week's labels
have arrived: its hits, its precision and the frauds it caught that the model's threshold missed. The
active run shows what switching it on does to the losses, priced as the decision bands are
(model/decisions.py::cost). One run: a scenario, not a timing."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.common import SCALES, Section

ATTACK_RATE = 30 / 5_000  # cards tested a day per card: ten times the simulator's usual rate, an attack's week
RULE = ('[[rule]]\nname = "card-testing-velocity"\nwhen = "customer_tx_count_1h >= 5"\naction = "decline"\nmode = "{mode}"\n'
        'description = "five or more charges on one card within the hour"\n')
WEEK = timedelta(days=7)


def attacked_world(settings: Settings) -> pd.DataFrame:
    """Simulate with card testing from the day after the test window, train a champion on what came
    before, deliver the chargebacks up to the window's end; the week after the start, with its truth."""
    from features.labels import clear
    from features.offline import transactions_between
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from pipelines.flows import features_flow, train_flow
    from training.fit import ModelConfig
    from training.windows import Windows

    windows = Windows.from_settings(settings)
    start_day = (windows.test_end - pd.Timestamp(settings.simulation.start_date)).days
    config = SimulationConfig.from_settings(settings.simulation, drift=("card_testing",), drift_start_day=start_day, card_tests_per_day=ATTACK_RATE)
    write_simulation(config, settings.transactions_dir, replace=True)
    clear(settings)
    deliver_chargebacks(settings, windows.test_end + timedelta(days=settings.features.label_delay_days))
    features_flow(settings)
    train_flow(settings, ModelConfig())
    return transactions_between(settings.transactions_dir, windows.test_end, windows.test_end + WEEK)


def scored_with(settings: Settings, week: pd.DataFrame, rules: Path | None) -> pd.DataFrame:
    """The week's batch decisions under these rules, beside the simulator's truth."""
    from model.loaded import fetch
    from pipelines.batch import score_rows

    model = fetch(settings, "champion")
    if model is None:
        raise RuntimeError("the attacked world's training registered no champion")
    scored = score_rows(settings.replace(rules_file=rules), model, week.drop(columns=["is_fraud", "fraud_scenario"]))
    return scored.merge(week[["transaction_id", "is_fraud", "fraud_scenario"]], on="transaction_id")


def priced(scored: pd.DataFrame, settings: Settings) -> tuple[float, float]:
    """The week's cost as the bands price it, and its fraud losses alone (the fees set to 0)."""
    from model.decisions import DECISIONS, Costs, cost

    costs = Costs.from_settings(settings.costs)
    labels, amounts = scored["is_fraud"].to_numpy(), scored["amount"].to_numpy()
    decisions = np.array([DECISIONS.index(d) for d in scored["decision"]])
    losses = dataclasses.replace(costs, review_fee=0.0, step_up_fee=0.0, decline_fee=0.0)
    return cost(labels, amounts, decisions, costs), cost(labels, amounts, decisions, losses)


def rules_section(settings: Settings, scale: str, repeat: int) -> Section:
    from monitoring.rules import rule_figures

    customers, terminals = SCALES[scale].customers, SCALES[scale].terminals
    s = settings.replace(state_dir=settings.state_dir / "rules", customers=customers, terminals=terminals, days=100, card_testing=False)
    week = attacked_world(s)
    runs = {}
    for mode in ("none", "shadow", "active"):
        path = None if mode == "none" else s.state_dir / f"rules-{mode}.toml"
        if path is not None:
            path.write_text(RULE.format(mode=mode))
        runs[mode] = scored_with(s, week, path)
    measured = rule_figures(runs["shadow"], runs["shadow"])  # the week's labels: every chargeback arrived by now
    if not measured:
        raise RuntimeError("the velocity rule fired on no transaction of the attacked week")
    [figures] = measured
    testing = runs["none"]["fraud_scenario"] == 4
    section = Section(f"rules against a new attack (card testing from the day after the test window, {customers:,} cards, "
                      f"{ATTACK_RATE * customers:.1f} cards tested a day; one run)")
    section.add("card-testing frauds in the week", float(testing.sum()), "transactions",
                f"of {int(runs['none']['is_fraud'].sum())} frauds among {len(week):,} transactions")
    section.add("card-testing frauds the model flags (review or decline)", float(runs["none"].loc[testing, "decision"].isin(["review", "decline"]).mean()),
                "share", "a champion trained before the attack")
    section.add("shadow rule: hit rate", figures.hit_rate, "share", f"{figures.hits} hits")
    section.add("shadow rule: precision on labelled hits", figures.precision, "share",
                f"95% interval {figures.precision_low:.2f}-{figures.precision_high:.2f} on {figures.labelled_hits} hits",
                low=figures.precision_low, high=figures.precision_high, hits=float(figures.hits))
    section.add("shadow rule: frauds it hit that the model's threshold missed", float(figures.frauds_model_missed), "transactions")
    section.add("shadow run decisions equal those without rules (1 = yes)", float((runs["shadow"]["decision"] == runs["none"]["decision"]).all()), "")
    for mode, what in (("none", "without rules"), ("active", "with the rule active")):
        total, losses = priced(runs[mode], s)
        section.add(f"week's cost {what}", total, "currency", f"fraud losses alone: {losses:,.0f}", losses=losses)
    return section
