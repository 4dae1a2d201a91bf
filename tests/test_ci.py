"""The CI entry point itself: a script that does not parse fails CI at once, with nothing tested
(an edit landed an install step inside its header comment twice)."""

from __future__ import annotations

import subprocess

from core.settings import REPO_ROOT


def test_the_ci_script_parses_and_ends_in_make_test() -> None:
    script = REPO_ROOT / ".ci" / "run"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    lines = [line for line in script.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1].strip() == "make test", lines[-1]
