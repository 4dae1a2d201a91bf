"""`fraudops`: one command per stage, each a thin layer over the package that does the work."""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from core.runtime import prepare
from core.settings import Settings

if TYPE_CHECKING:
    from monitoring.canary import Comparison

app = typer.Typer(no_args_is_help=True, add_completion=False, help="fraudops: a runnable fraud detection system.")
features_app = typer.Typer(no_args_is_help=True, help="Feast feature repository: compute, apply, materialize.")
app.add_typer(features_app, name="features")
console = Console()


def settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the options the user passed on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def simulate(
    customers: Annotated[Optional[int], typer.Option(min=1, help="Customers (default from settings).")] = None,
    terminals: Annotated[Optional[int], typer.Option(min=1, help="Terminals (default from settings).")] = None,
    days: Annotated[Optional[int], typer.Option(min=1, help="Days to simulate (default from settings).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same data.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the offline transaction store).")] = None,
    drift: Annotated[Optional[list[str]], typer.Option(help="Drift scenario for the production period: amount_inflation, terminal_wave, mimicry (concept drift). Repeatable.")] = None,
    drift_start_day: Annotated[Optional[int], typer.Option(min=0, help="First day of the drift scenarios.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace transactions already in the output folder.")] = False,
    card_testing: Annotated[Optional[bool], typer.Option(help="The card-testing scenario beside the Handbook's three (default from settings; off reproduces the Handbook alone).")] = None,
) -> None:
    """Simulate card transactions with labelled fraud (Fraud Detection Handbook, chapter 3).

    Example: fraudops simulate --customers 5000 --terminals 10000 --days 183 --replace
    """
    from rich.progress import Progress

    from features.simulator import Drift, SimulationConfig, write_simulation

    s = settings(customers=customers, terminals=terminals, days=days, seed=seed, card_testing=card_testing)
    try:
        scenarios = tuple(Drift(d) for d in drift or [])
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; choose from {', '.join(d.value for d in Drift)}", param_hint="--drift") from exc
    cfg = SimulationConfig.from_settings(s.simulation, drift=scenarios, drift_start_day=drift_start_day)
    with Progress(console=console) as progress:
        bar = progress.add_task("simulating days", total=cfg.days)
        rows = write_simulation(cfg, out or s.transactions_dir, replace, lambda n: progress.advance(bar, n))
    console.print(f"wrote {rows:,} transactions to {out or s.transactions_dir}")
    if out is None:  # the simulated past is over: its chargebacks have all arrived
        from features.labels import clear
        from features.simulator import deliver_chargebacks

        if replace:  # the verdicts on the transactions just replaced would land on new ones of the same ids
            clear(s)
        console.print(f"delivered {deliver_chargebacks(s):,} chargebacks to the label store")


@features_app.command("apply")
def features_apply() -> None:
    """Compute feature snapshots from the offline transactions and register the Feast definitions."""
    s = settings()
    prepare(s)
    from pipelines.flows import features_flow

    console.print(features_flow(s))


@features_app.command("materialize")
def features_materialize(
    until: Annotated[Optional[datetime], typer.Option(help="Backfill the live state as of this time (default: just after the newest transaction).")] = None,
) -> None:
    """Backfill the live feature state from the offline transactions (idempotent: what is there stays)."""
    from features.store import latest_transaction, materialize

    s = settings()
    loaded = materialize(s, until or latest_transaction(s) + timedelta(seconds=1))
    console.print(f"live state backfilled with {loaded:,} transactions")


