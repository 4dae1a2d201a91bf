"""The API over a really trained tiny pipeline: valid answers, and a clear 4xx for every bad input."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.logs import _CLIENT_ID
from serving.schemas import Transaction
from serving.service import live_tx
from tests.conftest import fail_first_call, log_parts, log_records

TX: dict[str, object] = {"transaction_id": "tx-1", "customer_id": "12", "terminal_id": "34", "amount": 42.5, "timestamp": "2025-05-09T10:00:00Z"}


@pytest.fixture(scope="module")
def client(trained):
    settings = trained.replace(admin_token="s3cret", challenger_share=0.5)
    with TestClient(create_app(settings)) as c:
        yield c


def test_valid_transaction_is_scored(client) -> None:
    answer = client.post("/predict", json=TX)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert 0.0 <= body["score"] <= 1.0
    assert body["is_fraud"] == (body["score"] >= body["threshold"])
    assert body["variant"] in ("champion", "challenger") and body["model_version"] in ("1", "2")
    assert body["features_missing"] == [] and body["degraded"] is False
    from model.decisions import decide_one, explore

    model = client.app.state.service.models[body["variant"]]
    expected, _ = explore(decide_one(model.bands, body["score"]), "tx-1", client.app.state.settings.costs.exploration_share)
    assert body["model_version"] == model.version and body["decision"] == expected


def test_an_unknown_card_is_scored_as_a_new_card_not_as_missing(client) -> None:
    """A card never seen has a history of one transaction, this one: nothing is missing."""
    body = client.post("/predict", json={**TX, "transaction_id": "new-card", "customer_id": "nobody"}).json()
    assert body["features_missing"] == [] and body["degraded"] is False


def test_same_customer_same_variant(client) -> None:
    variants = {client.post("/predict", json={**TX, "transaction_id": f"t{i}"}).json()["variant"] for i in range(5)}
    assert len(variants) == 1


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"amount": -1}, "amount", "greater than or equal to 0"),
        ({"amount": "lots"}, "amount", "valid number"),
        ({"customer_id": "a b"}, "customer_id", "pattern"),
        ({"customer_id": ""}, "customer_id", "pattern"),
        ({"timestamp": "1899-01-01T00:00:00Z"}, "timestamp", "between 2000-01-01 and 2100-01-01"),
        ({"timestamp": "soon"}, "timestamp", "datetime"),
        ({"extra": 1}, "extra", "Extra inputs are not permitted"),
    ],
)
def test_invalid_input_gets_422_naming_the_field(client, change, field, words) -> None:
    answer = client.post("/predict", json={**TX, **change})
    assert answer.status_code == 422
    errors = answer.json()["detail"]
    assert any(e["loc"][-1] == field and words in e["msg"] for e in errors), errors


def test_missing_field_and_non_finite_amount_are_refused(client) -> None:
    missing = client.post("/predict", json={k: v for k, v in TX.items() if k != "amount"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "amount"]
    for raw in ("NaN", "Infinity"):
        body = json.dumps(TX).replace("42.5", raw)
        answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, raw
        assert answer.json()["detail"][0]["loc"] == ["body", "amount"]


HOSTILE: list[tuple[str, object, str | None]] = [  # (what is wrong, the transaction as sent, the content type)
    ("boolean amount", {**TX, "amount": True}, "application/json"),
    ("amount as text", {**TX, "amount": "12"}, "application/json"),
    ("boolean id", {**TX, "customer_id": True}, "application/json"),
    ("fractional id", {**TX, "customer_id": 1.5}, "application/json"),
    ("null id", {**TX, "terminal_id": None}, "application/json"),
    ("list for an object", [TX], "application/json"),
    ("nested object for an amount", {**TX, "amount": {"value": 1}}, "application/json"),
    ("huge number", {**TX, "amount": 1e308 * 10}, "application/json"),
    ("JSON sent as text/plain", TX, "text/plain"),
    ("JSON sent as a form", TX, "application/x-www-form-urlencoded"),
    ("no content type", TX, None),
    ("integer ids are their text", {**TX, "customer_id": 12, "terminal_id": 34}, "application/json"),
    ("vendor JSON type", TX, "application/vnd.fraudops+json; charset=utf-8"),
]


def _on_every_path(client, body: object, content_type: str | None, features: dict[str, float]) -> dict[str, tuple[int, object]]:
    """The same transaction to each scoring path, each wrapping it as that path expects."""
    def post(path: str, wrapped: object) -> tuple[int, object]:
        headers = {"content-type": content_type} if content_type else {}
        answer = client.post(path, content=json.dumps(wrapped).replace("Infinity", "1e999"), headers=headers)
        detail = answer.json().get("detail") if answer.status_code != 200 else None
        shape = sorted({key for error in detail for key in error}) if isinstance(detail, list) else type(detail).__name__
        return answer.status_code, shape

    return {
        "/predict": post("/predict", body),
        "/predict/batch": post("/predict/batch", {"transactions": [body]}),
        "/predict/features": post("/predict/features", {"transaction": body, "features": features}),
    }


@pytest.fixture(scope="module")
def without_lane(trained):
    """The same API with the scoring lane off: FastAPI's own routes answer /predict and /predict/features."""
    with TestClient(create_app(trained.replace(scoring_lane=False))) as c:
        yield c


