"""Process-wide helpers shared by the flows and the API."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runtime import exited, poll_until, write_atomically
from tests.conftest import failures_when_run_together


def test_writers_racing_on_one_file_all_finish_and_leave_one_whole_version(tmp_path: Path) -> None:
    """API workers starting together cache the same model file at once: none may fail, and the file
    left is one writer's text, whole, with no partial file beside it."""
    target = tmp_path / "model.txt"
    texts = [str(i) * 200_000 for i in range(8)]

    def writer(text: str) -> None:
        for _ in range(20):
            write_atomically(target, text)

    assert failures_when_run_together([functools.partial(writer, text) for text in texts]) == []
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["model.txt"]


def test_poll_until_returns_the_first_answer_and_stops_at_an_exit_or_the_deadline() -> None:
    answers = iter([None, None, "up"])
    assert poll_until(lambda: next(answers), timeout=5, interval=0.01) == "up"

    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        poll_until(lambda: None, timeout=60, interval=0.01, stopped=exited(process))

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not within 0.2 s"):
        poll_until(lambda: None, timeout=0.2, interval=0.01)
    assert 0.2 <= time.monotonic() - started < 2.0
