"""MLflow tracking and registry: where a model's lineage and its aliases live.

Aliases, not stages, say which version serves: `champion` answers traffic, `challenger` gets the
canary share. Only `promote` moves `champion`, and it records who and why on the version.
"""

from __future__ import annotations

import getpass
import json
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from core.runtime import exclusive
from core.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
log = logging.getLogger("fraudops.registry")


def connect(settings: Settings) -> MlflowClient:
    """A client on the configured tracking store and registry, for reading."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient()


def configure(settings: Settings) -> MlflowClient:
    """A client for writing runs: the experiment exists, with its artifact root under the state folder."""
    client = connect(settings)
    if client.get_experiment_by_name(settings.stores.experiment) is None:
        # A tracking server stores artifacts itself; a database or SQLite store needs a folder of ours.
        served = settings.tracking_uri.startswith(("http://", "https://"))
        artifact_location = None if served else settings.artifact_location
        client.create_experiment(settings.stores.experiment, artifact_location=artifact_location)
    mlflow.set_experiment(settings.stores.experiment)
    return client


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def aliased_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


ROUTING_TAG = "routing"
ROUTING_LOCK = ".routing.lock"


@dataclass(frozen=True)
class Routing:
    """How traffic is split, as every worker follows it: one tag on the registered model, written in
    one call, so no reader sees a new share with an old mode. `challenger` is the version the share
    was set for: a newly registered challenger starts from the configured share, not its
    predecessor's (which a bandit may have raised to its maximum)."""

    share: float
    mode: str
    challenger: str | None

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, value: str | None) -> Routing | None:
        try:
            record = json.loads(value) if value else None
            return cls(float(record["share"]), str(record["mode"]), record.get("challenger")) if record else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("routing tag unreadable (%s): %r; the configured routing applies", exc, value)
            return None

    def share_for(self, challenger: str | None, default: float) -> float:
        """The share for the challenger being served: this record's if it was set for that version
        (or set with none served, or none is served now), else the configured `default`."""
        return self.share if None in (challenger, self.challenger) or challenger == self.challenger else default


class RoutingChanged(RuntimeError):
    """Someone else changed the routing since it was read: the write was not made."""


def serving_state(settings: Settings) -> tuple[dict[str, str], Routing | None]:
    """What every serving worker follows, in one call: alias -> version, and the routing that the
    admin API, a guardrail or the bandit set, so all workers and replicas converge."""
    model = connect(settings).get_registered_model(settings.stores.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}, Routing.from_tag(model.tags.get(ROUTING_TAG))


def set_routing(settings: Settings, routing: Routing, expected: Routing | None | Literal["any"] = "any") -> None:
    """Write the routing record. With `expected`, only if the stored record is still that one (None:
    still none): the bandit reads, bootstraps for seconds, then writes, and must not overwrite a
    guardrail's rollback made in between.

    The registry has no compare-and-set, so every routing write, checked or not, holds a lock in the
    state folder across its check and its write (`ROUTING_LOCK`): a rollback that comes while the
    bandit checks waits for its write and then wins, and one that came before makes the check fail.
    The writers (the API's workers, the monitor, an operator's CLI) share the state folder, a volume
    in compose and Kubernetes; a writer on another machine without it would not be held."""
    with exclusive(settings.state_dir / ROUTING_LOCK):
        if expected != "any":
            stored = serving_state(settings)[1]
            if stored != expected:
                raise RoutingChanged(f"routing changed since it was read: {expected} -> {stored}")
        connect(settings).set_registered_model_tag(settings.stores.model_name, ROUTING_TAG, routing.to_tag())


@contextmanager
def all_or_nothing(client: MlflowClient, name: str, version: str) -> Iterator[None]:
    """Undo a change that fails part-way: the registry has no transactions, and a promotion is several
    calls. A half-done one would leave both aliases on one version, and a retry would then record that
    version as replacing itself, so rollback would have nowhere to go. On failure, the aliases and the
    tags of `version` are put back as they were, and the failure is raised."""
    aliases = dict(client.get_registered_model(name).aliases)
    tags = dict(client.get_model_version(name, version).tags)
    try:
        yield
    except Exception:
        try:
            now = dict(client.get_registered_model(name).aliases)
            for alias in (CHAMPION, CHALLENGER):
                if alias in aliases and now.get(alias) != aliases[alias]:
                    client.set_registered_model_alias(name, alias, aliases[alias])
                elif alias not in aliases and alias in now:
                    client.delete_registered_model_alias(name, alias)
            for key, value in client.get_model_version(name, version).tags.items():
                if key not in tags:
                    client.delete_model_version_tag(name, version, key)
                elif value != tags[key]:
                    client.set_model_version_tag(name, version, key, tags[key])
        except Exception as undo:
            log.error("undoing a failed change of model %s failed too (%s): aliases were %s, version %s's tags were %s",
                      name, undo, aliases, version, tags)
        raise


def promote(settings: Settings, reason: str, who: str | None = None) -> tuple[str | None, str]:
    """Move `champion` to the challenger's version; returns (previous champion, new champion)."""
    client = configure(settings)
    challenger = aliased_version(client, settings.stores.model_name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"model {settings.stores.model_name!r} has no {CHALLENGER!r} alias to promote")
    previous = aliased_version(client, settings.stores.model_name, CHAMPION)
    who = who or getpass.getuser()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with all_or_nothing(client, settings.stores.model_name, challenger):
        for key, value in {"promoted_by": who, "promoted_reason": reason, "promoted_at": stamp, "replaced_version": str(previous)}.items():
            client.set_model_version_tag(settings.stores.model_name, challenger, key, value)
        client.set_registered_model_alias(settings.stores.model_name, CHAMPION, challenger)
        client.delete_registered_model_alias(settings.stores.model_name, CHALLENGER)
    return previous, challenger


def version_with_fingerprint(settings: Settings, fingerprint: str) -> str | None:
    """The registered version trained on exactly these inputs, if any."""
    client = configure(settings)
    found = client.search_model_versions(f"name = '{settings.stores.model_name}' and tags.fingerprint = '{fingerprint}'")
    return str(found[0].version) if found else None


def logged_run(client: MlflowClient, version: ModelVersion) -> Run:
    """The run a registered version was logged from, which holds its parameters and metrics."""
    if version.run_id is None:
        raise ValueError(f"version {version.version} of {version.name!r} was not logged from a run")
    return client.get_run(version.run_id)


def version_metrics(settings: Settings, version: str) -> dict[str, float]:
    """The metrics of the run that produced a registered version."""
    client = connect(settings)
    return dict(logged_run(client, client.get_model_version(settings.stores.model_name, version)).data.metrics)


def rollback(settings: Settings, reason: str, who: str | None = None) -> tuple[str, str]:
    """Point `champion` back at the version the last promotion replaced; returns (from, to)."""
    client = configure(settings)
    current = aliased_version(client, settings.stores.model_name, CHAMPION)
    if current is None:
        raise ValueError(f"model {settings.stores.model_name!r} has no {CHAMPION!r} alias")
    replaced = client.get_model_version(settings.stores.model_name, current).tags.get("replaced_version")
    if replaced in (None, "None"):
        raise ValueError(f"version {current} was not promoted over another version: nothing to roll back to")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with all_or_nothing(client, settings.stores.model_name, current):
        for key, value in {"rolled_back_by": who or getpass.getuser(), "rolled_back_reason": reason, "rolled_back_at": stamp}.items():
            client.set_model_version_tag(settings.stores.model_name, current, key, value)
        client.set_registered_model_alias(settings.stores.model_name, CHAMPION, replaced)
    return current, replaced
