"""Rules beside the model: what a fraud team switches on in minutes when an attack starts, before a
retrain can learn it.

A rule is a condition over the request and its live features (`amount`, `customer_tx_count_1h`,
`terminal_risk_7d`, the model's `score`...), an action (allow, step_up, review, decline) and a
mode. An active rule acts; a shadow rule is evaluated and logged but changes nothing, so its hit rate
and, once labels arrive, its precision can be read before it is switched on (monitoring/rules.py).

Rules live in a TOML file the settings name (`FRAUDOPS_RULES_FILE`)::

    [[rule]]
    name = "card-testing-burst"
    when = "customer_tx_count_1h >= 5 and amount < 10"
    action = "decline"
    mode = "shadow"

A condition is a small expression language, checked when the file is read: numbers, the known
names, comparisons, `and`, `or`, `not`, `+ - * /`. Anything else (a call, an attribute, a string, an
unknown name) refuses the file with a message that names the rule, and whoever loaded it keeps the
rules it had. A missing feature (absent or null) is NaN, so a comparison on it is false; a division by zero is NaN.
All conditions compile into one Python function, so 50 rules cost one call and about 50
comparisons per request (`make bench`, section rules).

Precedence, once the model's band is known: an active `allow` approves, unless an active `decline`
fired too (a block beats an allow); a block or allow list's entry (features/lists.py) counts as an
active rule of that action; otherwise the decision is the more severe of the band and the
active rules' actions (approve < step_up < review < decline). A rule never lowers the band except
by `allow`.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from model.decisions import DECISIONS, Decision

Action = Literal["allow", "step_up", "review", "decline"]
Mode = Literal["active", "shadow"]
ACTIONS: tuple[str, ...] = get_args(Action)
MODES: tuple[str, ...] = get_args(Mode)
NAME_PATTERN = "lowercase letters, digits, - and _, starting with a letter, at most 64"
OPERATORS = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp, ast.Add, ast.Sub,
             ast.Mult, ast.Div, ast.Compare, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Name, ast.Load, ast.Constant)


class RuleError(ValueError):
    """A rules file that cannot run: its message names the file and the rule."""


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: Action
    mode: Mode = "active"
    description: str = ""


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name) is not None


def _condition(rule: str, when: str, known: Collection[str]) -> ast.expr:
    """The parsed condition, checked against the language and the known names."""
    try:
        tree = ast.parse(when, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"rule {rule!r}: `{when}` is not an expression ({exc.msg})") from None
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, OPERATORS):  # an operator has no text of its own: name its expression
                shown = child if isinstance(child, ast.expr) else node
                raise RuleError(f"rule {rule!r}: `{ast.unparse(shown)}` is not allowed in a condition (numbers, names, "
                                "comparisons, and/or/not, + - * / only)")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, int | float)):
            raise RuleError(f"rule {rule!r}: {node.value!r} is not a number")
        if isinstance(node, ast.Name) and node.id not in known:
            raise RuleError(f"rule {rule!r}: no such name {node.id!r}; known: {', '.join(sorted(known))}")
    return tree.body


class _Compile(ast.NodeTransformer):
    """Names become the function's local variables, division the NaN-safe `_div`."""

    def __init__(self, local: dict[str, str]) -> None:
        self.local = local

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return ast.Name(self.local[node.id], ast.Load())

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Div):
            return ast.Call(ast.Name("_div", ast.Load()), [node.left, node.right], [])
        return node


