"""Redis servers of the bench's and the tests' own, from Debian's redis-server on 127.0.0.1: one that
keeps its data across a restart (append-only, as compose and Kubernetes run it), and a Redis
Cluster of three masters and three replicas joined by `redis-cli --cluster create`, whose node
timeout of one second makes a killed master's failover take seconds, not the default fifteen."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NODE_TIMEOUT_MS = 1_000
BUS_OFFSET = 10_000  # Redis Cluster's bus port is the client port plus this


def available() -> str | None:
    """Why no local cluster can start here, or None when it can."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (Debian: redis-server)" if missing else None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` consecutive client ports whose bus ports are free too."""
    for _ in range(50):
        base = random.randrange(20_000, 30_000)
        ports = list(range(base, base + count))
        if all(_free(p) and _free(p + BUS_OFFSET) for p in ports):
            return ports
    raise RuntimeError("no free range of ports for a local Redis Cluster")


def cli(port: int, *args: str) -> str:
    """What `redis-cli` prints for one command to the server on `port`."""
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout


def _wait_answering(ports: list[int], timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not all("PONG" in cli(port, "ping") for port in ports):
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis-server on {ports} did not answer within {timeout_seconds:g} s")
        time.sleep(0.05)


def _node(port: int, folder: Path, *options: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                             "--protected-mode", "no", "--logfile", str(folder / "log"), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@dataclass
class LocalRedis:
    """One append-only Redis: a restart (`restart`) comes back with what it held, as in compose."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = _node(self.port, self.folder, "--appendonly", "yes", "--appendfsync", "everysec")
        _wait_answering([self.port])

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): Redis flushes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def restart(self, down_seconds: float) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@contextmanager
def local_redis(folder: Path) -> Iterator[LocalRedis]:
    reason = available()
    if reason:
        raise RuntimeError(f"cannot start a local Redis: {reason}")
    server = LocalRedis(free_ports(1)[0], folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class LocalCluster:
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """`feast_redis_url` for it: every node, so a client can start from any that answers."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def masters(self) -> list[int]:
        """Client ports of the masters that hold slots, as a live node sees them."""
        for port in self.alive():
            lines = cli(port, "cluster", "nodes").splitlines()
            if lines:
                return sorted(int(line.split()[1].split(":")[1].split("@")[0]) for line in lines
                              if "master" in line.split()[2] and "fail" not in line.split()[2] and len(line.split()) > 8)
        return []

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def kill(self, port: int) -> None:
        """A crash, not a shutdown: the node gets no chance to hand over."""
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait()

    def wait_ok(self, timeout_seconds: float = 30.0) -> float:
        """Seconds until every live node reports the cluster whole (all slots served) and every live
        replica has its master's data: a replica that never synced cannot take over."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_seconds:
            if all("cluster_state:ok" in cli(port, "cluster", "info") for port in self.alive()) and all(
                    "role:master" in info or "master_link_status:up" in info for info in (cli(p, "info", "replication") for p in self.alive())):
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"the local Redis Cluster was not whole within {timeout_seconds:g} s")


@contextmanager
def local_cluster(folder: Path, masters: int = 3, replicas: int = 1) -> Iterator[LocalCluster]:
    """Start the nodes, join them, wait until the cluster is whole; stop them all on the way out."""
    reason = available()
    if reason:
        raise RuntimeError(f"cannot start a local Redis Cluster: {reason}")
    ports = free_ports(masters * (1 + replicas))
    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            processes[port] = _node(port, folder / str(port), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "no", "--repl-diskless-sync-delay", "0")
        cluster = LocalCluster(ports, processes)
        _wait_answering(ports)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", str(replicas),
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        cluster.wait_ok()
        yield cluster
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            process.wait(timeout=10)
