"""Rules beside the model (model/rules.py): the compiled conditions say what the expressions say, the
precedence between rule actions and the band holds, and every bad file is refused naming its rule."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from features.live import ANSWER_VALUES
from model.rules import NONE, RuleError, load, parse

KNOWN = ("amount", "customer_tx_count_1h", "terminal_risk_7d", "customer_mean_amount_7d")


def rule(name: str, when: str, action: str = "decline", mode: str = "active") -> str:
    return f'[[rule]]\nname = "{name}"\nwhen = "{when}"\naction = "{action}"\nmode = "{mode}"\n'


CONDITIONS = [
    "amount > 100",
    "customer_tx_count_1h >= 3 and amount < 10",
    "not terminal_risk_7d <= 0.2 or amount == 5",
    "0 < amount - customer_mean_amount_7d * 2 <= 50",
    "-amount + 3 != customer_tx_count_1h",
    "score > 0.5 and (amount > 20 or customer_tx_count_1h > 4)",
]


def test_the_compiled_conditions_say_what_the_expressions_say() -> None:
    """Against Python's own evaluation of the same text, over values on both sides of every cut."""
    rules = parse("".join(rule(f"r{i}", when) for i, when in enumerate(CONDITIONS)), KNOWN)
    grid = itertools.product([0.0, 5.0, 30.0, 500.0], [0.0, 3.0, 8.0], [0.1, 0.5], [2.0, 40.0], [0.2, 0.9])
    checked = 0
    for amount, count, risk, mean, score in grid:
        values = {"amount": amount, "customer_tx_count_1h": count, "terminal_risk_7d": risk, "customer_mean_amount_7d": mean}
        expected = [f"r{i}" for i, when in enumerate(CONDITIONS) if eval(when, {"__builtins__": {}}, {**values, "score": score})]
        assert [r.name for r in rules.fired(values, score)] == expected, values
        checked += bool(expected)
    assert checked > 50  # the grid makes rules fire, not only stay silent


@pytest.mark.parametrize("band, fired, decision", [
    ("approve", [], "approve"),
    ("step_up", ["review"], "review"),  # the more severe of band and rule
    ("review", ["step_up"], "review"),  # a rule never lowers the band...
    ("decline", ["allow"], "approve"),  # ...except by allow
    ("review", ["allow", "decline"], "decline"),  # a block beats an allow
    ("approve", ["step_up", "review"], "review"),
])
def test_rule_actions_and_the_band_follow_the_documented_precedence(band: str, fired: list[str], decision: str) -> None:
    text = "".join(rule(f"a-{action}", f"amount > {i}", action) for i, action in enumerate(fired))
    text += rule("quiet", "amount > 1000000", "decline")  # never fires: a rule that does not fire does nothing
    assert parse(text, KNOWN).decide(band, {"amount": 50.0}, 0.1) == (decision, [f"a-{a}" for a in fired], [])  # type: ignore[arg-type]


def test_a_shadow_rule_is_reported_and_changes_nothing() -> None:
    rules = parse(rule("watch", "amount > 10", "decline", "shadow") + rule("act", "amount > 20", "review"), KNOWN)
    assert rules.decide("approve", {"amount": 15.0}, 0.0) == ("approve", [], ["watch"])
    assert rules.decide("approve", {"amount": 25.0}, 0.0) == ("review", ["act"], ["watch"])


def test_a_missing_feature_and_a_division_by_zero_fire_nothing() -> None:
    rules = parse(rule("ratio", "amount / customer_mean_amount_7d > 3") + rule("risky", "terminal_risk_7d > 0.5"), KNOWN)
    assert rules.fired({"amount": 50.0, "customer_mean_amount_7d": 0.0}, 0.0) == []  # 50 / 0 is NaN, risk absent
    assert rules.fired({"amount": 50.0, "customer_mean_amount_7d": None, "terminal_risk_7d": math.nan}, 0.0) == []  # type: ignore[dict-item]
    assert [r.name for r in rules.fired({"amount": 50.0, "customer_mean_amount_7d": 10.0, "terminal_risk_7d": 0.9}, 0.0)] == ["ratio", "risky"]