@pytest.mark.parametrize("what, body, content_type", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_scoring_path_gives_the_same_answer_to_the_same_body(client, without_lane, what, body, content_type) -> None:
    """The fast lane answers /predict and /predict/features ahead of FastAPI, which answers
    /predict/batch, and FastAPI's own routes answer all three with the lane off: one validation
    model, one status and one error shape everywhere."""
    service = client.app.state.service
    features = dict.fromkeys(service.models["champion"].features, 1.0)
    answers = _on_every_path(client, body, content_type, features)
    assert _on_every_path(without_lane, body, content_type, features) == answers
    statuses = {status for status, _ in answers.values()}
    assert len(statuses) == 1 and not any(s >= 500 for s in statuses), answers
    assert len({repr(shape) for _, shape in answers.values()}) == 1, answers
    accepted = what in ("integer ids are their text", "vendor JSON type")
    assert statuses == ({200} if accepted else {422}), answers


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "fastapi"])
def test_explain_adds_the_models_own_top_contributions_on_every_path(client, without_lane, lane) -> None:
    """?explain=true carries the 3 largest pred_contrib features with their values, of those that
    raised the score; without it the answer is the same score with no reasons, and the features
    path's reasons are the booster's own."""
    c = client if lane else without_lane
    model = c.app.state.service.models["champion"]
    features = {name: float(i) for i, name in enumerate(model.features)}
    plain = c.post("/predict/features", json={"transaction": TX, "features": features}).json()
    explained = c.post("/predict/features?explain=true", json={"transaction": TX, "features": features}).json()
    assert plain["reasons"] is None and explained["score"] == plain["score"]
    if explained["variant"] == "champion":
        row = np.asarray([[features[n] for n in model.features]])
        contributions = np.asarray(model.booster.predict(row, pred_contrib=True))[0, :-1]
        top = [i for i in np.argsort(-contributions, kind="stable")[:3] if contributions[i] > 0]
        assert [r["feature"] for r in explained["reasons"]] == [model.features[i] for i in top]
        np.testing.assert_allclose([r["contribution"] for r in explained["reasons"]], contributions[top])
    assert all(r["value"] == features[r["feature"]] for r in explained["reasons"])
    online = c.post("/predict?explain=1", json=TX).json()
    assert len(online["reasons"]) <= 3 and all(r["contribution"] > 0 for r in online["reasons"]) and c.post("/predict?explain=false", json=TX).json()["reasons"] is None
    batch = c.post("/predict/batch?explain=yes", json={"transactions": [TX, {**TX, "transaction_id": "tx-2"}]}).json()["scores"]
    assert [len(s["reasons"]) for s in batch] == [3, 3]


def test_a_bad_explain_flag_is_the_same_422_on_every_path(client, without_lane) -> None:
    """The lane reads the query string itself; its errors, and their order beside the body's, are FastAPI's."""
    def answers(c) -> list[tuple[int, dict]]:
        return [(a.status_code, a.json()) for a in (
            c.post("/predict?explain=maybe", json=TX),
            c.post("/predict?explain=maybe", json={**TX, "amount": -1}),
            c.post("/predict/features?explain=", json={"transaction": TX, "features": {}}),
        )]

    got = answers(client)
    assert got == answers(without_lane)
    assert all(status == 422 and detail["detail"][0]["loc"] == ["query", "explain"] for status, detail in got)
    assert [e["loc"] for e in got[1][1]["detail"]] == [["query", "explain"], ["body", "amount"]]
    documented = [c.get("/openapi.json").json()["paths"]["/predict"]["post"]["parameters"] for c in (client, without_lane)]
    assert documented[0] == documented[1] and documented[0][0]["name"] == "explain"


def test_a_boolean_feature_value_is_refused(client) -> None:
    names = client.app.state.service.models["champion"].features
    answer = client.post("/predict/features", json={"transaction": TX, "features": {**dict.fromkeys(names, 1.0), names[0]: True}})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == names[0]


