import numpy as np
import pandas as pd
import pytest

from features.offline import write_part
from features.schema import SchemaError, validate_transactions


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "timestamp": ["2025-01-01T10:00:00", "2025-01-01T11:00:00", "2025-01-02T09:30:00"],
            "customer_id": [1, 2, 3],
            "terminal_id": ["t1", "t2", "t3"],
            "amount": [10.0, 0.0, 99.5],
            "is_fraud": [0, 1, 0],
        }
    )


def test_good_batch_is_coerced() -> None:
    out = validate_transactions(good())
    assert out["customer_id"].tolist() == ["1", "2", "3"]
    assert str(out["timestamp"].dtype).startswith("datetime64")
    assert out["fraud_scenario"].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda f: f.drop(columns="amount"), "missing column(s) amount"),
        (lambda f: f.assign(amount=[10.0, -1.0, 3.0]), "column amount: negative amount at rows 1"),
        (lambda f: f.assign(amount=[10.0, np.inf, np.nan]), "column amount: not a finite number at rows 1, 2"),
        (lambda f: f.assign(amount=["10", "ten", "3"]), "column amount: not a finite number at rows 1"),
        (lambda f: f.assign(amount=[True, False, True]), "column amount: booleans are not amounts"),
        (lambda f: f.assign(is_fraud=[0, 2, 0]), "column is_fraud: must be one of [0, 1] at rows 1"),
        (lambda f: f.assign(timestamp=["2025-01-01", "yesterday", "2025-01-03"]), "column timestamp: unparseable timestamp at rows 1"),
        (lambda f: f.assign(transaction_id=["a", "b", "a"]), "column transaction_id: duplicate id at rows 0, 2"),
    ],
)
def test_bad_batch_is_rejected_whole_with_a_message(tmp_path, breakage, expected) -> None:
    with pytest.raises(SchemaError) as error:
        write_part(breakage(good()), tmp_path, "batch-1")
    assert expected in str(error.value)
    assert "batch-1" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing of a rejected batch is written


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SchemaError) as error:
        validate_transactions(good().assign(amount=[-1.0, 1.0, 1.0], is_fraud=[0, 0, 5]))
    assert "negative amount" in str(error.value) and "is_fraud" in str(error.value)


def test_transactions_arrive_without_labels() -> None:
    """No is_fraud column, or an empty cell: no label known, not an error; a word still is one."""
    out = validate_transactions(good().drop(columns="is_fraud"))
    assert out["is_fraud"].isna().all() and len(out) == 3
    assert validate_transactions(good().assign(is_fraud=[0, None, 1]))["is_fraud"].isna().tolist() == [False, True, False]
    with pytest.raises(SchemaError, match="column is_fraud: must be one of"):
        validate_transactions(good().assign(is_fraud=["0", "maybe", "1"]))
