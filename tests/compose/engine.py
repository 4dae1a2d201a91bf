"""The container engine the compose check runs on: podman and podman-compose, with docker-compose.yml
as a Docker user runs it. What this machine kind cannot do the way Docker does is made up here, and
only here:

- no registry is reachable, so each third-party image the stack names is built from Debian's packages
  on a debootstrap base and tagged with that exact name (`stand-ins/`); an image of that name that is
  not one of ours (a user who could pull it) is used as it is;
- podman-compose on podman 4.3 cannot wait for `service_healthy` (it needs podman 4.6), and podman's
  periodic healthchecks need systemd timers: so the containers are created by podman-compose and
  started here in the order their `depends_on` gives, each dependency's own healthcheck run on demand
  (`podman healthcheck run`) until it passes, a one-shot job waited for until it exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from core.settings import REPO_ROOT

HERE = Path(__file__).parent
PROJECT = "fraudops"
BASE = "localhost/fraudops-debootstrap:bookworm"
STAND_IN_LABEL = "fraudops.stand-in"
# the stand-ins' Containerfiles, by the image name docker-compose.yml (or infra/Dockerfile) uses
STAND_INS = {
    "docker.io/library/python:3.11.11-slim-bookworm": "python.Containerfile",
    "docker.io/library/postgres:15.10-bookworm": "postgres.Containerfile",
    "docker.io/library/redis:7.0.15-bookworm": "redis.Containerfile",
    "docker.io/prom/prometheus:v2.53.3": "prometheus.Containerfile",
}
DEBIAN_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap")
BUILD_ARGS = "--format docker --network host"  # the OCI format would drop infra/Dockerfile's HEALTHCHECK


class EngineMissing(RuntimeError):
    """podman cannot be had here: skipped on a laptop, a failure where CI=true."""


def environment() -> dict[str, str]:
    """podman's settings for a machine without systemd (CONTAINERS_CONF) and, for compose's
    interpolation, the secrets a newcomer copies from .env.example."""
    secrets = dict(line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#"))
    return {**os.environ, **secrets, "CONTAINERS_CONF": str(HERE / "containers.conf")}


def ensure_engine() -> None:
    """podman, runc and debootstrap from Debian's packages where they are missing and this is root."""
    missing = [tool for tool in ("podman", "runc", "debootstrap", "iptables") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineMissing(f"{', '.join(missing)} not installed (Debian packages {' '.join(DEBIAN_PACKAGES)}), and this is not a root Debian machine")
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        raise EngineMissing(f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed:\n{done.stderr[-2000:]}")


def podman(*args: str, check: bool = True, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=environment(), timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def stand_in(name: str) -> bool:
    """Whether the local image `name` is missing or one of our stand-ins (so ours may be built)."""
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{STAND_IN_LABEL}"}}}}', name, check=False)
    return found.returncode != 0 or found.stdout.strip() == "true"


def build_stand_ins() -> None:
    """Each third-party image the stack names, from Debian's packages, unless a real one is here.
    podman's layer cache makes a rebuild of unchanged Containerfiles take seconds."""
    wanted = [name for name in STAND_INS if stand_in(name)]
    if not wanted:
        return
    if podman("image", "exists", BASE, check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as root:
            done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root, "http://deb.debian.org/debian"], capture_output=True, text=True)
            assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["podman", "import", "--quiet", "-", BASE], stdin=tar.stdout, check=True, env=environment(), capture_output=True)
            tar.wait()
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(HERE / "stand-ins", context, dirs_exist_ok=True)
        # the host's CA bundle: pip and uv inside the project's build reach the registries through TLS it trusts
        shutil.copy(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"), Path(context) / "ca-bundle.crt")
        for name in wanted:
            podman("build", "--quiet", *BUILD_ARGS.split(), "--label", f"{STAND_IN_LABEL}=true", "-f", STAND_INS[name], "-t", name, context)


class Stack:
    """docker-compose.yml brought up service by service, as compose orders it, under the project `fraudops`."""

    def __init__(self, override: Path, services: Iterable[str], logs: Path) -> None:
        self.files = ["-f", str(REPO_ROOT / "docker-compose.yml"), "-f", str(override)]
        self.spec = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
        self.services = list(services)
        self.logs = logs
        self.started: set[str] = set()

    def compose(self, *args: str, timeout: float = 1800.0) -> str:
        command = [str(Path(sys.executable).parent / "podman-compose"), "--project-name", PROJECT, *self.files, *args]
        done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=REPO_ROOT, timeout=timeout)
        assert done.returncode == 0, f"podman-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def build(self) -> None:
        """The project's image from infra/Dockerfile, through compose's own `build:`."""
        built = {service for service in self.services if "build" in self.spec[service]}
        self.compose("--podman-build-args", BUILD_ARGS, "build", sorted(built)[0])

    def create(self) -> None:
        """Every container, network and volume, nothing started. `--no-deps` leaves out podman's own
        `--requires` links: podman 4.3 cannot start a container whose exited one-shot dependency
        (bootstrap) depends on running ones, and would run that one shot again; `up` orders the start."""
        self.compose("up", "--no-start", "--no-build", "--no-deps", *self.services)

    def container(self, service: str) -> str:
        found = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
                       "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").stdout.split()
        assert len(found) == 1, f"{service}: expected one container, found {found}"
        return found[0]

    def state(self, service: str) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.container(service)).stdout)

    def log(self, service: str, tail: int = 4000) -> str:
        done = podman("logs", self.container(service), check=False)
        return (done.stdout + done.stderr)[-tail:]

    def order(self, services: Iterable[str]) -> list[str]:
        """`services` and what they depend on, each after everything it depends on."""
        placed: list[str] = []

        def place(service: str) -> None:
            if service not in placed:
                for dependency in self.spec[service].get("depends_on") or {}:
                    place(dependency)
                placed.append(service)

        for service in services:
            place(service)
        return placed

    def up(self, *services: str) -> None:
        """Start `services` (default: all) and what they depend on, not started yet, each once its
        `depends_on` conditions hold, as `docker compose up` does."""
        for service in self.order(services or self.services):
            if service in self.started:
                continue
            for dependency, rule in (self.spec[service].get("depends_on") or {}).items():
                self.wait(dependency, rule.get("condition", "service_started"))
            self.start(service)
            self.started.add(service)

    def start(self, service: str) -> None:
        podman("start", self.container(service))

    def wait(self, service: str, condition: str, timeout: float = 600.0) -> None:
        """Until `condition` holds for `service`: its own healthcheck passes, or its one shot exited 0."""
        deadline = time.monotonic() + timeout
        name = self.container(service)
        while True:
            state = self.state(service)
            if condition == "service_completed_successfully" and state["Status"] == "exited":
                assert state["ExitCode"] == 0, f"{service} exited {state['ExitCode']}:\n{self.log(service)}"
                return
            if condition != "service_completed_successfully" and state["Status"] != "running":
                raise AssertionError(f"{service} is {state['Status']} (exit {state['ExitCode']}), not running:\n{self.log(service)}")
            if condition == "service_started" or (condition == "service_healthy" and podman("healthcheck", "run", name, check=False).returncode == 0):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} not {condition.removeprefix('service_')} within {timeout:g} s:\n{self.log(service)}")
            time.sleep(2.0)

    def down(self) -> None:
        """Everything removed, the named volumes included; the logs kept for a failed run."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            if podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}",
                      "--filter", f"label=com.docker.compose.service={service}", check=False).stdout.strip():
                (self.logs / f"{service}.log").write_text(self.log(service, tail=1_000_000))
        self.compose("down", "--volumes", "--timeout", "10")