def test_body_limit_is_enforced_by_the_app(client) -> None:
    big = {**TX, "transaction_id": "x" * 100_000}
    answer = client.post("/predict", content=json.dumps(big), headers={"content-type": "application/json"})
    assert answer.status_code == 413
    chunked = client.post("/predict", content=iter([b"{" + b" " * 70_000 + b"}"]), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_scoring_routes_answer_like_the_rest_of_the_api(client) -> None:
    """They are served ahead of FastAPI's middleware and routing (serving/lane.py): same documentation,
    same errors, same request id."""
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.headers["x-request-id"]
    documented = client.get("/openapi.json").json()
    for path, body in (("/predict", "Transaction"), ("/predict/features", "TransactionWithFeatures")):
        post = documented["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + body)
        assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Score")
        assert body in documented["components"]["schemas"]
    not_json = client.post("/predict/features", content=b"{oops", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"


def test_with_opentelemetry_on_the_scoring_routes_are_traced_too(trained, monkeypatch) -> None:
    """The lane answers ahead of FastAPI's middleware but behind its telemetry wrapper: a deployment that
    turns tracing on must see its hottest route, not only the admin and health routes. Off, nothing is
    recorded even with an SDK configured in the process."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # the process's SDK, without making it global for later tests

    def spans(opentelemetry: bool) -> list[str]:
        exporter.clear()
        with TestClient(create_app(trained.replace(opentelemetry=opentelemetry))) as c:
            assert c.post("/predict", json=TX).status_code == 200
            assert c.get("/healthz").status_code == 200
        return [f"{s.name} {(s.attributes or {}).get('http.response.status_code')}" for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]

    assert spans(True) == ["POST /predict 200", "GET /healthz 200"]
    assert spans(False) == []


def test_a_failure_in_the_scoring_path_is_a_500_that_carries_its_request_id(trained) -> None:
    """The lane answers ahead of FastAPI's error middleware, so it answers a bug itself: a JSON 500 with
    the request id, counted like any other answer."""
    with TestClient(create_app(trained)) as c:
        def broken(*_: object) -> list:
            raise RuntimeError("a bug in the scoring path")

        c.app.state.batcher.score_many = broken  # type: ignore[attr-defined]
        answer = c.post("/predict", json=TX, headers={"X-Request-ID": "bug-1"})
        metrics = c.get("/metrics").text
    assert answer.status_code == 500 and answer.json() == {"detail": "Internal Server Error"}
    assert answer.headers["x-request-id"] == "bug-1"
    assert 'fraudops_http_responses_total{path="/predict",status="500"} 1.0' in metrics


def test_a_client_that_leaves_before_its_answer_is_counted_as_499_not_as_a_server_error(trained) -> None:
    """A caller that gives up on a slow answer must not page anyone for server errors (the 5xx alert)."""

    async def leave(app: object, path: str) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
        await app(scope, receive, send)  # type: ignore[operator]
        return sent

    with TestClient(create_app(trained)) as c, captured_logs() as lines:
        assert c.portal.call(leave, c.app, "/predict") == []  # type: ignore[union-attr]
        c.get("/metrics")  # adds this worker's answers to the counter
        registry = c.app.state.service.metrics.registry  # type: ignore[attr-defined]
    counted = {status: registry.get_sample_value("fraudops_http_responses_total", {"path": "/predict", "status": status}) for status in ("499", "500")}
    assert counted == {"499": 1.0, "500": None}
    assert [line["status"] for line in lines if line["logger"] == "fraudops.access" and line["path"] == "/predict"] == [499]


def batch_metric(client) -> tuple[float, float]:
    """How many online reads the service made, and for how many transactions in all."""
    text = client.get("/metrics").text
    return tuple(float(re.search(rf"^fraudops_scoring_batch_transactions_{part} (\S+)$", text, re.M).group(1)) for part in ("count", "sum"))  # type: ignore[return-value, union-attr]


def test_batch_scores_each_and_has_a_maximum(client, trained) -> None:
    batch = [{**TX, "transaction_id": f"b{i}", "customer_id": str(i)} for i in range(10)]
    reads, transactions = batch_metric(client)
    answer = client.post("/predict/batch", json={"transactions": batch})
    assert answer.status_code == 200 and [s["transaction_id"] for s in answer.json()["scores"]] == [t["transaction_id"] for t in batch]
    assert batch_metric(client) == (reads + 1, transactions + 10)  # one online read for the whole batch
    too_many = [{**TX, "transaction_id": f"b{i}"} for i in range(trained.serving.max_batch_size + 1)]
    answer = client.post("/predict/batch", json={"transactions": too_many})
    assert answer.status_code == 413 and "at most" in answer.json()["detail"]


def test_health_readiness_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and set(ready["models"]) == {"champion", "challenger"}
    client.post("/predict", json=TX)
    metrics = client.get("/metrics").text
    assert "fraudops_predictions_total" in metrics and 'fraudops_model_version{alias="champion"} 1.0' in metrics


def test_admin_needs_its_token(registry_copy) -> None:
    with TestClient(create_app(registry_copy.replace(admin_token="s3cret", challenger_share=0.5))) as c:
        assert c.get("/admin/routing").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.put("/admin/routing", json={"challenger_share": 0.0}, headers=auth).json()["challenger_share"] == 0.0
        assert c.post("/predict", json=TX).json()["variant"] == "champion"
        assert c.put("/admin/routing", json={"challenger_share": 2}, headers=auth).status_code == 422


def test_every_worker_follows_routing_and_aliases_set_on_another(registry_copy) -> None:
    """uvicorn's workers (and compose replicas) each hold their own state: an admin call reaches one
    of them, and the others must follow through the registry."""
    import time

    settings = registry_copy.replace(admin_token="t", model_poll_seconds=0.2, challenger_share=0.1)
    auth = {"Authorization": "Bearer t"}
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        a.put("/admin/routing", json={"challenger_share": 0.7, "mode": "shadow"}, headers=auth)
        a.post("/admin/promote", json={"reason": "canary is better"}, headers=auth)

        def followed() -> bool:
            state = b.get("/readyz").json()
            routing = b.get("/admin/routing", headers=auth).json()
            # promoted: champion on 2 and no challenger left; promote moves one alias and then removes
            # the other, so a poll between the two sees both on 2 for one interval
            promoted = state["models"]["champion"]["version"] == "2" and "challenger" not in state["models"]
            return promoted and routing == {"challenger_share": 0.7, "mode": "shadow"}

        deadline = time.monotonic() + 10
        while not followed() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert followed()


def test_admin_is_off_without_a_token(trained) -> None:
    with TestClient(create_app(trained)) as c:
        answer = c.get("/admin/routing", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 404 and "FRAUDOPS_ADMIN_TOKEN" in answer.json()["detail"]


def test_every_answer_reaches_the_prediction_log(registry_copy) -> None:
    settings = registry_copy  # a fresh log folder
    n = 57
    with TestClient(create_app(settings)) as c:
        for i in range(n):
            assert c.post("/predict", json={**TX, "transaction_id": f"log-{i}"}).status_code == 200
        metrics = c.get("/metrics").text
    logged = pd.read_parquet(settings.predictions_dir)
    assert sorted(logged["transaction_id"]) == sorted(f"log-{i}" for i in range(n))
    assert {"score", "variant", "model_version", "latency_ms", "customer_tx_count_7d"} <= set(logged.columns)
    # the metrics, counted per scoring batch, add up to what was logged
    samples = {(s.name, s.labels.get("variant")): s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
    for variant, group in logged.groupby("variant"):
        assert samples["fraudops_predictions_total", variant] == len(group)
        assert samples["fraudops_prediction_seconds_count", variant] == len(group)
        assert samples["fraudops_score_sum", variant] == pytest.approx(group["score"].sum())
        assert samples["fraudops_prediction_seconds_sum", variant] == pytest.approx(group["latency_ms"].sum() / 1000)


def test_a_prediction_s_latency_counts_its_wait_for_the_scoring_thread(registry_copy) -> None:
    """The latency metric and the logged latency run from the hand-over to the scoring thread, so a
    worker whose requests queue shows it in its p99 and the slow-predictions alert. The metrics are
    counted off the scoring thread, by the prediction log's writer every second."""
    from serving.schemas import Transaction
    from serving.service import ScoringService

    service = ScoringService(registry_copy)
    service.start()
    try:
        handed_over = time.perf_counter() - 0.25  # as if it had waited a quarter second behind a busy thread
        [answer] = service.score_many([Transaction.model_validate(TX)], [time.perf_counter() + 5], [None], [handed_over], [False])
        assert not isinstance(answer, Exception)
        # counted by the prediction log's writer within its second, without a scrape to flush it
        labels = {"variant": answer.variant, "mode": "answered"}
        waited = time.perf_counter()
        while service.metrics.registry.get_sample_value("fraudops_predictions_total", labels) != 1 and time.perf_counter() - waited < 5:
            time.sleep(0.05)
        assert service.metrics.registry.get_sample_value("fraudops_predictions_total", labels) == 1
        exposition = service.metrics.exposition().decode()
    finally:
        service.stop()
    logged = pd.read_parquet(registry_copy.predictions_dir)
    assert logged["latency_ms"].iloc[0] >= 250
    samples = {s.name: s.value for f in text_string_to_metric_families(exposition) for s in f.samples if s.labels.get("variant") == answer.variant}
    assert samples["fraudops_prediction_seconds_sum"] >= 0.25 and samples["fraudops_prediction_seconds_count"] == 1


def test_hot_path_scores_equal_the_mlflow_pyfunc_model(trained) -> None:
    import mlflow

    from features.offline import read_transactions
    from features.store import historical_features, open_store
    from model.calibration import Calibration
    from model.loaded import load_from_registry

    model = load_from_registry(trained, "champion")
    assert model is not None
    tx = read_transactions(trained.transactions_dir, "timestamp >= TIMESTAMP '2025-05-05'").head(300)
    frame = historical_features(open_store(trained), trained.features.feature_service, tx)
    matrix = frame[list(model.features)].to_numpy(np.float64)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{trained.stores.model_name}@champion")
    # the pyfunc returns the booster's raw score; the served one is it through the calibration logged beside it
    raw = np.asarray(pyfunc.predict(frame[list(model.features)])).ravel()
    calibration = mlflow.models.get_model_info(f"models:/{trained.stores.model_name}@champion").metadata["calibration"]
    reference = Calibration(*calibration).apply(raw)
    np.testing.assert_allclose(model.score(matrix), reference, atol=1e-6)  # batches
    np.testing.assert_allclose(np.array([model.score_one(row) for row in matrix]), reference, atol=1e-6)  # the per-request path


def test_features_passed_in_score_like_the_full_path(client) -> None:
    full = client.post("/predict", json={**TX, "transaction_id": "f1"}).json()
    # the same features the online path used, sent by the caller, give the same score from the same model
    ready = client.get("/readyz").json()
    assert ready["ready"]
    svc = client.app.state.service
    # a retry of f1 reads the state f1 left and gets f1's features again: it counts once (features.state)
    lookup = svc.online.lookup(live_tx(Transaction.model_validate({**TX, "transaction_id": "f1"})))
    features = {k: (None if v != v else v) for k, v in lookup.values.items()}
    answer = client.post("/predict/features", json={"transaction": {**TX, "transaction_id": "f2"}, "features": features})
    assert answer.status_code == 200, answer.text
    assert answer.json()["score"] == pytest.approx(full["score"], abs=1e-12)
    incomplete = client.post("/predict/features", json={"transaction": TX, "features": {"amount": 1.0}})
    assert incomplete.status_code == 422 and "missing" in incomplete.json()["detail"]


def test_shadow_mode_answers_with_the_champion_and_logs_the_challenger(registry_copy) -> None:
    import time

    settings = registry_copy.replace(admin_token="t")
    auth = {"Authorization": "Bearer t"}
    n = 40
    with TestClient(create_app(settings)) as c:
        changed = c.put("/admin/routing", json={"mode": "shadow", "challenger_share": 1.0}, headers=auth).json()
        assert changed["previous"]["mode"] == "canary" and changed["mode"] == "shadow"
        variants = {c.post("/predict", json={**TX, "transaction_id": f"s{i}", "customer_id": str(i)}).json()["variant"] for i in range(n)}
        assert variants == {"champion"}  # shadow scores are never returned
        time.sleep(0.5)
    logged = pd.read_parquet(settings.predictions_dir)
    assert (logged["variant"] == "champion").sum() == n
    shadow = logged[logged["shadow"]]
    assert len(shadow) == n and set(shadow["variant"]) == {"challenger"} and set(shadow["model_version"]) == {"2"}


def test_admin_promote_and_rollback_hot_swap_the_champion(registry_copy) -> None:
    settings = registry_copy.replace(admin_token="t")
    auth = {"Authorization": "Bearer t"}
    with TestClient(create_app(settings)) as c:
        assert c.post("/admin/rollback", json={"reason": "nothing yet"}, headers=auth).status_code == 409
        promoted = c.post("/admin/promote", json={"reason": "canary is better"}, headers=auth).json()
        assert (promoted["previous_champion"], promoted["champion"], promoted["loaded_champion"]) == ("1", "2", "2")
        assert c.get("/readyz").json()["models"]["champion"]["version"] == "2"
        back = c.post("/admin/rollback", json={"reason": "alert fired"}, headers=auth).json()
        assert (back["champion"], back["loaded_champion"]) == ("1", "1")


def test_a_rollback_the_registry_drops_answers_503_and_keeps_the_champion(registry_copy, monkeypatch) -> None:
    settings = registry_copy.replace(admin_token="t")
    auth = {"Authorization": "Bearer t"}
    with TestClient(create_app(settings)) as c:
        assert c.post("/admin/promote", json={"reason": "canary is better"}, headers=auth).json()["champion"] == "2"
        fail_first_call(monkeypatch, "set_registered_model_alias")
        answer = c.post("/admin/rollback", json={"reason": "alert fired"}, headers=auth)
        assert answer.status_code == 503 and "nothing was" in answer.json()["detail"]
        assert c.post("/admin/reload", headers=auth).json()["champion"] == "2"
        assert c.post("/admin/rollback", json={"reason": "alert fired"}, headers=auth).json()["champion"] == "1"  # and it can be retried


def test_a_promotion_the_registry_drops_answers_503_and_changes_nothing(registry_copy, monkeypatch) -> None:
    settings = registry_copy.replace(admin_token="t")
    with TestClient(create_app(settings)) as c:
        fail_first_call(monkeypatch, "delete_registered_model_alias")
        answer = c.post("/admin/promote", json={"reason": "canary is better"}, headers={"Authorization": "Bearer t"})
        assert answer.status_code == 503 and "nothing was" in answer.json()["detail"]
        assert {alias: m["version"] for alias, m in c.get("/readyz").json()["models"].items()} == {"champion": "1", "challenger": "2"}
        assert c.post("/admin/reload", headers={"Authorization": "Bearer t"}).json() == {"champion": "1", "challenger": "2"}


@contextmanager
def locked_online_store(settings) -> Iterator[None]:
    """Hold the SQLite online store's write lock, as a materialization committing does: reads wait."""
    import sqlite3

    lock = sqlite3.connect(settings.feast_dir / "live_state.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def test_a_prediction_stuck_on_a_locked_store_answers_503_within_its_limit(registry_copy) -> None:
    """A materialization holding the SQLite online store's write lock makes reads wait; with a store
    that may wait longer than a prediction may take, the caller gets a 503 at the time limit, the
    worker keeps answering once the lock is gone, and the stuck prediction, finishing after its 503,
    is not logged as an answer."""
    import time

    settings = registry_copy.replace(predict_timeout_ms=300.0, online_timeout_ms=5_000.0)
    with captured_logs() as lines, TestClient(create_app(settings)) as c:
        assert c.post("/predict", json=TX).status_code == 200
        with locked_online_store(settings):
            started = time.perf_counter()
            stuck = c.post("/predict", json={**TX, "transaction_id": "stuck"})
            waited = time.perf_counter() - started
        assert stuck.status_code == 503 and "300 ms" in stuck.json()["detail"]
        assert waited < 2.0
        assert c.post("/predict", json={**TX, "transaction_id": "after"}).status_code == 200
        assert "fraudops_prediction_timeouts_total 1.0" in c.get("/metrics").text
    assert sorted(pd.read_parquet(settings.predictions_dir)["transaction_id"]) == ["after", "tx-1"]
    assert any("is not under predict_timeout_ms" in line["message"] for line in lines)  # the set-up was warned about


def test_a_locked_store_degrades_within_its_read_timeout_and_is_skipped_until_the_retry(registry_copy) -> None:
    """With the store's read timeout under the time limit, as by default, a locked store costs one
    answer the timeout and answers with default features, flagged degraded; while the breaker is
    open the next answers skip the store at once (still locked, a read would wait the timeout again);
    after `online_retry_seconds` one answer reads it again, and it is back."""
    import time

    settings = registry_copy.replace(online_timeout_ms=150.0, online_retry_seconds=1.0)
    with TestClient(create_app(settings)) as c:

        def timed_predict(transaction_id: str) -> tuple[dict, float]:
            started = time.perf_counter()
            answer = c.post("/predict", json={**TX, "transaction_id": transaction_id})
            assert answer.status_code == 200, answer.text
            return answer.json(), time.perf_counter() - started

        assert not timed_predict("before")[0]["degraded"]
        with locked_online_store(settings):
            (first, first_s), (second, second_s) = timed_predict("first"), timed_predict("second")
            skipped = c.get("/metrics").text
            ready = c.get("/readyz")
        assert first["degraded"] and "customer_tx_count_7d" in first["features_missing"]
        assert 0.15 <= first_s < 1.0  # the store's timeout, not the time limit, not Python's 5 s
        assert second["degraded"] and second_s < 0.15  # not read: a read would have waited the timeout
        assert "fraudops_online_store_skipped 1.0" in skipped and "fraudops_degraded_total 2.0" in skipped
        assert ready.status_code == 200 and ready.json()["online_store"] == "skipped until the next retry"
        time.sleep(1.1)
        assert not timed_predict("after")[0]["degraded"]
        assert "fraudops_online_store_skipped 0.0" in c.get("/metrics").text and c.get("/readyz").json()["online_store"] == "ok"


def test_the_transactions_scored_during_an_outage_are_written_into_the_store_when_it_answers_again(registry_copy) -> None:
    """An outage must leave no hole in a card's windows: the answers scored degraded while the store
    was locked are kept and written into it once it answers, so a later charge of the card counts them."""
    import sqlite3
    import time

    settings = registry_copy.replace(online_timeout_ms=50.0, online_retry_seconds=0.3)
    with TestClient(create_app(settings)) as c:
        with locked_online_store(settings):
            for n in range(3):
                assert c.post("/predict", json={**TX, "transaction_id": f"outage-{n}", "timestamp": f"2025-05-09T10:0{n}:00Z"}).json()["degraded"]
        time.sleep(0.4)
        assert not c.post("/predict", json={**TX, "transaction_id": "back", "timestamp": "2025-05-09T10:05:00Z"}).json()["degraded"]
        deadline = time.monotonic() + 10
        with sqlite3.connect(settings.feast_dir / "live_state.db") as con:
            while True:
                held = {row[0] for row in con.execute("SELECT transaction_id FROM customer_events WHERE customer_id = ?", [TX["customer_id"]])}
                if {"outage-0", "outage-1", "outage-2"} <= held or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert {"outage-0", "outage-1", "outage-2", "back"} <= held, held


@contextmanager
def captured_logs() -> Iterator[list[dict]]:
    """The JSON lines the fraudops loggers write while the block runs, parsed when it ends."""
    import io
    import logging

    from serving.logs import JsonFormatter

    stream = io.StringIO()
    lines: list[dict] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("fraudops").addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger("fraudops").removeHandler(handler)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def test_logs_are_json_lines_that_carry_the_request_id(registry_copy) -> None:
    with TestClient(create_app(registry_copy.replace(admin_token="t", access_log_sample=1.0))) as c, captured_logs() as lines:
        answer = c.post("/predict", json=TX, headers={"X-Request-ID": "req-42"})
        second = c.post("/predict", json={**TX, "transaction_id": "tx-2"})
        c.put("/admin/routing", json={"challenger_share": 0.3}, headers={"Authorization": "Bearer t", "X-Request-ID": "ops-7"})
        bad = c.post("/predict", json={**TX, "amount": -1}, headers={"X-Request-ID": "not ok!"})
        metrics = c.get("/metrics").text
    assert answer.headers["x-request-id"] == "req-42"
    generated = bad.headers["x-request-id"]
    assert generated != "not ok!" and _CLIENT_ID.match(generated)  # a malformed id is replaced, not echoed
    assert second.headers["x-request-id"] not in (generated, "req-42")
    requests = {line["request_id"]: line for line in lines if line["logger"] == "fraudops.access"}
    assert requests["req-42"]["status"] == 200 and requests[generated]["status"] == 422
    assert any(line["logger"] == "fraudops.service" and line.get("request_id") == "ops-7" and "routing changed" in line["message"] for line in lines)
    assert 'fraudops_http_responses_total{path="/predict",status="422"} 1.0' in metrics
    assert 'fraudops_predictions_total{mode="answered",variant=' in metrics


def test_answers_reach_the_response_counter_without_a_scrape_of_this_worker(trained) -> None:
    """Answers are added to the shared counter in bulk; a worker that no scrape reaches (another worker
    answers /metrics) must still publish them within the flush period, not only when scraped."""
    import time

    with TestClient(create_app(trained)) as c:
        for i in range(3):
            assert c.post("/predict", json={**TX, "transaction_id": f"r-{i}"}).status_code == 200
        assert c.post("/predict", json={**TX, "amount": -1}).status_code == 422
        registry = c.app.state.service.metrics.registry  # type: ignore[attr-defined]

        def counted(status: str) -> float | None:
            return registry.get_sample_value("fraudops_http_responses_total", {"path": "/predict", "status": status})

        started = time.perf_counter()
        while counted("422") is None and time.perf_counter() - started < 5:  # read without /metrics, which would flush
            time.sleep(0.05)
        assert (counted("200"), counted("422")) == (3.0, 1.0)


def test_unsampled_successes_get_no_access_line_but_every_refusal_does(trained) -> None:
    with TestClient(create_app(trained.replace(access_log_sample=0.0))) as c, captured_logs() as lines:
        for i in range(5):
            assert c.post("/predict", json={**TX, "transaction_id": f"ok-{i}"}).status_code == 200
        assert c.post("/predict", json={**TX, "amount": -1}).status_code == 422
        assert c.get("/nowhere").status_code == 404
    assert sorted(line["status"] for line in lines if line["logger"] == "fraudops.access") == [404, 422]


def test_the_prediction_log_drops_and_counts_what_a_stuck_sink_cannot_take_then_flushes_the_rest() -> None:
    import threading

    from serving.predlog import PredictionLog

    written: list[list[dict]] = []
    unblock = threading.Event()

    def stuck_then_slow(batch: list[dict]) -> None:
        unblock.wait()
        written.append(batch)

    log = PredictionLog(stuck_then_slow, batch_size=4, max_queue=10, flush_seconds=0.05)
    log.start()
    accepted = [log.put({"n": i}) for i in range(30)]  # the writer holds at most one batch while stuck
    unblock.set()
    log.close()
    assert log.dropped == accepted.count(False) > 0 and log.written == accepted.count(True)
    assert sorted(r["n"] for batch in written for r in batch) == [i for i, ok in enumerate(accepted) if ok]
    assert all(len(batch) <= 4 for batch in written) and len(log) == 0


def test_the_prediction_log_writes_a_full_batch_at_once_when_another_thread_stepped_past_the_count() -> None:
    """The writer wakes for a full batch, not only at its period, even when a record appended by
    another thread in between made the count jump past the batch size."""
    import time

    from serving.predlog import PredictionLog

    written: list[list[dict]] = []
    log = PredictionLog(written.append, batch_size=4, max_queue=100, flush_seconds=30.0)
    log.start()
    log.put({"n": 0})
    log.records.extend({"n": i} for i in (1, 2, 3))  # the other thread's appends, between two checks
    log.put({"n": 4})  # five waiting: past a batch, never equal to it
    started = time.perf_counter()
    while not written and time.perf_counter() - started < 5:
        time.sleep(0.01)
    assert [[r["n"] for r in batch] for batch in written] == [[0, 1, 2, 3]]  # a whole batch, well before the period
    log.close()
    assert [r["n"] for batch in written for r in batch] == [0, 1, 2, 3, 4]


def test_a_parquet_part_keeps_every_models_features_when_their_feature_sets_differ(tmp_path) -> None:
    """A batch of the log can hold a champion's and a challenger's records whose features differ; the
    part has the columns of both, null where a model has no such feature, and reads back whole."""
    from datetime import datetime

    from core import predictions
    from core.settings import Settings
    from serving import predlog

    settings = Settings(state_dir=tmp_path)
    fixed = {"customer_id": "1", "terminal_id": "2", "timestamp": datetime(2025, 7, 1), "score": 0.1, "is_fraud_predicted": False,
             "shadow": False, "features_missing": 0, "degraded": False, "latency_ms": 0.5}
    champion = {**fixed, "transaction_id": "a", "variant": "champion", "model_version": "1", "amount": 10.0}
    challenger = {**fixed, "transaction_id": "b", "variant": "challenger", "model_version": "2", "amount": 20.0, "terminal_risk_90d": 0.3}
    predlog.ParquetSink(settings.predictions_dir)([champion, challenger])
    frame = predictions.read(settings).set_index("transaction_id")
    assert frame.loc["b", "terminal_risk_90d"] == 0.3 and pd.isna(frame.loc["a", "terminal_risk_90d"])
    assert frame["amount"].to_dict() == {"a": 10.0, "b": 20.0}


def test_compaction_leaves_one_file_a_finished_day_and_every_record_once(tmp_path) -> None:
    """A day of parts (with feature sets that differ, as a champion's and a challenger's do) becomes one
    file that reads back the same; today's folder, still being written, is left as it is."""
    from datetime import date

    from core import predictions
    from core.settings import Settings

    settings = Settings(state_dir=tmp_path)
    log_parts(settings, "2025-07-01", [log_records("a", 3), log_records("b", 2, terminal_risk_90d=0.3), log_records("c", 1)])
    log_parts(settings, "2025-07-02", [log_records("d", 2), log_records("e", 2)])
    log_parts(settings, "2025-07-03", [log_records("f", 1), log_records("g", 1)])  # "today" below
    for day in ("2025-07-01", "2025-07-03"):  # parts whose writer was killed half way; one may still be written today
        (settings.predictions_dir / f"date={day}" / ".part-x.parquet.tmp").write_bytes(b"PAR1")
    before = predictions.read(settings).sort_values("transaction_id", ignore_index=True)

    assert predictions.compact(settings, before=date(2025, 7, 3)) == 5
    files = {p.parent.name: sorted(q.name for q in p.parent.iterdir()) for p in settings.predictions_dir.glob("*/*.parquet")}
    assert [len(files[f"date=2025-07-0{d}"]) for d in (1, 2, 3)] == [1, 1, 3]  # today: two parts and the one in progress
    after = predictions.read(settings).sort_values("transaction_id", ignore_index=True)
    pd.testing.assert_frame_equal(after[before.columns], before, check_dtype=False)
    assert predictions.compact(settings, before=date(2025, 7, 3)) == 0  # nothing left to merge


@pytest.mark.parametrize("stop_at", ["writing the list of parts", "after the list of parts"])
def test_a_compaction_stopped_half_way_is_finished_by_the_next_and_no_reader_sees_a_record_twice(tmp_path, monkeypatch, stop_at) -> None:
    from datetime import date

    from core import predictions
    from core.settings import Settings

    settings = Settings(state_dir=tmp_path)
    log_parts(settings, "2025-07-01", [log_records("a", 3), log_records("b", 2)])
    expected = sorted(predictions.read(settings)["transaction_id"])

    class Stopped(Exception):
        pass

    finish = predictions._finish
    calls = []

    def stop(*args, **kwargs):
        raise Stopped

    def stop_on_second(partition):
        calls.append(partition)
        if len(calls) == 2:  # the first finishes earlier merges; the second is this merge's own
            raise Stopped
        finish(partition)

    monkeypatch.setattr(predictions, *(("write_atomically", stop) if stop_at == "writing the list of parts" else ("_finish", stop_on_second)))
    with pytest.raises(Stopped):
        predictions.compact(settings, before=date(2025, 7, 2))
    assert sorted(predictions.read(settings)["transaction_id"]) == expected  # the merged file is still hidden
    monkeypatch.undo()

    predictions.compact(settings, before=date(2025, 7, 2))
    assert sorted(predictions.read(settings)["transaction_id"]) == expected
    assert [p.name for p in (settings.predictions_dir / "date=2025-07-01").iterdir()][0].startswith("part-compacted-")
    assert len(list((settings.predictions_dir / "date=2025-07-01").iterdir())) == 1


def test_two_compactions_at_once_take_turns_and_lose_nothing(tmp_path, monkeypatch) -> None:
    """A merge whose file is written but not yet listed looks, to another merge's clean-up, like one
    that stopped half way: without taking turns, the other deletes the file and this one then deletes
    the parts it replaced."""
    import threading
    from datetime import date

    from core import predictions
    from core.settings import Settings

    settings = Settings(state_dir=tmp_path)
    log_parts(settings, "2025-07-01", [log_records("a", 3), log_records("b", 2)])
    expected = sorted(predictions.read(settings)["transaction_id"])
    listing, proceed = threading.Event(), threading.Event()
    write_atomically = predictions.write_atomically

    def list_when_told(path, text):  # the first merge pauses between its file and its list
        listing.set()
        assert proceed.wait(10)
        write_atomically(path, text)

    monkeypatch.setattr(predictions, "write_atomically", list_when_told)
    first = threading.Thread(target=predictions.compact, args=(settings, date(2025, 7, 2)))
    first.start()
    assert listing.wait(10)
    second = threading.Thread(target=predictions.compact, args=(settings, date(2025, 7, 1)))  # that day is not its to merge
    second.start()
    second.join(0.5)
    proceed.set()
    first.join(10)
    second.join(10)
    assert sorted(predictions.read(settings)["transaction_id"]) == expected


def test_rules_act_beside_the_model_and_every_answer_and_log_row_names_them(registry_copy, tmp_path) -> None:
    """An active rule declines what it matches; a shadow rule is named and changes nothing; both reach
    the prediction log. A file that fails validation is refused with the rule it names, on reload as
    at start-up, and the rules before it keep running."""
    from model.decisions import decide_one, explore
    from model.rules import RuleError

    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "big-amount"\nwhen = "amount > 1000"\naction = "decline"\n'
                    '[[rule]]\nname = "busy-card"\nwhen = "customer_tx_count_1d >= 1"\naction = "decline"\nmode = "shadow"\n')
    settings = registry_copy.replace(rules_file=path, admin_token="s3cret", exploration_share=0.0)
    admin = {"Authorization": "Bearer s3cret"}
    app = create_app(settings)
    with TestClient(app) as c:
        small = c.post("/predict", json={**TX, "transaction_id": "rule-small", "amount": 20.0}).json()
        big = c.post("/predict", json={**TX, "transaction_id": "rule-big", "amount": 5000.0}).json()
        model = app.state.service.models[small["variant"]]
        assert (small["rules"], small["rules_shadow"]) == ([], ["busy-card"])
        assert small["decision"] == explore(decide_one(model.bands, small["score"]), "rule-small", 0.0)[0]  # the band's
        assert (big["decision"], big["rules"], big["rules_shadow"]) == ("decline", ["big-amount"], ["busy-card"])

        path.write_text('[[rule]]\nname = "typo"\nwhen = "amount > 1000 and amont < 5"\naction = "decline"\n')
        refused = c.post("/admin/rules/reload", headers=admin)
        assert refused.status_code == 422 and "rule 'typo': no such name 'amont'" in refused.json()["detail"]
        assert [r["name"] for r in c.get("/admin/rules", headers=admin).json()["rules"]] == ["big-amount", "busy-card"]
        assert c.post("/predict", json={**TX, "transaction_id": "rule-still", "amount": 5000.0}).json()["rules"] == ["big-amount"]

        path.write_text('[[rule]]\nname = "tiny-amount"\nwhen = "amount < 1"\naction = "review"\n')
        assert [r["name"] for r in c.post("/admin/rules/reload", headers=admin).json()["rules"]] == ["tiny-amount"]
        after = c.post("/predict", json={**TX, "transaction_id": "rule-after", "amount": 0.5}).json()
        assert after["rules"] == ["tiny-amount"] and after["decision"] in ("review", "decline")
    logged = pd.read_parquet(settings.predictions_dir).set_index("transaction_id")
    assert (logged.loc["rule-big", "rules"], logged.loc["rule-big", "rules_shadow"]) == ("big-amount", "busy-card")
    assert (logged.loc["rule-small", "rules"], logged.loc["rule-after", "rules"]) == ("", "tiny-amount")

    path.write_text('[[rule]]\nname = "typo"\nwhen = "amont > 1"\naction = "decline"\n')
    with pytest.raises(RuleError, match="rule 'typo': no such name 'amont'"), TestClient(create_app(settings)):
        pass  # a worker does not start on a bad file


def test_block_and_allow_lists_act_on_every_worker_through_the_admin_api(registry_copy) -> None:
    """A blocked card is declined and an allowed terminal approved, named in the answer as the rules
    are; a block beats an allow; the lists live in the store, so a new worker acts on them; taking a
    card off gives its band back; a bad kind, id or body is a 422 that says so, and nothing changes."""
    from model.decisions import decide_one

    settings = registry_copy.replace(admin_token="s3cret", exploration_share=0.0)
    admin = {"Authorization": "Bearer s3cret"}
    card = {**TX, "customer_id": "listed-card", "terminal_id": "7"}
    with TestClient(create_app(settings)) as c:
        assert c.put("/admin/lists/card/listed-card", json={"list": "block", "reason": "stolen, reported by phone"}, headers=admin).status_code == 200
        blocked = c.post("/predict", json={**card, "transaction_id": "list-1"}).json()
        assert (blocked["decision"], blocked["rules"]) == ("decline", ["block-list:card"])
        assert c.put("/admin/lists/terminal/7", json={"list": "allow", "reason": "the issuer's own test terminal"}, headers=admin).status_code == 200
        both = c.post("/predict", json={**card, "transaction_id": "list-2"}).json()
        assert (both["decision"], both["rules"]) == ("decline", ["block-list:card", "allow-list:terminal"])  # a block beats an allow
        for path, body, words in (("/admin/lists/account/x", {"list": "block", "reason": "why not"}, "card"),
                                  ("/admin/lists/card/a b", {"list": "block", "reason": "why not"}, "pattern"),
                                  ("/admin/lists/card/x", {"list": "deny", "reason": "why not"}, "block"),
                                  ("/admin/lists/card/x", {"list": "block"}, "reason")):
            refused = c.put(path, json=body, headers=admin)
            assert refused.status_code == 422 and words in refused.text, (path, refused.text)
        assert c.put("/admin/lists/card/x", json={"list": "block", "reason": "no"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        listed = {(e["kind"], e["entity_id"], e["list"]) for e in c.get("/admin/lists", headers=admin).json()["entries"]}
        assert listed == {("card", "listed-card", "block"), ("terminal", "7", "allow")}
    with TestClient(create_app(settings)) as c:  # a worker started since reads the lists from the store
        assert c.post("/predict", json={**card, "transaction_id": "list-3"}).json()["rules"] == ["block-list:card", "allow-list:terminal"]
        assert c.request("DELETE", "/admin/lists/card/listed-card", json={"reason": "card reissued"}, headers=admin).status_code == 200
        allowed = c.post("/predict", json={**card, "transaction_id": "list-4"}).json()
        assert (allowed["decision"], allowed["rules"]) == ("approve", ["allow-list:terminal"])
        elsewhere = c.post("/predict", json={**card, "transaction_id": "list-5", "terminal_id": "8"}).json()
        model = c.app.state.service.models[elsewhere["variant"]]  # type: ignore[attr-defined]
        assert elsewhere["rules"] == [] and elsewhere["decision"] == decide_one(model.bands, elsewhere["score"])
