"""The settings by concern: every documented variable still reaches its group under its flat name,
flat keyword arguments and `replace` land in their group and are validated, and a default is
written once, in core/settings.py."""

from __future__ import annotations

import ast
import re
import types
import typing
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from core.settings import REPO_ROOT, CostSettings, Settings

PACKAGES = ("core", "features", "model", "training", "monitoring", "serving", "pipelines")
# Parameters that share a setting's name but not its meaning, so their defaults are no copy of one.
NOT_SETTINGS = {
    ("monitoring/canary.py", "compare", "seed"),  # the bootstrap's seed, not the simulated world's
    ("serving/workers.py", "serve", "log_level"),  # uvicorn's own log level, not the app's access lines
    ("pipelines/cli.py", "replay", "days"),  # `fraudops replay --days`: days to replay, not days simulated
}
DOCUMENTED = [REPO_ROOT / "README.md", REPO_ROOT / "docker-compose.yml", *sorted((REPO_ROOT / "docs").glob("*.md")),
              *sorted(p for p in (REPO_ROOT / "infra" / "k8s").rglob("*") if p.is_file())]


def documented_names() -> list[str]:
    """Every `FRAUDOPS_*` variable the docs, compose and Kubernetes files set or name (not families
    such as `FRAUDOPS_GUARDRAIL_*`, which tests/test_docs.py checks)."""
    found = {name for path in DOCUMENTED for name in re.findall(r"\bFRAUDOPS_([A-Z][A-Z0-9_]*[A-Z0-9])\b", path.read_text())}
    return sorted(name.lower() for name in found)


def _field(name: str) -> FieldInfo:
    group = Settings.group_of().get(name)
    return (Settings.groups()[group] if group else Settings).model_fields[name]


def other_value(name: str, tmp_path: Path) -> tuple[str, object]:
    """A valid value of setting `name` other than its default: as the variable's text, and as read."""
    info = _field(name)
    default = info.get_default(call_default_factory=True)
    kinds = [t for t in typing.get_args(info.annotation) if t is not type(None)] \
        if isinstance(info.annotation, types.UnionType) else [info.annotation]
    kind = kinds[0]
    if name.endswith("_cron"):
        return "7 5 * * *", "7 5 * * *"
    if typing.get_origin(kind) is typing.Literal:
        value = next(v for v in typing.get_args(kind) if v != default)
        return str(value), value
    if kind is bool:
        return str(not default).lower(), not default
    if kind is int:
        return str(default + 1), default + 1
    if kind is float:
        return str(default / 2), default / 2
    if kind is Path:
        return str(tmp_path), tmp_path
    if kind is date:
        return "2025-01-02", date(2025, 1, 2)
    return f"{name}-value", f"{name}-value"


def test_the_documents_name_variables() -> None:
    assert len(documented_names()) > 10  # the regular expression still finds them


@pytest.mark.parametrize("name", documented_names())
def test_every_documented_variable_reaches_its_group(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert name in Settings.names(), f"FRAUDOPS_{name.upper()} is documented but no setting reads it"
    text, expected = other_value(name, tmp_path)
    monkeypatch.setenv(f"FRAUDOPS_{name.upper()}", text)
    settings = Settings()
    group = Settings.group_of().get(name)
    assert getattr(getattr(settings, group) if group else settings, name) == expected


def test_a_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("FRAUDOPS_TOP_K=7\nFRAUDOPS_DECLINE_FEE=3.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAUDOPS_DECLINE_FEE", "4.5")
    costs = Settings().costs
    assert (costs.top_k, costs.decline_fee) == (7, 4.5)


def test_flat_arguments_land_in_their_group_and_the_rest_still_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_REVIEW_FEE", "6.5")
    settings = Settings(top_k=3, customers=5, retrain_on_drift=False)
    assert (settings.costs.top_k, settings.costs.review_fee) == (3, 6.5)
    assert (settings.simulation.customers, settings.monitoring.retrain_on_drift) == (5, False)
    assert Settings(costs=CostSettings(top_k=4), decline_fee=1.0).costs == CostSettings(top_k=4, decline_fee=1.0)


def test_replace_lands_in_the_group_keeps_the_rest_and_validates(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, top_k=3, admin_token="a")
    changed = settings.replace(top_k=5, days=120, state_dir=tmp_path / "other")
    assert (changed.costs.top_k, changed.simulation.days, changed.state_dir) == (5, 120, tmp_path / "other")
    assert changed.serving.admin_token == "a" and settings.costs.top_k == 3
    with pytest.raises(ValidationError, match="top_k"):
        settings.replace(top_k=0)
    with pytest.raises(ValidationError, match="exceeds days"):
        settings.replace(days=10)  # the windows no longer fit: a check across groups
    with pytest.raises(TypeError, match="no such settings: top_kk"):
        settings.replace(top_kk=5)


def test_a_bad_flat_argument_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="top_k"):
        Settings(top_k=0)
    with pytest.raises(ValidationError, match="labels_token must differ"):
        Settings(admin_token="same", labels_token="same")


def test_the_logged_settings_hide_tokens_and_passwords() -> None:
    from pipelines.flows.train import _redacted

    logged = _redacted(Settings(admin_token="a", labels_token="b", labels_url="postgresql+psycopg://me:secret@db/labels"))
    serving = typing.cast(dict[str, object], logged["serving"])
    assert "admin_token" not in serving and "labels_token" not in serving
    assert typing.cast(dict[str, object], logged["stores"])["labels_url"] == "postgresql+psycopg://me:***@db/labels"
    assert "secret" not in repr(logged)


def _literal(node: ast.expr | None) -> bool:
    """A constant written in place (`7`, `-1`, `"x"`), not a reference to one."""
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and node.value is not None


def _dataclass_defaults(node: ast.ClassDef) -> list[tuple[str, ast.expr | None]]:
    def named(d: ast.expr) -> str:
        target = d.func if isinstance(d, ast.Call) else d
        return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")

    if not any(named(d) == "dataclass" for d in node.decorator_list):
        return []
    out: list[tuple[str, ast.expr | None]] = []
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            value = item.value
            if isinstance(value, ast.Call) and named(value.func) == "field":
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            out.append((item.target.id, value))
    return out


def second_copies() -> list[str]:
    """Every function parameter or dataclass field named like a setting whose default is a literal:
    a second copy of the setting's default, free to drift from it."""
    names = Settings.names()
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                pairs: list[tuple[str, ast.expr | None]] = []
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    positional = [*node.args.posonlyargs, *node.args.args]
                    pairs += zip([a.arg for a in positional[len(positional) - len(node.args.defaults):]], node.args.defaults)
                    pairs += [(a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults)]
                elif isinstance(node, ast.ClassDef):
                    pairs += _dataclass_defaults(node)
                where = path.relative_to(REPO_ROOT).as_posix(), getattr(node, "name", "")
                found += [f"{where[0]}:{getattr(node, 'lineno', 0)}: {name}" for name, value in pairs
                          if name in names and _literal(value) and (*where, name) not in NOT_SETTINGS]
    return found


def test_a_default_is_written_once() -> None:
    assert second_copies() == []


def test_the_environment_of_a_child_process_rebuilds_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.demo import settings_env

    settings = Settings(state_dir=tmp_path, top_k=3, customers=5, admin_token="a")
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