@app.command()
def train(
    train_start: Annotated[Optional[datetime], typer.Option(help="First training day (default: start_date + train_start_day).")] = None,
    train_days: Annotated[Optional[int], typer.Option(min=1, help="Days of training data.")] = None,
    delay_days: Annotated[Optional[int], typer.Option(min=0, help="Days between train and test while labels mature.")] = None,
    test_days: Annotated[Optional[int], typer.Option(min=1, help="Days of test data.")] = None,
    num_leaves: Annotated[Optional[int], typer.Option(min=2, help="LightGBM num_leaves (default: training/fit.py's ModelConfig).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(min=0.0001, max=1.0, help="LightGBM learning rate (default: ModelConfig's).")] = None,
    scale_pos_weight: Annotated[Optional[float], typer.Option(min=1.0, help="Weight of the fraud class; default: chosen by prequential validation.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write test metrics as JSON, one object per model.")] = None,
) -> None:
    """Train on Feast features, evaluate on the later test window beside two baselines, register in MLflow.

    The first model becomes `champion`; later ones become `challenger` until promoted.
    Example: fraudops train --train-start 2018-07-25 --train-days 7 --delay-days 7 --test-days 7 --json metrics.json
    """
    s = settings(train_start=train_start.date() if train_start else None, train_days=train_days, label_delay_days=delay_days, test_days=test_days)
    prepare(s)
    from pipelines.docs import write_results
    from pipelines.flows import training_flow
    from training.fit import ModelConfig
    from training.results import model_scores, scores_table

    chosen: dict[str, Any] = {"num_leaves": num_leaves, "learning_rate": learning_rate, "scale_pos_weight": scale_pos_weight}
    result = training_flow(s)(s, ModelConfig(**{k: v for k, v in chosen.items() if v is not None}))
    scores = model_scores(result, s)
    console.print(scores_table(scores, s, f"test window: {result.get('test_rows', 0):,.0f} transactions, {result.get('test_frauds', 0):,.0f} frauds"))
    console.print(f"gate: {result['gate']}; version: {result['version']}; alias: {result['alias']}")
    if json_out:
        counts = {"test_rows": result.get("test_rows"), "test_frauds": result.get("test_frauds")}
        models = {row.model: {**row.as_json(s), **counts} for row in scores}
        calibration = {name: result.get(f"test_{name}") for name in ("calibration_error", "calibration_error_raw")}
        write_results(json_out, {"models": models, "calibration": calibration, "version": result["version"], "alias": result["alias"],
                                 "gate": result["gate"]})


@app.command()
def bootstrap() -> None:
    """A new stack's first run: simulate (replacing), compute, register and materialize the features,
    train the first champion. One process for what four commands would do, each paying the imports
    again (compose's bootstrap service). Rerun on the same data, training registers nothing new."""
    simulate(replace=True)
    features_apply()
    features_materialize()
    train()


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Parquet or CSV files, or folders of them.")],
    columns: Annotated[Optional[str], typer.Option(help="Rename columns: 'theirs=ours,...' or a preset: handbook.")] = None,
) -> None:
    """Append your own transactions to the offline store, validated; days already stored are skipped.

    Raw schema: transaction_id, timestamp, customer_id, terminal_id, amount [, is_fraud, fraud_scenario].
    Labels are read from the label store only: load them with fraudops labels (the same file will do).
    Example: fraudops ingest exports/ --columns handbook
    """
    from features.ingest import ingest as run_ingest
    from features.ingest import parse_columns
    from features.schema import SchemaError

    s = settings()
    try:
        mapping = parse_columns(columns)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--columns") from exc
    try:
        report = run_ingest(paths, s.transactions_dir, mapping, lambda f: console.print(f"{f.path}: {f.rows_read:,} rows read, {f.rows_added:,} added ({f.note})"))
    except (SchemaError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    console.print(f"{report.rows_added:,} transactions added to {s.transactions_dir}")


@app.command()
def labels(
    paths: Annotated[list[Path], typer.Argument(help="Parquet or CSV files, or folders of them.")],
    columns: Annotated[Optional[str], typer.Option(help="Rename columns: 'theirs=ours,...' or a preset: handbook.")] = None,
    source: Annotated[str, typer.Option(help="Where verdicts without a source column come from: chargeback, analyst, ...")] = "bulk",
) -> None:
    """Load verdicts (chargebacks, analysts' decisions) into the label store: the same path as POST /labels.

    Columns: transaction_id, is_fraud [, reported_at (default: now), source]. Idempotent: a verdict
    that is already current changes nothing; a later one wins and both stay in history. Ids fraudops
    has never seen are reported, not stored.
    Example: fraudops labels chargebacks.csv --source chargeback
    """
    from features.ingest import discover, parse_columns, read_file
    from features.labels import record
    from features.schema import SchemaError

    s = settings()
    try:
        mapping = parse_columns(columns)
        files = discover(paths)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--columns" if isinstance(exc, ValueError) else "PATHS") from exc
    for path in files:
        frame = read_file(path, mapping)
        try:
            receipt = record(s, frame, source, where=str(path))  # the whole file or, on any error, none of it
        except SchemaError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        console.print(f"{path}: {len(frame):,} verdicts: " + ", ".join(f"{v:,} {k.removesuffix('_count')}" for k, v in receipt.counts().items())
                      + (f" (e.g. {', '.join(receipt.unknown[:5])})" if receipt.unknown else ""))


@app.command()
def score(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="CSV or Parquet of transactions: transaction_id, timestamp, customer_id, terminal_id, amount.")],
    out: Annotated[Path, typer.Option(help="The scores, as one Parquet file (written whole or not at all).")],
    alias: Annotated[str, typer.Option(help="Registry alias of the model to score with.")] = "champion",
    explain: Annotated[bool, typer.Option(help="Add the 3 features that pushed each score up most (reason codes).")] = False,
) -> None:
    """Score transactions in batch with the features training used, as of each transaction's time.

    The transactions must be in the offline store with their features computed (fraudops ingest,
    fraudops features apply). With FRAUDOPS_DASK_ADDRESS the rows are scored across that cluster.
    Example: fraudops score day.parquet --out scores.parquet --explain
    """
    from model.rules import RuleError
    from pipelines.batch import BatchError, read_input
    from pipelines.batch import score as run

    try:
        result = run(settings(), read_input(input_path), out, alias, explain)
    except (BatchError, RuleError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    console.print(f"scored {result.rows:,} transactions with {result.alias} v{result.version} (threshold {result.threshold:.3f}): "
                  f"{result.flagged:,} flagged; {result.path}")


def _canary(s: Settings, until: datetime | None) -> Comparison:
    """The canary's comparison, printed: the figures a promotion is decided by."""
    from monitoring.canary import compare, labelled_canary

    comparison = compare(labelled_canary(s, until), s.costs.review_fee, s.canary.promote_min_frauds, s.canary.promote_max_ap_loss)
    for side in (comparison.champion, comparison.challenger):
        console.print(f"{side.name:>10} v{','.join(side.versions) or '-'}: {side.customers:,} customers, {side.transactions:,} labelled "
                      f"transactions, {side.frauds} frauds; AP {side.average_precision:.3f}, cost {side.cost_per_1000:,.1f} per 1,000")
    console.print(f"challenger - champion over {comparison.days:g} days (95% intervals, bootstrap over customers): "
                  f"AP {comparison.average_precision}, cost per 1,000 {comparison.cost_per_1000}")
    needed = comparison.days_needed()
    if math.isfinite(needed):
        console.print(f"days of traffic at this share for this cost difference at 80% power: {needed:,.0f} (plus {s.features.label_delay_days} days of label delay)")
    return comparison


@app.command()
def canary(until: Annotated[Optional[datetime], typer.Option(help="Judge the labels arrived by this time (default: the newest logged prediction).")] = None) -> None:
    """Compare the challenger with the champion on the canary's labelled traffic, with confidence intervals."""
    comparison = _canary(settings(), until)
    console.print("[green]meets the promotion criteria[/]" if comparison.promotable else "not yet: " + "; ".join(comparison.failures))


@app.command()
def promote(
    reason: Annotated[str, typer.Option(help="Why the challenger should serve all traffic.")],
    force: Annotated[bool, typer.Option(help="Promote although the canary does not meet the criteria (recorded in the reason).")] = False,
    until: Annotated[Optional[datetime], typer.Option(help="Judge the labels arrived by this time (default: the newest logged prediction).")] = None,
) -> None:
    """Move the `champion` alias to the challenger's version, recording who and why, once the canary
    shows it better (fraudops canary): refused, with the figures, otherwise."""
    from core.registry import promote as move

    s = settings()
    comparison = _canary(s, until)
    if not comparison.promotable:
        if not force:
            console.print("[red]refused[/]: " + "; ".join(comparison.failures) + " (--force to promote anyway)")
            raise typer.Exit(2)
        reason = f"{reason} (forced: {'; '.join(comparison.failures)})"
    previous, new = move(s, reason)
    console.print(f"champion: version {previous} -> {new}")


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why the previous champion should serve again.")]) -> None:
    """Point `champion` back at the version the last promotion replaced, recording who and why."""
    from core.registry import rollback as move_back

    current, restored = move_back(settings(), reason)
    console.print(f"champion: version {current} -> {restored}")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address.")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port.")] = None,
) -> None:
    """Run the scoring API (OpenAPI docs at /docs), FRAUDOPS_API_WORKERS processes."""
    import os

    from serving.metrics import worker_metrics_env
    from serving.workers import serve as serve_app

    s = settings(api_host=host, api_port=port)
    os.environ.update(worker_metrics_env(s.serving.api_workers))  # one set of metrics across the workers
    # Workers build the app from the environment (the factory), so every setting reaches each of them.
    serve_app("serving.app:create_app", s.serving.api_host, s.serving.api_port, s.serving.api_workers, s.serving.api_pin_workers)


