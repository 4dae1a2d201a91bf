"""The entry points themselves: a CI script that does not parse fails CI at once, with nothing tested
(an edit landed an install step inside its header comment twice); a machine without Python 3.11
gets one through uv instead of stopping at the first command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from core.settings import REPO_ROOT


def test_the_ci_script_parses_and_ends_in_make_test_then_the_compose_check() -> None:
    script = REPO_ROOT / ".ci" / "run"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    lines = [line for line in script.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert [line.strip() for line in lines[-2:]] == ["make test", "make compose-test"], lines[-2:]


def test_without_python_3_11_make_takes_the_uv_route(tmp_path: Path) -> None:
    """`PYTHON` names an interpreter that does not exist, as on Ubuntu 24.04 or a current macOS: make
    installs uv into a throwaway venv of the Python 3 it finds and asks uv for a 3.11. Only uv's own
    (managed) interpreters may answer and downloads are off, so the run stops where a user's machine
    would download one, and leaves no half-made venv behind."""
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    env = {**os.environ, "UV_PYTHON_PREFERENCE": "only-managed", "UV_PYTHON_DOWNLOADS": "never",
           "UV_PYTHON_INSTALL_DIR": str(tmp_path / "pythons"), "MAKEFLAGS": ""}
    done = subprocess.run(["make", "install", "PYTHON=/nonexistent/python3.11"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout
    assert "/nonexistent/python3.11 not found: getting Python 3.11 through uv" in done.stdout, done.stdout + done.stderr
    assert "3.11" in done.stderr and "download" in done.stderr.lower(), done.stderr
    assert not (tmp_path / ".venv").exists() and not (tmp_path / ".venv.uv").exists()
