"""Block and allow lists: cards and terminals that an analyst or an operator has judged as a whole.

A list entry acts as a rule that names one card or one terminal (model/rules.py's precedence): a
blocked card or terminal is declined, an allowed one approved unless something blocks it. Entries
live in the label store's database (SQLite embedded, PostgreSQL in compose), since they are verdicts
too, on an entity instead of a transaction, and every worker and replica must read the same lists.
Every change is kept as an event with who made it, when and why; an entry is its latest event, and
taking a card off a list is an event too. The admin API writes them (`/admin/lists`); each worker
reads them at start-up, at its registry poll and at once after its own change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Literal

from sqlalchemy import Column, DateTime, Engine, Index, Integer, Table, Text, func, select

from core.settings import Settings
from features.labels import METADATA, engine

Action = Literal["allow", "decline"]  # model.rules.Action's, which features may not import
Kind = Literal["card", "terminal"]
ListName = Literal["block", "allow"]
REMOVED = "none"
LIST_EVENTS = Table(
    "list_events", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),  # card or terminal
    Column("entity_id", Text, nullable=False),
    Column("list", Text, nullable=False),  # block, allow, or none once taken off
    Column("who", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime, nullable=False),
    Index("list_events_by_entity", "kind", "entity_id", "id"),
)


@dataclass(frozen=True)
class Lists:
    """The current entries, as sets for the request path's lookups."""

    block: dict[str, frozenset[str]] = field(default_factory=lambda: {"card": frozenset(), "terminal": frozenset()})
    allow: dict[str, frozenset[str]] = field(default_factory=lambda: {"card": frozenset(), "terminal": frozenset()})
    empty: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "empty", not any(self.block.values()) and not any(self.allow.values()))

    def actions(self, card: str, terminal: str) -> list[tuple[str, Action]]:
        """The entries that name this card or terminal, as (name, action) pairs a rule would give."""
        if self.empty:
            return []
        found: list[tuple[str, Action]] = []
        for kind, entity in (("card", card), ("terminal", terminal)):
            if entity in self.block[kind]:
                found.append((f"block-list:{kind}", "decline"))
            if entity in self.allow[kind]:
                found.append((f"allow-list:{kind}", "allow"))
        return found


@lru_cache(maxsize=8)
def _store(url: str) -> Engine:
    """The label store's engine, with the lists' table created once per store: the engine may have
    been made before this module was imported, and a store made before the lists lacks the table."""
    store = engine(url)
    with store.begin() as con:
        LIST_EVENTS.create(con, checkfirst=True)
    return store


def _latest(settings: Settings) -> list[dict[str, object]]:
    """Each entity's latest event, removals included."""
    latest = select(func.max(LIST_EVENTS.c.id)).group_by(LIST_EVENTS.c.kind, LIST_EVENTS.c.entity_id)
    with _store(settings.label_store_url).begin() as con:
        rows = con.execute(select(LIST_EVENTS).where(LIST_EVENTS.c.id.in_(latest.scalar_subquery())).order_by(LIST_EVENTS.c.id))
        return [dict(row._mapping) for row in rows]


def entries(settings: Settings) -> list[dict[str, object]]:
    """The cards and terminals on a list now: kind, entity_id, list, who, reason, at."""
    return [{k: v for k, v in row.items() if k != "id"} for row in _latest(settings) if row["list"] != REMOVED]


def read(settings: Settings) -> Lists:
    current = entries(settings)
    sets = {name: {kind: frozenset(str(e["entity_id"]) for e in current if e["list"] == name and e["kind"] == kind)
                   for kind in ("card", "terminal")} for name in ("block", "allow")}
    return Lists(sets["block"], sets["allow"])


def put(settings: Settings, kind: Kind, entity_id: str, list_name: ListName | None, who: str, reason: str) -> None:
    """Put the card or terminal on a list, or with `list_name` None take it off whichever it is on."""
    with _store(settings.label_store_url).begin() as con:
        con.execute(LIST_EVENTS.insert().values(kind=kind, entity_id=entity_id, list=list_name or REMOVED, who=who, reason=reason,
                                                at=datetime.now(timezone.utc).replace(tzinfo=None)))