@app.command()
def replay(
    start: Annotated[datetime, typer.Option(help="First transaction time to replay.")],
    days: Annotated[int, typer.Option(min=1, help="Days of transactions to replay.")] = 1,
    url: Annotated[Optional[str], typer.Option(help="API base URL (default from settings).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight.")] = 8,
    labels: Annotated[bool, typer.Option(help="Deliver each fraud label to the live state label_delay_days after its transaction, as a chargeback feed would.")] = True,
) -> None:
    """Send recorded transactions through a running API, as live traffic, and their labels as they arrive.

    Example: fraudops features materialize --until 2025-07-20 && fraudops replay --start 2025-07-20
    """
    import pandas as pd

    from features.offline import transactions_between
    from pipelines.replay import label_feed
    from pipelines.replay import replay as run

    s = settings()
    end = start + timedelta(days=days)
    tx = transactions_between(s.transactions_dir, start, end)
    stats = run(url or s.api_url, tx, concurrency, feed=label_feed(s, pd.Timestamp(start), pd.Timestamp(end)) if labels else None)
    console.print(f"sent {stats.sent:,} in {stats.seconds:.1f}s ({stats.rate:,.0f}/s); statuses {stats.statuses}; variants {stats.by_variant}")


@app.command()
def monitor(
    label: Annotated[str, typer.Option(help="Report folder name under the state folder's reports/.")] = "latest",
    since: Annotated[Optional[datetime], typer.Option(help="Only predictions for transactions at or after this time.")] = None,
    until: Annotated[Optional[datetime], typer.Option(help="Only predictions for transactions before this time.")] = None,
) -> None:
    """Drift of the prediction log against each model's reference, quality where labels have arrived,
    and a retrain on the latest labelled windows when either calls for one (FRAUDOPS_RETRAIN_ON_DRIFT)."""
    s = settings()
    prepare(s)
    from pipelines.flows import monitor_flow

    outcome = monitor_flow(s, label, since, until)
    drift = outcome.drift
    console.print(f"drift verdict: [bold]{drift.verdict}[/] over {drift.current_rows:,} predictions; report {drift.html}")
    for q in outcome.quality.values():
        console.print(f"quality of {q.variant} v{q.version} on {q.labelled_rows:,} labelled predictions: precision {q.precision:.3f}, "
                      f"recall {q.recall:.3f}, AP {q.average_precision:.3f} (reference {q.reference_average_precision:.3f}), cost {q.expected_cost:,.0f}")
    if outcome.estimate is not None and outcome.estimate.live.rows:
        live = outcome.estimate.live
        console.print(f"champion's AP estimated from its scores on {live.rows:,} predictions not labelled yet: {live.average_precision:.3f} "
                      f"({live.low:.3f}-{live.high:.3f}); report {outcome.estimate.plot}")
    judged = [g for g in outcome.segments if g.judged]
    if outcome.segments:
        console.print(f"champion by segment: {len(judged)} of {len(outcome.segments)} bands judged (enough labelled frauds); "
                      f"alarms: {', '.join(f'{g.segment} {g.band} (AP {g.average_precision:.3f} vs {g.reference_average_precision:.3f})' for g in outcome.segments if g.alarm) or 'none'}")
    for r in outcome.rules:
        console.print(f"rule {r.rule} ({r.mode}): fired on {r.hit_rate:.2%} of the window; precision {r.precision:.3f} "
                      f"({r.precision_low:.3f}-{r.precision_high:.3f}) on {r.labelled_hits:,} labelled hits; "
                      f"{r.frauds_model_missed} frauds the model's threshold missed")
    if outcome.retrain is not None:
        console.print(f"retrained because {'; '.join(outcome.reasons)}: version {outcome.retrain['version']} as {outcome.retrain['alias']}")


