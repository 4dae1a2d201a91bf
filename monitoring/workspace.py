"""History across monitor runs: every run's Evidently snapshots go into one local workspace, which the
Evidently UI serves (`make monitor-ui`, or the `evidently-ui` compose service), so a reviewer sees the
drift share and the live quality over weeks, not one report at a time."""

from __future__ import annotations

from pathlib import Path

from evidently.core.report import Snapshot

PROJECT = "fraudops monitoring"


def record(path: Path, label: str, snapshots: list[Snapshot]) -> int:
    """Add the snapshots as runs named after the monitored window; returns how many were added."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(path))
    found = workspace.search_project(PROJECT)
    project = found[0] if found else workspace.create_project(PROJECT, description="Drift and live quality of the fraud model")
    for snapshot in snapshots:
        workspace.add_run(project.id, snapshot, include_data=False, name=label)
    return len(snapshots)
