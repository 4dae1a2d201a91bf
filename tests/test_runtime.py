"""Process-wide helpers shared by the flows and the API."""

from __future__ import annotations

from pathlib import Path

from pipelines.runtime import write_atomically
from tests.conftest import failures_when_run_together


def test_writers_racing_on_one_file_all_finish_and_leave_one_whole_version(tmp_path: Path) -> None:
    """API workers starting together cache the same model file at once: none may fail, and the file
    left is one writer's text, whole, with no partial file beside it."""
    target = tmp_path / "model.txt"
    texts = [str(i) * 200_000 for i in range(8)]

    def writer(text: str) -> None:
        for _ in range(20):
            write_atomically(target, text)

    assert failures_when_run_together([lambda text=text: writer(text) for text in texts]) == []
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["model.txt"]
