"""Guardrails cut the challenger when it fails, slows down or scores differently; never otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.guardrails import Guardrail, Limits, psi

LIMITS = Limits(window=500, min_samples=100, max_error_rate=0.05, max_p99_ratio=3.0, max_psi=0.25, check_every=50)


def feed(guard: Guardrail, n: int, seed: int, latency: float = 0.001, shift: float = 0.0, fail_every: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        guard.observe("champion", latency * rng.uniform(0.5, 1.5), float(rng.beta(1, 30)))
        failed = fail_every and i % fail_every == 0
        guard.observe("challenger", latency * rng.uniform(0.5, 1.5), None if failed else float(min(1.0, rng.beta(1, 30) + shift)))


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.beta(1, 30, 5_000)
    assert psi(base, rng.beta(1, 30, 5_000)) < 0.02
    assert psi(base, base + 0.1) > 1.0


def test_a_healthy_challenger_keeps_its_traffic() -> None:
    guard = Guardrail(LIMITS)
    feed(guard, 400, seed=1)
    assert guard.breach() is None


@pytest.mark.parametrize(
    "kwargs, reason",
    [({"fail_every": 10}, "error rate"), ({"shift": 0.2}, "PSI")],
)
def test_a_misbehaving_challenger_is_named(kwargs, reason) -> None:
    guard = Guardrail(LIMITS)
    feed(guard, 400, seed=2, **kwargs)
    assert reason in (guard.breach() or "")


def test_a_slow_challenger_is_cut() -> None:
    guard = Guardrail(LIMITS)
    for _ in range(200):
        guard.observe("champion", 0.001, 0.01)
        guard.observe("challenger", 0.01, 0.01)
    assert "p99 latency" in (guard.breach() or "")


def test_a_failing_challenger_costs_no_request_and_loses_its_share(registry_copy) -> None:
    from serving.app import create_app
    import dataclasses

    def corrupt(row):
        raise RuntimeError("corrupt model file")

    settings = registry_copy.replace(challenger_share=1.0, guardrail_min_samples=20)
    app = create_app(settings)
    with TestClient(app) as c:
        svc = app.state.service
        good = svc.models["challenger"]
        broken = dataclasses.replace(good)
        object.__setattr__(broken, "score_one", corrupt)  # the challenger now fails on every request
        svc.models = {**svc.models, "challenger": broken}
        answers = [c.post("/predict", json={"transaction_id": f"g{i}", "customer_id": str(i), "terminal_id": "3",
                                            "amount": 20.0, "timestamp": "2025-05-09T10:00:00Z"}) for i in range(150)]
        assert all(a.status_code == 200 and a.json()["variant"] == "champion" for a in answers)
        ready = c.get("/readyz").json()
    assert ready["challenger_share"] == 0.0 and "error rate" in ready["last_guardrail_trip"]
