"""The load generators of the serving section: wrk closed loop, hey at a constant rate."""

from __future__ import annotations

import re
from pathlib import Path

WRK_SCRIPT = """
wrk.method = "{method}"
run = os.time()
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local body = {body}
  return wrk.format(nil, "{path}", nil, body)
end
"""


def _found(pattern: str, output: str) -> tuple[str, ...]:
    """The groups of `pattern` in a load generator's output, or an error that shows the output."""
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"no match for {pattern!r} in:\n{output}")
    return found.groups()


def closed_loop(url: str, script: str, seconds: int, connections: int) -> tuple[float, float, float, int]:
    """Requests/s, p50 ms, p99 ms and non-2xx count of one closed-loop wrk run."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url],
                         capture_output=True, text=True, check=True).stdout
    Path(f.name).unlink()

    def ms(label: str) -> float:
        value, unit = _found(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = float(_found(r"Requests/sec:\s+([\d.]+)", out)[0])
    return rate, ms("50%"), ms("99%"), int(errors.group(1)) if errors else 0


def constant_rate(url: str, body: str, seconds: int, rate: int) -> tuple[float, float, float]:
    """Achieved rate, p50 ms and p99 ms at a constant offered rate (hey -q). hey's -q paces each of its
    -c clients, and a client waits for its answer before the next request, so one client cannot offer
    500 req/s once answers take 2 ms; but the clients tick in step, so c clients send bursts of c. One
    client per 250 req/s: bursts of two at 500 req/s (one per server worker), whole rates up to 4 ms."""
    import subprocess

    clients = max(1, rate // 250)
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-q", str(rate // clients), "-c", str(clients), "-m", "POST", "-T", "application/json", "-d", body, url],
                         capture_output=True, text=True, check=True).stdout
    achieved = float(_found(r"Requests/sec:\s+([\d.]+)", out)[0])
    p50 = float(_found(r"50%+ in ([\d.]+) secs", out)[0]) * 1000
    p99 = float(_found(r"99%+ in ([\d.]+) secs", out)[0]) * 1000
    return achieved, p50, p99
