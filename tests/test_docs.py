"""The docs are a worked answer people will run: every command, setting, file, test and link they
name must exist, or a reader follows them into an error."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer

from core.settings import Settings
from pipelines.cli import app
from pipelines.docs import FigureError, render, typed_figures

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"```(?!mermaid)[^\n]*\n(.*?)```|```mermaid\n.*?```|`([^`\n]+)`", re.S)  # diagrams are not code
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"^(?:\.github|\.ci|core|docs|features|infra|model|monitoring|pipelines|serving|tests|training)/[\w./-]*[\w/]$|^[\w-]+\.(?:toml|yml|md)$")
MAKE_TARGET = re.compile(r"^([a-z][\w-]*):", re.M)


def code_of(page: Path) -> list[str]:
    return [block or span for block, span in CODE.findall(page.read_text())]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.fixture(scope="module")
def cli() -> Any:
    return typer.main.get_command(app)  # a click-style group (typer carries its own copy of click)


def test_there_is_a_page_per_step_of_the_answer() -> None:
    steps = sorted(p.name for p in (REPO_ROOT / "docs").glob("[01][0-9]-*.md"))
    assert [name[:2] for name in steps] == [f"{i:02d}" for i in range(0, 11)]  # step 0, requirements, to step 10, scaling
    index = (REPO_ROOT / "docs" / "README.md").read_text()
    assert all(f"({name})" in index for name in [*steps, "glossary.md"]), "the index links every page"
    assert "```mermaid" in index and "```mermaid" in (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_named_exists(page: Path, cli: Any) -> None:
    targets = set(MAKE_TARGET.findall((REPO_ROOT / "Makefile").read_text()))
    for code in code_of(page):
        for target in re.findall(r"\bmake ([a-z][\w-]*)", code):
            assert target in targets, f"{page.name}: `make {target}` is not a Makefile target"
        for line in code.splitlines():
            for invocation in re.findall(r"\bfraudops ((?:[a-z][\w-]* ?)+(?:[^`&|;]*))", line):
                command = cli
                for word in invocation.split():
                    if word.startswith("--"):
                        options = {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", []))} | {"--help"}
                        assert word.split("=")[0] in options, f"{page.name}: `fraudops {invocation}`: no option {word}"
                    elif hasattr(command, "commands"):  # a group: the word names a subcommand
                        assert word in command.commands, f"{page.name}: `fraudops {invocation}`: no command {word!r}"
                        command = command.commands[word]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_named_exists(page: Path) -> None:
    for name in re.findall(r"\bFRAUDOPS_([A-Z][A-Z0-9_]*)", page.read_text()):
        if name.endswith("_"):  # a family, such as FRAUDOPS_GUARDRAIL_*
            assert any(f.startswith(name.lower()) for f in Settings.names()), f"{page.name}: no setting FRAUDOPS_{name}*"
        else:
            assert name.lower() in Settings.names(), f"{page.name}: FRAUDOPS_{name} is not a setting"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_test_and_link_named_exists(page: Path) -> None:
    for code in code_of(page):
        for token in code.split():
            path, _, name = token.strip("`,.:;()").partition("::")
            if not PATH.match(path) or "*" in path or "<" in path:
                continue
            assert (REPO_ROOT / path).exists(), f"{page.name}: {path} does not exist"
            if name:
                source = (REPO_ROOT / path).read_text()
                assert re.search(rf"^\s*(?:async )?(?:def|class) {re.escape(name)}\b", source, re.M), f"{page.name}: no {name} in {path}"
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target} is broken"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {linked.name} has no heading #{anchor}"


def test_every_alert_has_its_row_in_the_operations_table() -> None:
    """On-call reads the table, not the rules file: an alert missing from it pages someone with no first look."""
    rules = re.findall(r"- alert: (\w+)", (REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    rows = re.findall(r"^\| `(Fraudops\w+)` \|", (REPO_ROOT / "docs" / "08-operations.md").read_text(), re.M)
    assert rules and sorted(rows) == sorted(rules)


def test_the_glossary_is_sorted() -> None:
    terms = re.findall(r"^\*\*(.+?)\.\*\*", (REPO_ROOT / "docs" / "glossary.md").read_text(), re.M)
    assert len(terms) > 30 and terms == sorted(terms, key=str.lower)


# The serving appendix is a dated measurement log, each figure beside the day it was taken: the one
# page that may type its figures. Every other page renders each figure from a results file.
TYPED_PAGES = {"docs/serving-measurements.md"}
# Numbers with units that are definitions, not figures of a run: the rates the serving bench holds
# (and the open-loop generator's own check).
NOT_FIGURES = frozenset({"500 req/s", "1,000 req/s", "2,000 req/s"})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_shows_what_its_results_files_say(page: Path) -> None:
    """A figure between markers is the results file's, as `fraudops docs` renders it: a rerun that
    changed a figure, or a hand edit between the markers, fails here until `make docs` is run."""
    assert render(page.read_text()) == page.read_text(), f"{page.name} differs from its rendering: run make docs"


@pytest.mark.parametrize("page", [p for p in PAGES if str(p.relative_to(REPO_ROOT)) not in TYPED_PAGES], ids=lambda p: p.name)
def test_no_figure_is_typed_by_hand(page: Path) -> None:
    typed = typed_figures(page.read_text(), NOT_FIGURES)
    assert not typed, f"{page.name}: figures with no marker (wrap each in <!-- fig FILE > key as FORMAT -->...<!-- /fig -->): {typed}"


def test_a_marker_shows_its_figure_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"serving": {"p99 at 500 req/s": 2.345}}))
    marker = "p99 <!-- fig run.json > serving > p99 at 500 req/s as {:.1f} ms -->9 ms<!-- /fig --> at 500"
    assert render(marker, results=tmp_path) == "p99 <!-- fig run.json > serving > p99 at 500 req/s as {:.1f} ms -->2.3 ms<!-- /fig --> at 500"
    with pytest.raises(FigureError, match="no key 'serving > p50'"):
        render(marker.replace("p99 at 500 req/s as", "p50 as"), results=tmp_path)
    with pytest.raises(FigureError, match="no results file docs/results/other.json"):
        render(marker.replace("run.json", "other.json"), results=tmp_path)
    assert typed_figures("p99 2.3 ms at 500 req/s, AUC 0.887, 58,264 rows", frozenset()) == ["2.3 ms", "500 req/s", "0.887", "58,264"]
    assert typed_figures(marker + " and `3 ms` in code", frozenset()) == []


def test_every_results_file_says_when_where_and_by_what_it_was_run() -> None:
    for path in sorted((REPO_ROOT / "docs" / "results").glob("*.json")):
        run = json.loads(path.read_text()).get("run", {})
        assert {"date", "commit", "machine", "command"} <= set(run), f"{path.name}: no run stamp (pipelines/docs.py::run_stamp)"


BARE = re.compile(r"^([a-z_]+\.py)(?:::(\w+))?$")
PACKAGES = ("core", "features", "model", "training", "monitoring", "serving", "pipelines", "tests")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_bare_file_and_symbol_named_exists(page: Path) -> None:
    """`state.py` or `quality.py::judge` without its folder: a file of that name must exist in a
    package, and one of them must define the symbol."""
    for code in code_of(page):
        match = BARE.match(code.strip())
        if match is None:
            continue
        name, symbol = match.groups()
        files = [f for package in PACKAGES for f in (REPO_ROOT / package).rglob(name)]
        assert files, f"{page.name}: no {name} in the packages"
        if symbol:
            assert any(re.search(rf"^\s*(?:async )?(?:def|class) {symbol}\b", f.read_text(), re.M) for f in files), \
                f"{page.name}: no {symbol} in any {name}"