@dataclass(frozen=True)
class RuleSet:
    """Validated rules, compiled into one function of the answer's values."""

    rules: tuple[Rule, ...] = ()
    source: str = "no rules"
    _fire: Callable[[Mapping[str, float], float], tuple[bool, ...]] = field(default=lambda values, score: (), repr=False, compare=False)

    @classmethod
    def build(cls, rules: list[Rule], known: Collection[str], source: str = "rules") -> RuleSet:
        seen: set[str] = set()
        conditions = []
        for rule in rules:
            if not _valid_name(rule.name):
                raise RuleError(f"{source}: rule name {rule.name!r}: {NAME_PATTERN}")
            if rule.name in seen:
                raise RuleError(f"{source}: rule {rule.name!r} is defined twice")
            seen.add(rule.name)
            if rule.action not in ACTIONS:
                raise RuleError(f"{source}: rule {rule.name!r}: action {rule.action!r} is not one of {', '.join(ACTIONS)}")
            if rule.mode not in MODES:
                raise RuleError(f"{source}: rule {rule.name!r}: mode {rule.mode!r} is not one of {', '.join(MODES)}")
            try:
                conditions.append(_condition(rule.name, rule.when, {*known, "score"}))
            except RuleError as exc:
                raise RuleError(f"{source}: {exc}") from None
        used = sorted({node.id for c in conditions for node in ast.walk(c) if isinstance(node, ast.Name)})
        local = {name: "score" if name == "score" else f"v{i}" for i, name in enumerate(used)}
        compiled = [ast.unparse(_Compile(local).visit(c)) for c in conditions]
        reads = [f"    {local[name]} = values.get({name!r})\n    {local[name]} = nan if {local[name]} is None else {local[name]}"
                 for name in used if name != "score"]
        lines = ["def fire(values, score):", *reads,
                 f"    return ({''.join(f'bool({c}), ' for c in compiled)})"]
        namespace: dict[str, object] = {"nan": math.nan, "_div": _div, "bool": bool}
        exec(compile("\n".join(lines), f"<{source}>", "exec"), namespace)  # built from checked conditions only
        return cls(tuple(rules), source, namespace["fire"])  # type: ignore[arg-type]

    def fired(self, values: Mapping[str, float], score: float) -> list[Rule]:
        """The rules whose condition holds for these values and the model's score, in the file's order."""
        return [rule for rule, hit in zip(self.rules, self._fire(values, score)) if hit]

    def decide(self, band: Decision, values: Mapping[str, float], score: float,
               listed: Sequence[tuple[str, Action]] = ()) -> tuple[Decision, list[str], list[str]]:
        """The decision after the active rules and the block and allow lists' entries that name this
        card or terminal (`listed`, features/lists.py: active rules by another name), and the names
        of the active and of the shadow rules that fired (module docstring: precedence)."""
        if not self.rules and not listed:
            return band, [], []
        hits = self.fired(values, score) if self.rules else []
        active = [(rule.name, rule.action) for rule in hits if rule.mode == "active"] + list(listed)
        return _precedence(band, [action for _, action in active]), [name for name, _ in active], [r.name for r in hits if r.mode == "shadow"]

    def decide_rows(self, bands: Sequence[Decision], rows: Sequence[Mapping[str, float]], scores: Sequence[float],
                    listed: Sequence[Sequence[tuple[str, Action]]] | None = None) -> tuple[list[Decision], list[str], list[str]]:
        """`decide` for each row (a batch's), with each row's list entries: the decisions, and the
        names that fired, comma-joined as the prediction log keeps them."""
        if not self.rules and listed is None:
            return list(bands), [""] * len(bands), [""] * len(bands)
        rows = rows if self.rules else [{}] * len(bands)
        decided = [self.decide(band, row, float(score), entries) for band, row, score, entries in
                   zip(bands, rows, scores, listed if listed is not None else [()] * len(bands))]
        return [d for d, _, _ in decided], [",".join(a) for _, a, _ in decided], [",".join(s) for _, _, s in decided]


def _precedence(band: Decision, actions: list[Action]) -> Decision:
    if "decline" in actions:
        return "decline"
    if "allow" in actions:
        return "approve"
    return DECISIONS[max([DECISIONS.index(band), *(DECISIONS.index(a) for a in actions)])]


NONE = RuleSet()


def parse(text: str, known: Collection[str], source: str = "rules") -> RuleSet:
    """Rules from TOML text: `[[rule]]` tables of name, when, action, mode (default active) and
    description."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{source}: not TOML ({exc})") from None
    unknown = set(document) - {"rule"}
    if unknown:
        raise RuleError(f"{source}: unknown tables {', '.join(sorted(unknown))}; rules are [[rule]] tables")
    rules = []
    for i, table in enumerate(document.get("rule", [])):
        name = table.get("name", f"#{i + 1}")
        missing = {"name", "when", "action"} - set(table)
        extra = set(table) - {"name", "when", "action", "mode", "description"}
        if missing or extra:
            problem = f"missing {', '.join(sorted(missing))}" if missing else f"unknown keys {', '.join(sorted(extra))}"
            raise RuleError(f"{source}: rule {name!r}: {problem}")
        if not all(isinstance(table.get(key, ""), str) for key in ("name", "when", "action", "mode", "description")):
            raise RuleError(f"{source}: rule {name!r}: name, when, action, mode and description are text")
        rules.append(Rule(table["name"], table["when"], table["action"], table.get("mode", "active"), table.get("description", "")))
    return RuleSet.build(rules, known, source)


def load(path: Path | None, known: Collection[str]) -> RuleSet:
    """The rules in `path`; none without one. A file that is missing or invalid raises RuleError."""
    if path is None:
        return NONE
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse(text, known, str(path))
