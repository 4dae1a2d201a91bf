"""Process-wide helpers shared by the flows and the API."""

from __future__ import annotations

import threading
from pathlib import Path

from pipelines.runtime import write_atomically


def test_writers_racing_on_one_file_all_finish_and_leave_one_whole_version(tmp_path: Path) -> None:
    """API workers starting together cache the same model file at once: none may fail, and the file
    left is one writer's text, whole, with no partial file beside it."""
    target = tmp_path / "model.txt"
    texts = [str(i) * 200_000 for i in range(8)]
    start = threading.Barrier(len(texts))
    failures: list[BaseException] = []

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(20):
                write_atomically(target, text)
        except BaseException as error:  # noqa: BLE001 - collected and asserted on below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["model.txt"]
