"""The peers of the serving section that are not our API: bare ASGI apps that bound what any path
over this machine's HTTP stack, one state step, or a daily snapshot's reads can reach. Served by
`serving.workers.serve` as ours is, so a ratio compares the apps, not how connections reach them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.settings import Settings


def floor_app_factory() -> Callable:
    """A bare ASGI app answering a constant: the floor of this machine's HTTP stack."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"score":0.0}'})

    return app


def lookup_floor_app_factory() -> Callable:
    """The floor plus one online lookup per request and nothing else: the body parsed by orjson, no
    validation, routing, model, log or metrics, the read on the event loop with no thread. It bounds
    any path that reads the store once per request; ours reads once per batch (`serving.batcher`)."""
    import orjson

    from core.settings import get_settings
    from features.state import Tx
    from serving.online import OnlineFeatures

    online = OnlineFeatures(get_settings())
    floor = floor_app_factory()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            body = (await receive()).get("body", b"")  # wrk's bodies arrive in one message
            if body:  # the health check's GET has none
                tx = orjson.loads(body)
                stamp = datetime.fromisoformat(tx["timestamp"].replace("Z", "+00:00"))
                online.lookup(Tx(tx["transaction_id"], tx["customer_id"], tx["terminal_id"], float(tx["amount"]), int(stamp.timestamp() * 1_000_000)))
        await floor(scope, receive, send)  # which answers without reading the body

    return app


SNAPSHOT_DB = "snapshot.db"


def write_snapshot(settings: Settings) -> None:
    """The serving store of a daily-snapshot design: each card's and terminal's last feature row, one
    key-value read each, nothing computed or written per request. The path before live state."""
    import sqlite3

    import orjson
    import pandas as pd

    from features.compute import FEATURES_FILE
    from features.live import CUSTOMER_FEATURES, TERMINAL_FEATURES
    from features.offline import read_transactions

    keys = read_transactions(settings.transactions_dir, "TRUE")[["transaction_id", "customer_id", "terminal_id"]]
    frame = pd.read_parquet(settings.features_dir / FEATURES_FILE).sort_values("event_timestamp").merge(keys, on="transaction_id")
    path = settings.state_dir / SNAPSHOT_DB
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as con:
        for entity, names in (("customer_id", CUSTOMER_FEATURES), ("terminal_id", TERMINAL_FEATURES)):
            last = frame.drop_duplicates(entity, keep="last")
            con.execute(f"CREATE TABLE {entity} (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")  # NaN stored as null
            con.executemany(f"INSERT INTO {entity} VALUES (?, ?)",
                            zip(last[entity].astype(str), (orjson.dumps(row) for row in last[list(names)].to_dict("records"))))


def snapshot_floor_app_factory() -> Callable:
    """The floor plus the daily snapshot's two key-value reads per request (`write_snapshot`), the
    body parsed by orjson and nothing else: the lookup's cost before live state, beside (5)."""
    import sqlite3

    import orjson

    from core.settings import get_settings

    con = sqlite3.connect(get_settings().state_dir / SNAPSHOT_DB, check_same_thread=False)
    floor = floor_app_factory()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            body = (await receive()).get("body", b"")
            if body:
                tx = orjson.loads(body)
                for table, key in (("customer_id", tx["customer_id"]), ("terminal_id", tx["terminal_id"])):
                    row = con.execute(f"SELECT v FROM {table} WHERE k = ?", (key,)).fetchone()
                    if row:
                        orjson.loads(row[0])
        await floor(scope, receive, send)

    return app
