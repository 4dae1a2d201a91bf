"""The four packages and the tests type-check, with the settings in pyproject.toml: signatures are
checked, not just written."""

from __future__ import annotations

import subprocess
import sys

from core.settings import REPO_ROOT


def test_the_packages_and_the_tests_type_check() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
