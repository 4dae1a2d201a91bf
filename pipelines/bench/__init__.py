"""`fraudops bench`: measured performance, each figure beside a peer measured in the same run.

Timings are repeated and reported as medians (and p99 for latencies), never a single run; the
machine's own noise is part of what a reader should see. One module per section.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.settings import Settings
from pipelines.bench.bandit_section import bandit_section
from pipelines.bench.batch_section import batch_section
from pipelines.bench.budget_section import budget_section
from pipelines.bench.common import Section
from pipelines.bench.concept_section import concept_section
from pipelines.bench.exploration_section import exploration_section
from pipelines.bench.features_section import features_section
from pipelines.bench.freshness_section import freshness_section
from pipelines.bench.monitoring_section import monitoring_section
from pipelines.bench.rules_section import rules_section
from pipelines.bench.scaling_section import scaling_section
from pipelines.bench.serving_section import serving_section
from pipelines.bench.soak_section import soak_section
from pipelines.bench.training_section import training_section
from pipelines.docs import write_results

SECTIONS: dict[str, Callable[[Settings, str, int], Section]] = {
    "features": features_section,
    "training": training_section,
    "serving": serving_section,
    "monitoring": monitoring_section,
    "scaling": scaling_section,
    "budget": budget_section,
    "batch": batch_section,
    "bandit": bandit_section,
    "exploration": exploration_section,
    "concept": concept_section,
    "soak": soak_section,
    "freshness": freshness_section,
    "rules": rules_section,
}


def run(settings: Settings, sections: list[str], scale: str, repeat: int, json_path: Path | None, console: Console) -> dict[str, dict[str, float | str]]:
    results: dict[str, dict[str, float | str]] = {}
    for name in sections:
        with console.status(f"benchmarking {name}"):
            section = SECTIONS[name](settings, scale, repeat)
        table = Table(title=section.name)
        for column in ("figure", "value", "unit", "note"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for figure, value, unit, note in section.rows:
            table.add_row(figure, f"{value:,.3f}" if value < 100 else f"{value:,.0f}", unit, note)
        console.print(table)
        results[name] = section.figures()
    if json_path:
        write_results(json_path, results, f"fraudops bench --section {' --section '.join(sections)} --scale {scale} --repeat {repeat}")
    return results
