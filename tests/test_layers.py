"""The packages stand in one order: core at the ground, features and the model on it, training,
monitoring and serving above them, pipelines on top. An import against that order is a design error that compiles and runs,
so these tests are what keeps the layering true."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from pipelines.package_map import ALLOWED, ORDER, PAGES, import_edges, imported_packages, render

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_follows_the_layer_order() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {other}"
        for package, allowed in ALLOWED.items()
        for path in sorted((ROOT / package).rglob("*.py"))
        for other in sorted(imported_packages(path) - allowed - {package})
    ]
    assert not wrong, f"imports against the order {ORDER}:\n" + "\n".join(wrong)


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines import flows\n    import monitoring.drift\n")
    assert imported_packages(module) == {"pipelines", "monitoring"}


def test_the_api_loads_no_orchestration_or_monitoring_code() -> None:
    """In a fresh interpreter, as a worker starts: Prefect alone takes seconds to import, and DuckDB
    and Feast serve only the offline side."""
    probe = (
        "import sys, serving.app, serving.workers\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'pipelines', 'training', 'prefect', 'monitoring', 'evidently', 'duckdb', 'feast'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the API process loaded {result.stdout.strip()}"


def test_the_package_map_in_the_docs_is_the_code_s() -> None:
    """README.md and docs/package-map.md show the imports as they are: regenerate with
    `python -m pipelines.package_map` after moving an import."""
    edges = import_edges(ROOT)
    for page in PAGES:
        text = (ROOT / page).read_text()
        assert "```mermaid" in text and render(text, edges) == text, f"{page}: run python -m pipelines.package_map"


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen() -> None:
    """A function over 60 lines does more than one thing: split it where its comments already say so."""
    long = [
        f"{path.relative_to(ROOT)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in [*ALLOWED, "tests"]
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
