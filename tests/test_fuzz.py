"""Schemathesis generates requests from the OpenAPI schema, valid (positive) and invalid (negative)
ones: none may get a 5xx."""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok

from serving.app import create_app


def test_no_generated_input_makes_the_api_fail(registry_copy) -> None:
    app = create_app(registry_copy.replace(admin_token="fuzz-token", labels_token="fuzz-labels"))  # verdicts stay in this test
    # the label feed's body is fuzzed past its token; the admin API's stays behind its own
    headers = {"/labels": {"Authorization": "Bearer fuzz-labels"}}
    failures: list[str] = []
    executed: set[tuple[str, str]] = set()
    with TestClient(app):  # runs the lifespan: models, online store and log are up while we fuzz
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        results = list(schema.get_all_operations())
        assert not [r.err() for r in results if isinstance(r, Err)], "every operation's schema loads"
        operations = [r.ok() for r in results if isinstance(r, Ok)]
        assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/predict/features", "/admin/routing", "/labels"}
        for operation, mode in ((op, mode) for op in operations for mode in GenerationMode):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def call(case) -> None:
                executed.add((case.path, mode.value))
                response = case.call(headers=headers.get(case.path))
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}")

            try:
                call()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs (GET, bodiless POST)
                assert mode is GenerationMode.NEGATIVE
    assert {("/predict", "negative"), ("/predict/batch", "negative"), ("/predict/features", "negative"), ("/labels", "negative"),
            ("/labels", "positive")} <= executed
    assert not failures, "\n".join(failures[:10])
