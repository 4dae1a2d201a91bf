"""Every bench section prepares its own data from an empty state and measures once, at the smoke
scale: a section that cannot run on a fresh clone fails here, not in a reader's hands. The figures
of a smoke run mean nothing; that they are numbers is all that is checked."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from pipelines.bench import SECTIONS
from tests.conftest import tiny_settings

# Each runs in make test. The scaling section starts a Dask cluster per size and the concept section
# trains four models: they prepare their data as the others do (simulate, deliver the chargebacks),
# and their measurement is make bench's.
SMOKED = ("features", "training", "budget", "batch", "monitoring", "bandit", "exploration", "serving", "soak", "freshness", "rules")


def load_tools() -> None:
    """The serving section drives its servers with wrk and hey (Debian packages; .ci/run installs them)."""
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed (Debian packages wrk and hey; make bench-tools installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true makes it mandatory")
        pytest.skip(message)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state the serving section prepares (a trained champion), which the soak and the freshness
    probes then use: one training for the three, as `make bench` shares it."""
    return tmp_path_factory.mktemp("served")


@pytest.mark.parametrize("name", SMOKED)
def test_the_section_runs_from_an_empty_state(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if name == "serving":
        load_tools()
    state = request.getfixturevalue("served") if name in ("serving", "soak", "freshness") else tmp_path
    section = SECTIONS[name](tiny_settings(state / "bench"), "smoke", 1)
    assert section.rows, f"{name}: measured nothing"
    values = section.figures()
    missing = [figure for figure, value in values.items() if isinstance(value, float) and not math.isfinite(value) and "Redis" not in figure]
    assert not missing, f"{name}: no figure for {missing}"
    if name == "freshness":  # the one claim a smoke run can judge: every probe's write was seen by the other process
        unseen = {figure: values[f"{figure} [seen]"] for figure, _, _, _ in section.rows if values[f"{figure} [seen]"] != values[f"{figure} [probes]"]}
        assert not unseen, f"writes the other API process did not see: {unseen}"


def test_every_section_is_smoked_or_says_why_not() -> None:
    assert set(SMOKED) | {"scaling", "concept"} == set(SECTIONS)
