"""Figures in the docs, rendered from the results files that runs wrote.

A figure a run produced is written once, by that run, into `docs/results/*.json`, and reaches every
page that quotes it through a marker around it:

    <!-- fig handbook-train.json > models > lightgbm > roc_auc as {:.3f} -->0.887<!-- /fig -->

The marker names the results file, the keys down to the figure (separated by ` > `; a key holds
neither ` > ` nor ` as `), and after `as` the Python format it is shown in (text around the braces is
kept: `{:,.0f} req/s`). No `|` in a marker: it would split a Markdown table's cell. `fraudops docs` (`make
docs`) rewrites what stands between each marker and its end; tests/test_docs.py fails when a page
differs from its rendering, and when a number with a unit stands in prose outside any marker and
outside the short allowlist of definitions and settings (`typed_figures`). So a figure cannot drift
from its run, and a page cannot quote a figure no run wrote.

Every results file also carries `run`: when, at which commit, on which machine and by which command
it was written (`run_stamp`), which the pages show beside the figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.settings import REPO_ROOT

RESULTS = REPO_ROOT / "docs" / "results"
PAGES = ("README.md", "docs/*.md")
MARKER = re.compile(r"<!-- fig (?P<locator>.+?) as (?P<format>[^<>]*?\{[^<>]*?) -->(?P<shown>.*?)<!-- /fig -->", re.S)
# Prose that is not a figure of a run: code, links' targets, HTML comments, diagrams.
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]+`|<!--.*?-->|\]\([^)]*\)", re.S)
# A number with a unit, a metric's decimal (0.887) or a count with thousands separators (58,264).
TYPED = re.compile(
    r"(?<![\w.\-/#])\d[\d,]*(?:\.\d+)?\s?(?:ms|µs|us|s|req/s|rows/s|%|x|MB|GB|GiB|MiB|bytes|minutes?|min|seconds?|hours?|M|k)\b"
    r"|(?<![\w.\-/])0\.\d{2,}\b"
    r"|(?<![\w.\-/])\d{1,3}(?:,\d{3})+\b"
)


class FigureError(ValueError):
    """A marker that names no file, no key, or a format its value does not take; says which."""


def run_stamp(command: str) -> dict[str, object]:
    """When, where and how a results file was written, to be shown beside its figures."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "commit": commit,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "command": command,
    }


def write_results(path: Path, figures: dict[str, Any], command: str | None = None) -> None:
    """A results file: the figures and the stamp of the run that measured them."""
    stamp = run_stamp(command or " ".join(["fraudops", *sys.argv[1:]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": stamp, **figures}, indent=2, default=str) + "\n")


def lookup(locator: str, cache: dict[str, Any], results: Path = RESULTS) -> Any:
    """The value a marker's locator names: `FILE > key > key`."""
    name, *keys = [part.strip() for part in locator.split(" > ")]
    if name not in cache:
        path = results / name
        if not path.is_file():
            raise FigureError(f"{locator}: no results file docs/results/{name}")
        cache[name] = json.loads(path.read_text())
    value = cache[name]
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise FigureError(f"{locator}: {name} has no key {' > '.join(keys[:depth + 1])!r}")
        value = value[key]
    return value


def render(text: str, cache: dict[str, Any] | None = None, results: Path = RESULTS) -> str:
    """The page with every marker's figure written from its results file."""
    cache = {} if cache is None else cache

    def figure(match: re.Match[str]) -> str:
        value = lookup(match["locator"], cache, results)
        try:
            shown = match["format"].format(value)
        except (ValueError, TypeError, IndexError) as exc:
            raise FigureError(f"{match['locator']}: {value!r} does not take the format {match['format']!r} ({exc})") from None
        return f"<!-- fig {match['locator']} as {match['format']} -->{shown}<!-- /fig -->"

    return MARKER.sub(figure, text)


def pages(root: Path = REPO_ROOT) -> list[Path]:
    return [path for pattern in PAGES for path in sorted(root.glob(pattern))]


def typed_figures(text: str, allowed: frozenset[str]) -> list[str]:
    """Numbers with units in the page's prose that no marker renders and the allowlist does not hold."""
    prose = NOT_PROSE.sub(" ", MARKER.sub(" ", text))
    return [m.group(0) for m in TYPED.finditer(prose) if m.group(0) not in allowed]


def stale_pages(root: Path = REPO_ROOT) -> list[str]:
    """The pages whose figures differ from what their results files say."""
    cache: dict[str, Any] = {}
    return [str(path.relative_to(root)) for path in pages(root) if render(path.read_text(), cache) != path.read_text()]


def main() -> None:
    """Re-render every page in place (`make docs`)."""
    cache: dict[str, Any] = {}
    for path in pages():
        text = path.read_text()
        rendered = render(text, cache)
        if rendered != text:
            path.write_text(rendered)
            print(f"rendered {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