@app.command()
def deploy(
    work_pool: Annotated[Optional[str], typer.Option(help="Register on this work pool instead of serving here; its worker runs each flow run as the pool's job (infra/k8s: a Kubernetes Job).")] = None,
    image: Annotated[str, typer.Option(help="With --work-pool: the image each run starts, holding the code.")] = "ghcr.io/fraudops/fraudops:0.1.0",
) -> None:
    """Serve the scheduled deployments (daily retrain, hourly monitor) against PREFECT_API_URL, or register them on a work pool."""
    s = settings()
    prepare(s)
    from pipelines.deployments import register
    from pipelines.deployments import serve as serve_deployments

    if work_pool is None:
        serve_deployments(s)
        return
    ids = register(s, work_pool, image)
    console.print(f"{len(ids)} deployments registered on work pool {work_pool!r}, running in {image}")


@app.command()
def bench(
    section: Annotated[Optional[list[str]], typer.Option(help="Section to run: features, training, serving, monitoring, scaling, budget, batch, bandit, exploration, concept, soak, freshness, rules. Repeatable; default: all.")] = None,
    scale: Annotated[str, typer.Option(help="full: the handbook's 5,000 customers x 183 days; small: a quick look; smoke: the least that runs every step (make test).")] = "full",
    repeat: Annotated[int, typer.Option(min=1, help="Repetitions per timing; the table shows medians.")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON, by section and figure.")] = None,
) -> None:
    """Measure each part beside a peer in the same run: a table per section."""
    from pipelines.bench import SECTIONS
    from pipelines.bench.common import SCALES
    from pipelines.bench import run as run_bench

    if scale not in SCALES:
        raise typer.BadParameter(f"choose {', '.join(SCALES)}", param_hint="--scale")
    unknown = set(section or []) - set(SECTIONS)
    if unknown:
        raise typer.BadParameter(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}", param_hint="--section")
    base = settings()
    s = base.replace(state_dir=base.state_dir / "bench")
    prepare(s, quiet=True)
    run_bench(s, list(section or SECTIONS), scale, repeat, json_out, console)


@app.command()
def docs(check: Annotated[bool, typer.Option("--check", help="Change nothing; exit 1 if a page differs from its rendering.")] = False) -> None:
    """Render every figure in README.md and docs/*.md from the results file its marker names.

    A figure a run produced stands between `<!-- fig FILE > key > ... as FORMAT -->` and `<!-- /fig -->`;
    this writes it from docs/results/FILE (pipelines/docs.py). Example: fraudops docs --check
    """
    from pipelines.docs import FigureError, stale_pages
    from pipelines.docs import main as render_all

    try:
        stale = stale_pages()
        if check:
            for page in stale:
                console.print(f"[red]{page}[/] differs from its rendering: run fraudops docs")
            raise typer.Exit(1 if stale else 0)
        render_all()
    except FigureError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@app.command()
def demo(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the run's figures here (the docs quote docs/results/demo.json).")] = None,
) -> None:
    """Run everything end to end on embedded defaults: simulate, features, train twice, serve, replay, monitor.

    The run's figures go to the state folder's reports/demo.json (and to --json). Example: fraudops demo --json docs/results/demo.json
    """
    from pipelines.demo import run

    s = settings()
    run(s, console)
    if json_out:
        shutil.copyfile(s.reports_dir / "demo.json", json_out)


if __name__ == "__main__":
    app()
