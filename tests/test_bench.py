"""Every bench section prepares its own data from an empty state and measures once, at the smoke
scale: a section that cannot run on a fresh clone fails here, not in a reader's hands. The figures
of a smoke run mean nothing; that they are numbers is all that is checked."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipelines.bench import SECTIONS
from tests.conftest import tiny_settings

# Each runs in make test. The serving section needs wrk and hey and six servers for minutes, the
# scaling section a Dask cluster per size, the concept section four trainings: their preparation
# is what budget and batch run here (`serving_section.prepared`), their measurement is make bench's.
SMOKED = ("features", "training", "budget", "batch", "monitoring", "bandit", "exploration")


@pytest.mark.parametrize("name", SMOKED)
def test_the_section_runs_from_an_empty_state(name: str, tmp_path: Path) -> None:
    section = SECTIONS[name](tiny_settings(tmp_path / "bench"), "smoke", 1)
    assert section.rows, f"{name}: measured nothing"
    values = section.figures()
    missing = [figure for figure, value in values.items() if not math.isfinite(value) and "Redis" not in figure]
    assert not missing, f"{name}: no figure for {missing}"


def test_every_section_is_smoked_or_says_why_not() -> None:
    assert set(SMOKED) | {"serving", "scaling", "concept"} == set(SECTIONS)