@pytest.mark.parametrize("text, words", [
    (rule("x", "amount >"), "rule 'x': `amount >` is not an expression"),
    (rule("x", "foo > 1"), "rule 'x': no such name 'foo'"),
    (rule("x", "amount.real > 1"), "rule 'x': `amount.real` is not allowed"),
    (rule("x", "__import__('os') == 1"), "rule 'x': `__import__('os')` is not allowed"),
    (rule("x", "amount > 'a'"), "rule 'x': 'a' is not a number"),
    (rule("x", "amount ** 2 > 1"), "rule 'x': `amount ** 2` is not allowed"),
    (rule("x", "amount > 1", "block"), "rule 'x': action 'block' is not one of allow, step_up, review, decline"),
    (rule("x", "amount > 1", "decline", "dry-run"), "rule 'x': mode 'dry-run' is not one of active, shadow"),
    (rule("x", "amount > 1") + rule("x", "amount > 2"), "rule 'x' is defined twice"),
    (rule("Big Spender", "amount > 1"), "rule name 'Big Spender'"),
    ('[[rule]]\nname = "x"\nwhen = "amount > 1"\n', "rule 'x': missing action"),
    (rule("x", "amount > 1") + 'colour = "red"\n', "rule 'x': unknown keys colour"),
    ('[[rule]]\nname = "x"\nwhen = 3\naction = "decline"\n', "rule 'x': name, when, action, mode and description are text"),
    ("[[rules]]\n", "unknown tables rules"),
    ("[[rule]\n", "not TOML"),
])
def test_a_bad_rules_file_is_refused_with_the_rule_it_names(text: str, words: str) -> None:
    with pytest.raises(RuleError, match=None) as refused:
        parse(text, KNOWN, "rules.toml")
    assert str(refused.value).startswith("rules.toml: ") and words in str(refused.value), refused.value


def test_a_file_is_read_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(rule("burst", "customer_tx_count_1h >= 5", "step_up"))
    assert [r.name for r in load(path, ANSWER_VALUES).rules] == ["burst"]
    assert load(None, ANSWER_VALUES) is NONE
    with pytest.raises(RuleError, match="cannot be read"):
        load(tmp_path / "absent.toml", ANSWER_VALUES)


def test_every_live_value_is_a_name_a_rule_may_read() -> None:
    from features.live import LIVE_FEATURES

    text = "".join(rule(f"r{i}", f"{name} > -1") for i, name in enumerate(ANSWER_VALUES))
    rules = parse(text, ANSWER_VALUES)
    assert len(rules.fired(dict.fromkeys(ANSWER_VALUES, 0.0), 0.0)) == len(ANSWER_VALUES) > len(LIVE_FEATURES)


def test_batch_decisions_are_the_single_path_s() -> None:
    rules = parse("".join(rule(f"r{i}", when, action) for i, (when, action) in
                          enumerate(zip(CONDITIONS, ["decline", "review", "allow", "step_up", "review", "decline"]))), KNOWN)
    rng = np.random.default_rng(0)
    rows = [dict(zip(KNOWN, map(float, rng.integers(0, 60, 4)))) for _ in range(200)]
    bands, scores = ["approve", "review"] * 100, rng.random(200).tolist()
    decisions, fired, shadow = rules.decide_rows(bands, rows, scores)  # type: ignore[arg-type]
    single = [rules.decide(b, r, s) for b, r, s in zip(bands, rows, scores)]  # type: ignore[arg-type]
    assert decisions == [d for d, _, _ in single] and fired == [",".join(a) for _, a, _ in single]
    assert {"approve", "review", "decline"} <= set(decisions) and shadow == [""] * 200
