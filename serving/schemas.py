"""Request and response bodies. Everything a caller can send is checked here, before any work."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from model.decisions import Decision


def _integer_as_text(value: object) -> object:
    """Ids are text, but many feeds send numeric ids as JSON numbers, and ingest reads a CSV column of
    numbers as their text: an integer id is taken as its decimal text on every path. A boolean or a
    fractional number is not an id and is refused."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
Identifier = Annotated[str, BeforeValidator(_integer_as_text),
                       Field(pattern=ID_PATTERN, description="1-64 letters, digits, _ . : - (an integer is taken as its text)")]
# Strict: JSON true is not an amount of 1.0, nor "12" an amount of 12. Integers are numbers.
Number = Annotated[float, Field(strict=True)]
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)


def _sane_time(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not EARLIEST <= value < LATEST:
        raise ValueError("timestamp must be between 2000-01-01 and 2100-01-01")
    return value.astimezone(timezone.utc)


Moment = Annotated[datetime, AfterValidator(_sane_time), Field(description="ISO 8601; naive times are taken as UTC; 2000-01-01 to 2100-01-01.")]


class Transaction(BaseModel):
    """A card transaction at authorisation time."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"transaction_id": "tx-1", "customer_id": "42", "terminal_id": "917", "amount": 57.3, "timestamp": "2025-07-01T12:30:00Z"}
    ]})

    transaction_id: Identifier
    customer_id: Identifier
    terminal_id: Identifier
    amount: Number = Field(ge=0, le=1_000_000, allow_inf_nan=False, description="Amount in the card's currency; finite, 0 to 1,000,000.")
    timestamp: Moment


class TransactionWithFeatures(BaseModel):
    """A transaction whose features the caller computed: the model's inputs, by name."""

    model_config = ConfigDict(extra="forbid")
    transaction: Transaction
    features: dict[Annotated[str, Field(max_length=64)], Number | None] = Field(
        max_length=64, description="null for a missing value (the model treats it as missing, not as 0)"
    )


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transactions: list[Transaction] = Field(min_length=1)


class Reason(BaseModel):
    feature: str
    value: float | None = Field(description="The feature's value in this answer; null where it was missing.")
    contribution: float = Field(description="How far it pushed the score towards fraud, in log-odds (LightGBM's pred_contrib).")


class Score(BaseModel):
    transaction_id: str
    score: float = Field(description="Fraud probability from the model that answered.")
    is_fraud: bool = Field(description="score >= threshold, the model's cost-optimal decision threshold.")
    threshold: float
    decision: Decision = Field(description="approve, step_up (challenge the cardholder), review (an analyst) or decline: the score's band, cut by cost within the daily review capacity, after the active rules (model/rules.py).")
    variant: Literal["champion", "challenger"]
    model_version: str
    features_missing: list[str] = Field(description="Features that fell back to their documented defaults.")
    degraded: bool = Field(description="True when the online store could not be read at all.")
    reasons: list[Reason] | None = Field(None, description="With ?explain=true: up to 3 features that pushed this score towards fraud most; only those that raised it.")
    rules: list[str] = Field(default_factory=list, description="Active rules that fired (FRAUDOPS_RULES_FILE): with the score's band they make the decision.")
    rules_shadow: list[str] = Field(default_factory=list, description="Shadow rules that fired: logged and measured, never acted on.")


class Scores(BaseModel):
    scores: list[Score]


MAX_LABELS = 500  # what fits the default body limit (64 KiB) at about 120 bytes a verdict


class Verdict(BaseModel):
    """A label on a transaction fraudops scored: a chargeback, an analyst's decision, a customer's claim."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"transaction_id": "tx-1", "is_fraud": True, "reported_at": "2025-07-08T09:00:00Z", "source": "chargeback"}
    ]})

    transaction_id: Identifier
    is_fraud: StrictBool | Literal[0, 1] = Field(description="true (or 1): fraud; false (or 0): legitimate.")
    reported_at: Moment | None = Field(None, description="When the verdict was made (default: now). The latest-reported verdict on a transaction wins.")
    source: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Who says so: chargeback, analyst, ... (default: api).")


class Verdicts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Verdict] = Field(min_length=1, max_length=MAX_LABELS)


class LabelReceipt(BaseModel):
    recorded: int = Field(description="First verdicts on their transactions.")
    changed: int = Field(description="Later verdicts that overturned the current one (both stay in history).")
    unchanged: int = Field(description="The current verdict again: nothing stored.")
    superseded: int = Field(description="Reported before the current verdict: kept in history, not current.")
    unknown_count: int = Field(description="Verdicts on transactions fraudops has never seen: not stored.")
    unknown: list[str] = Field(description="Their ids (the first 100).")
