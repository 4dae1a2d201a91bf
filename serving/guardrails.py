"""Automatic canary guardrails: the challenger loses its traffic when it misbehaves.

Over a sliding window of recent requests per variant, the challenger is cut to zero share when its
error rate, its p99 latency relative to the champion's, or the PSI of its score distribution against
the champion's crosses a limit. Checks run every `check_every` observations, not per request, so the
hot path pays for a deque append only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from core.settings import Settings

# Bins of equal width in log-odds: fraud scores pile up near zero with many ties, which makes
# quantile bins collapse and PSI explode between two models that merely round differently.
PSI_EDGES = np.linspace(-12.0, 4.0, 17)
PSI_FLOOR = 1e-4  # an empty bin would make PSI infinite


@dataclass(frozen=True)
class Limits:
    window: int
    min_samples: int
    max_error_rate: float
    max_p99_ratio: float
    max_psi: float
    check_every: int = 100  # requests between checks: a cost, not a policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.canary.guardrail_window, settings.canary.guardrail_min_samples, settings.canary.guardrail_max_error_rate,
                   settings.canary.guardrail_max_p99_ratio, settings.canary.guardrail_max_psi)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` against `expected`, on fixed log-odds bins."""
    bins = PSI_EDGES.size + 1
    e = np.bincount(np.searchsorted(PSI_EDGES, _log_odds(expected)), minlength=bins) / expected.size
    a = np.bincount(np.searchsorted(PSI_EDGES, _log_odds(actual)), minlength=bins) / actual.size
    e, a = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class Guardrail:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._latency: dict[str, deque[float]] = {v: deque(maxlen=limits.window) for v in ("champion", "challenger")}
        self._scores: dict[str, deque[float]] = {v: deque(maxlen=limits.window) for v in ("champion", "challenger")}
        self._errors: deque[bool] = deque(maxlen=limits.window)
        self._seen = 0

    def observe(self, variant: str, latency_s: float, score: float | None) -> None:
        """One request's outcome; score None means the variant failed."""
        if variant == "challenger":
            self._errors.append(score is None)
        if score is not None:
            self._latency[variant].append(latency_s)
            self._scores[variant].append(score)
        self._seen += 1

    def due(self) -> bool:
        return self._seen % self.limits.check_every == 0

    def breach(self) -> str | None:
        """Why the challenger must stop serving, or None."""
        lim = self.limits
        if len(self._errors) >= lim.min_samples:
            rate = sum(self._errors) / len(self._errors)
            if rate > lim.max_error_rate:
                return f"challenger error rate {rate:.1%} > {lim.max_error_rate:.1%}"
        champion, challenger = self._latency["champion"], self._latency["challenger"]
        if len(champion) >= lim.min_samples and len(challenger) >= lim.min_samples:
            ratio = np.quantile(challenger, 0.99) / max(np.quantile(champion, 0.99), 1e-9)
            if ratio > lim.max_p99_ratio:
                return f"challenger p99 latency {ratio:.1f}x the champion's > {lim.max_p99_ratio}x"
            value = psi(np.asarray(self._scores["champion"]), np.asarray(self._scores["challenger"]))
            if value > lim.max_psi:
                return f"challenger score PSI {value:.2f} against the champion > {lim.max_psi}"
        return None

    def reset(self) -> None:
        for window in (*self._latency.values(), *self._scores.values()):
            window.clear()
        self._errors.clear()
