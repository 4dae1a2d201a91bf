"""How every use of a library's private API is kept honest: one small module each (`serving.native`, `model.native`).

Each was measured to earn its place (`make bench`, docs/06) and each stands on names its library may
change in any release. So each module checks the version it was written for (`written_for`), uses
the public API instead, with a warning, when another version is installed or the private names are
gone, and has a test that holds its result to the public API on the same data (tests/test_native.py):
an upgrade then fails a test or logs a warning, and never serves wrong numbers or crashes the process.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

log = logging.getLogger("fraudops.native")


def written_for(package: str, pinned: str) -> bool:
    """Whether the installed `package` is the version a private-API door was written against; if not,
    say so once, so that the fallback to the public API is visible in the logs."""
    installed = version(package)
    if installed == pinned:
        return True
    log.warning("%s %s is installed, this door was written for %s: using its public API instead", package, installed, pinned)
    return False
