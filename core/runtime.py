"""Process-wide set-up that must happen before Prefect or MLflow are imported."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from core.settings import Settings

T = TypeVar("T")


def prepare(settings: Settings, quiet: bool = False) -> None:
    """Keep Prefect's ephemeral database in the state folder, and the console readable.

    Only sets what the user has not set: PREFECT_API_URL from docker-compose wins over ephemeral mode.
    """
    defaults = {
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    if quiet:
        defaults["PREFECT_LOGGING_LEVEL"] = "WARNING"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if quiet:
        # Libraries here reset warning filters on import, so filters do not stick; sending warnings to
        # logging (the standard library's own switch for this) and quieting that logger does.
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        for name in ("mlflow", "feast", "alembic", "httpx", "prefect"):
            logging.getLogger(name).setLevel(logging.ERROR)


def service_available(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there (PostgreSQL, Redis)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A partial file to write beside `path`, renamed over it when the block ends and removed when it
    fails: a reader (a query, the API's scrape, a starting worker) sees the old file or the new one,
    never half of one, and a failed write leaves nothing. The partial name is unique, because writers
    race (API workers starting together cache the same model) and hidden with a `.tmp` suffix, because
    readers glob for `*.parquet`."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # as a plain write would leave it, not mkstemp's 0600
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (made if missing) for the block: one holder at a time
    among the processes that share the folder, the containers of one volume included."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def write_atomically(path: Path, text: str) -> None:
    """`text` into `path`, whole or not at all (`atomic_path`)."""
    with atomic_path(path) as partial:
        partial.write_text(text)


def poll_until(check: Callable[[], T | None], timeout: float, interval: float, stopped: Callable[[], str | None] = lambda: None) -> T:
    """`check()` every `interval` seconds until it gives something other than None, and return that.
    Raise RuntimeError as soon as `stopped()` gives a reason (the process that should answer exited),
    TimeoutError once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        if (reason := stopped()) is not None:
            raise RuntimeError(reason)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s")
        time.sleep(interval)
    return found


def exited(process: subprocess.Popen[bytes] | None) -> Callable[[], str | None]:
    """For `poll_until`: why waiting on `process` is pointless, once it has exited."""
    return lambda: None if process is None or process.poll() is None else f"the process exited with {process.returncode}"


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0, log: Path | None = None) -> None:
    """Poll `url` until the server answers below 500 (a /readyz says 503 until its models are
    loaded); fail at once if `process` exits, and show the end of its `log` when it does not come up."""
    import httpx

    def answers() -> bool | None:
        try:
            return True if httpx.get(url, timeout=2.0).status_code < 500 else None
        except httpx.TransportError:
            return None

    try:
        poll_until(answers, timeout, 0.3, exited(process))
    except (RuntimeError, TimeoutError) as exc:
        tail = f"; see {log}:\n{log.read_text(errors='replace')[-3000:]}" if log is not None else ""
        raise type(exc)(f"{url}: {exc}{tail}") from None


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Feast prints materialization progress to stdout; our commands show their own."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
