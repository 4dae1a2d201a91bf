"""The one settings object every part of fraudops reads, grouped by concern.

Values come from environment variables prefixed ``FRAUDOPS_`` (or a ``.env`` file). The defaults are the
embedded, laptop-sized configuration: SQLite for MLflow and the Feast online store, local files for
everything else, all under one git-ignored state folder. docker-compose sets the same variables to
point at PostgreSQL and Redis; no code path changes.

Each concern (simulation, features, training, costs, rules, canary, serving, monitoring, stores, schedules)
is a group of its own, so a function can take the one group it reads and its signature says what it
depends on. The variables keep their flat names (``FRAUDOPS_TOP_K``, not ``FRAUDOPS_COSTS__TOP_K``):
every group reads the environment under the same prefix, and `Settings` sorts flat keyword arguments
(``Settings(top_k=3)``, ``settings.replace(top_k=3)``) into their group.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# `only_existing`: a `.env` file yields the fields of the class reading it, never its other
# `FRAUDOPS_` lines as extras. `Settings` would otherwise receive a group's variables from `.env`
# as if they were keyword arguments, and they would beat the same variable set in the environment.
_SOURCES = SettingsConfigDict(env_prefix="FRAUDOPS_", env_file=".env", extra="ignore", dotenv_filtering="only_existing")


def default_state_dir() -> Path:
    """`.fraudops` in the source checkout (where `make` runs); installed from a wheel, where the
    package's parent is site-packages, `.fraudops` in the folder the command runs in."""
    return REPO_ROOT / ".fraudops" if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd() / ".fraudops"


class Under:
    """A folder under the settings' `state_dir`, read as an attribute."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, settings: Settings, owner: type | None = None) -> Path:
        return settings.state_dir.joinpath(*self.parts)


class SimulationSettings(BaseSettings):
    """The simulator's world at the demo scale. The handbook's full scale is 5,000 customers, 10,000
    terminals, 183 days."""

    model_config = _SOURCES

    seed: int = 42
    customers: int = Field(1_000, ge=1)
    terminals: int = Field(2_000, ge=1)
    days: int = Field(100, ge=1)
    start_date: str = "2025-04-01"
    card_testing: bool = Field(True, description="Simulate the card-testing fraud scenario beside the Handbook's three; off reproduces the Handbook alone.")


class FeatureSettings(BaseSettings):
    """The features and where they live. Labels are known only `label_delay_days` after a
    transaction, so terminal risk skips them. Feast's registry is a local file unless a SQLAlchemy
    URL is given; the live state is SQLite unless Redis is."""

    model_config = _SOURCES

    label_delay_days: int = Field(7, ge=0)
    feast_project: str = "fraudops"
    feast_registry_url: str | None = Field(None, description="e.g. postgresql+psycopg://postgres@localhost/feast")
    feast_redis_url: str | None = Field(None, description="host:port[,db=N] of the Redis that holds the live feature state (features/state.py); unset: SQLite in the state folder. Feast itself serves nothing online.")
    feast_redis_cluster: bool = Field(False, description="feast_redis_url names one or more nodes (host:port,host:port) of a Redis Cluster: the state step runs one script per hash slot.")
    feature_service: str = "fraud_detection_v2"
    feature_buckets: int = Field(16, ge=1, le=4096, description="With dask_address: the feature job is cut into this many buckets of cards and of terminals, one Dask task each (features/compute.py). One machine computes one of each.")


class TrainingSettings(BaseSettings):
    """The handbook's protocol: a train window, a delay period, then a test window; and the gate a
    candidate passes to be registered.

    Beyond one machine: with a Dask scheduler address, the train flow runs its tasks on that cluster
    (Prefect's DaskTaskRunner) and fits with lightgbm.dask across its workers; without one, in-process.
    """

    model_config = _SOURCES

    train_start_day: int = Field(30, ge=0, description="Days after start_date; earlier days warm up the windows.")
    train_start: date | None = Field(None, description="First training day; overrides train_start_day (ingested data).")
    train_days: int = Field(21, ge=1)
    test_days: int = Field(14, ge=1)
    prequential_folds: int = Field(2, ge=1, description="Shifted validation folds for model selection.")
    prequential_step_days: int = Field(7, ge=1)
    max_false_positive_rate: float = Field(0.01, gt=0, lt=1, description="Recall is reported at this false-positive rate.")
    # A floor that catches a broken candidate, not a contest: AP depends on the test window's fraud
    # rate (the demo's windows range from 0.5% to 1%), and a challenger proves itself against the
    # champion on live traffic, behind the canary's guardrails, before anyone promotes it.
    min_average_precision: float = Field(0.1, ge=0, le=1, description="Promotion gate: a candidate below this is not registered.")
    min_train_frauds: int = Field(20, ge=1, description="Data check: fewer frauds than this in the train window fails the run.")
    dask_address: str | None = Field(None, description="e.g. tcp://scheduler:8786")


class CostSettings(BaseSettings):
    """What each decision costs (model/decisions.py): the review fee and the analysts' capacity, and
    the decision bands' actions beside them."""

    model_config = _SOURCES

    review_fee: float = Field(5.0, ge=0, description="Cost of one false alarm (an analyst's review).")
    top_k: int = Field(100, ge=1, description="Daily review capacity: cards an analyst team can check per day.")
    step_up_fee: float = Field(1.0, ge=0, description="Cost of one step-up challenge (a one-time code): the friction on a good customer.")
    step_up_catch: float = Field(0.8, ge=0, le=1, description="Share of frauds a step-up challenge stops.")
    decline_fee: float = Field(20.0, ge=0, description="Cost of declining a good customer: the lost sale and the call that follows.")
    exploration_share: float = Field(0.005, ge=0, le=0.5, description="Share of would-be declines sent to review instead, with their propensity logged (model/decisions.py::explore): the labels a declined transaction never gets.")


class RuleSettings(BaseSettings):
    """Rules beside the model (model/rules.py): the file that holds them, which every scoring path
    reads (the API, `fraudops score`)."""

    model_config = _SOURCES

    rules_file: Path | None = Field(None, description="TOML file of [[rule]] tables: a condition over the request and its live features, an action (allow, step_up, review, decline) and a mode (active or shadow); unset: no rules. The API re-reads it when it changes, at each model poll and on POST /admin/rules/reload; a file that fails validation is refused, named in the log and the answer, and the rules before it keep running.")


class CanarySettings(BaseSettings):
    """The challenger's share of traffic, the guardrails that cut it to 0 over the last
    `guardrail_window` requests per variant, and the promotion criteria `fraudops promote` checks
    on the canary's labelled traffic (monitoring/canary.py)."""

    model_config = _SOURCES

    challenger_share: float = Field(0.1, ge=0.0, le=1.0, description="Share of customers routed to challenger.")
    promote_min_frauds: int = Field(30, ge=1, description="Labelled frauds each variant needs before the canary can be judged.")
    bandit_min_share: float = Field(0.02, ge=0, le=1, description="Routing mode bandit: the least share the challenger keeps, so its estimate keeps learning.")
    bandit_max_share: float = Field(0.5, ge=0, le=1, description="Routing mode bandit: the most share the challenger gets before a promotion.")
    promote_max_ap_loss: float = Field(0.02, ge=0, le=1, description="The challenger's AP may be at most this far below the champion's (lower 95% bound).")
    guardrail_window: int = Field(1_000, ge=10)
    guardrail_min_samples: int = Field(200, ge=10)
    guardrail_max_error_rate: float = Field(0.02, ge=0, le=1)
    guardrail_max_p99_ratio: float = Field(3.0, gt=1)
    # Two different models legitimately score differently (the demo's pair: PSI 0.45), so the default
    # targets a broken challenger (constant, inverted or rescaled scores), not a different one.
    guardrail_max_psi: float = Field(1.0, gt=0)


class ServingSettings(BaseSettings):
    """The API: its processes, its endpoints' tokens and limits, its time limits on the online
    store, and its logs."""

    model_config = _SOURCES

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(2, ge=1, le=64, description="uvicorn worker processes; one per core is the usual choice.")
    scoring_lane: bool = Field(True, description="Answer /predict and /predict/features ahead of FastAPI's stack (serving/lane.py): the same validation and answers for a fraction of the cost per request (`make bench`). Off: FastAPI's own routes answer them.")
    api_pin_workers: bool = Field(False, description="Hold each API worker to a CPU of its own (serving/workers.py): its event loop and scoring thread then share one core, under SCHED_BATCH so that neither preempts the other when it wakes it. Off by default: a pinned worker cannot move away from other busy processes on its CPU (docker-compose runs Postgres, Redis, MLflow and Prefect beside the API); turn it on where the API has its CPUs to itself, as `make bench` does.")
    admin_token: str | None = Field(None, description="Bearer token of /admin; unset means the admin API is off.")
    labels_token: str | None = Field(None, description="Bearer token of POST /labels, the feed of chargebacks and analysts' verdicts; unset means that endpoint is off. Never the admin token: a label feed must not be able to promote a model.")
    model_poll_seconds: float = Field(10.0, ge=0, description="How often each worker follows the registry's aliases and routing; 0: only on /admin/reload.")
    predict_timeout_ms: float = Field(250.0, gt=0, description="Time limit of one prediction that reads the online store (a batch gets it per transaction); past it, 503.")
    online_timeout_ms: float = Field(100.0, gt=0, description="Longest wait for one online-store read (Redis socket timeout, SQLite busy timeout); past it the answer uses the defaults and is flagged degraded. Keep it under predict_timeout_ms, so that an outage degrades answers instead of failing them.")
    online_retry_seconds: float = Field(5.0, ge=0, description="After a failed online-store read, answers skip the store (defaults, degraded) for this long before one of them tries it again.")
    online_repair_max: int = Field(100_000, ge=0, description="Transactions a worker keeps while the online store is skipped, written into it once it answers again so no card's windows keep a hole; past it the oldest are dropped (logged), and only a backfill brings them back.")
    scoring_batch_max: int = Field(64, ge=1, le=10_000, description="Most transactions a worker's scoring thread takes at once from the requests waiting for it (one online read for all); a /predict/batch request is never split.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="INFO writes JSON access lines (see access_log_sample).")
    access_log_sample: float = Field(0.01, ge=0, le=1, description="Share of successful requests that get an access line; every other answer gets one always. The prediction log and /metrics count every request.")
    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry traces and metrics, for an OTel SDK configured in the process; off, a request skips the check for one.")
    max_batch_size: int = Field(256, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    log_batch_size: int = Field(4096, ge=1, description="Records per prediction-log write at most; below it the writer still writes what waits every second. A Parquet part costs a fixed 3 ms besides its records: larger parts under load cost a worker less CPU and leave fewer small files for the monitoring jobs to read.")
    log_queue_size: int = Field(100_000, ge=1)


class MonitoringSettings(BaseSettings):
    """The monitor's verdict: drift (the share of drifted features above which the dataset counts as
    drifted), data quality, quality once labels arrive (`label_delay_days` after the transaction),
    and acting on the evidence."""

    model_config = _SOURCES

    drift_share: float = Field(0.3, gt=0.0, le=1.0)
    max_missing_share: float = Field(0.05, ge=0, le=1, description="Share of answers with defaulted features that warns.")
    max_out_of_range_share: float = Field(0.01, ge=0, le=1, description="Share of a feature's live values outside its reference range that warns.")
    min_rows: int = Field(200, ge=1, description="Fewer logged predictions than this give insufficient_data.")
    rate_drift_p_value: float = Field(0.01, gt=0, lt=1, description="Test level of the monitor's z-tests (decision rate, labelled fraud rate) and of the KS test on a small sample of scores.")
    quality_days: int = Field(28, ge=1, description="Days of labelled predictions judged for quality, ending label_delay_days before now.")
    min_labelled_frauds: int = Field(20, ge=1, description="A variant with fewer labelled frauds than this is not judged.")
    max_quality_drop: float = Field(0.5, gt=0, lt=1, description="A live AP below (1 - this) x the reference AP is a quality drop: the model's own test-window traffic cut at the live decline share (monitoring/quality.py::reference_ap), since declined transactions never get a label.")
    retrain_on_drift: bool = Field(True, description="On drift or a quality drop, the monitor flow retrains on the latest labelled windows.")


class StoreSettings(BaseSettings):
    """Where models, labels and predictions are kept: MLflow on SQLite with local artifacts unless a
    tracking URI is given, the label store and the prediction log in the state folder unless a
    database is."""

    model_config = _SOURCES

    mlflow_tracking_uri: str | None = None
    experiment: str = "fraudops"
    model_name: str = "fraud-detector"
    labels_url: str | None = Field(None, description="SQLAlchemy URL of the label store, e.g. postgresql+psycopg://postgres@localhost/labels; unset: SQLite in the state folder.")
    prediction_log_url: str | None = Field(None, description="PostgreSQL conninfo of the prediction log; unset: Parquet parts in the state folder.")


class ScheduleSettings(BaseSettings):
    """Schedules of the Prefect deployments (`fraudops deploy`, the compose worker)."""

    model_config = _SOURCES

    retrain_cron: str = "0 3 * * *"
    monitor_cron: str = "0 * * * *"
    score_cron: str = Field("30 1 * * *", description="The nightly batch scoring of the newest day in the offline store.")


class Settings(BaseSettings):
    """Every group, the state folder, and what is derived from them."""

    model_config = _SOURCES

    environment: Literal["local", "ci", "production"] = "local"
    state_dir: Path = Field(default_factory=default_state_dir, description="Every file fraudops writes lives under here.")
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    rules: RuleSettings = Field(default_factory=RuleSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    stores: StoreSettings = Field(default_factory=StoreSettings)
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)

    def __init__(self, **values: Any) -> None:
        """Flat names (`top_k=3`) or whole groups (`costs=CostSettings(...)`); the signature says so to
        the type checker, which would otherwise accept only the groups."""
        super().__init__(**values)

    @classmethod
    def groups(cls) -> dict[str, type[BaseSettings]]:
        """Each group's field name and class."""
        return {name: field.annotation for name, field in cls.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)}

    @classmethod
    def group_of(cls) -> dict[str, str]:
        """Each flat setting's name (`top_k`) and the group that holds it (`costs`)."""
        return {key: name for name, group in cls.groups().items() for key in group.model_fields}

    @classmethod
    def names(cls) -> set[str]:
        """Every setting's flat name, its variable's without `FRAUDOPS_`: what `Settings(...)` and
        `replace` take besides whole groups."""
        return {name for name in cls.model_fields if name not in cls.groups()} | set(cls.group_of())

    @model_validator(mode="before")
    @classmethod
    def _into_groups(cls, data: Any) -> Any:
        """Sort flat keyword arguments into their group. The group is built by its own class, so it
        still reads the environment for the fields the arguments leave out (validating it as a plain
        model would give those their defaults instead)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, group in cls.groups().items():
            flat = {key: data.pop(key) for key in group.model_fields if key in data}
            given = data.get(name)
            if isinstance(given, BaseModel) and not flat:
                continue
            if isinstance(given, BaseModel):
                given = given.model_dump()
            if flat or isinstance(given, dict):
                data[name] = group(**{**(given or {}), **flat})
        return data

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name, as its variable (without `FRAUDOPS_`) names it."""
        values = self.model_dump()
        return {key: value for name, value in values.items()
                for key, value in (value.items() if name in self.groups() else [(name, value)])}

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, by flat name (`top_k=5`) or by group (`costs=CostSettings(...)`),
        validated as new settings are. `model_copy(update=...)` would neither validate the values
        nor find a flat name's group: it would add an attribute nobody reads."""
        unknown = set(changes) - self.names() - set(self.groups())
        if unknown:
            raise TypeError(f"no such settings: {', '.join(sorted(unknown))}")
        return type(self)(**{**self.model_dump(), **changes})

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Relative to where the command runs. Feast reads the paths in feature_store.yaml relative to
        that file's folder, so a relative state folder put its stores inside themselves."""
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _tokens_differ(self) -> Settings:
        serving = self.serving
        if serving.labels_token is not None and serving.labels_token == serving.admin_token:
            raise ValueError("labels_token must differ from admin_token: whoever feeds labels must not be able to promote models")
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> Settings:
        training = self.training
        if training.train_start is not None:  # real data: its own calendar, not the simulator's
            return self
        end = training.train_start_day + training.train_days + self.features.label_delay_days + training.test_days
        if end > self.simulation.days:
            raise ValueError(
                f"train_start_day + train_days + label_delay_days + test_days = {end} exceeds days = {self.simulation.days}"
            )
        return self

    # Derived locations: computed, never configured separately, so they cannot disagree.
    transactions_dir: ClassVar[Under] = Under("data", "transactions")
    features_dir: ClassVar[Under] = Under("data", "features")
    feast_dir: ClassVar[Under] = Under("feast")
    predictions_dir: ClassVar[Under] = Under("predictions")
    reports_dir: ClassVar[Under] = Under("reports")
    evidently_dir: ClassVar[Under] = Under("evidently")
    scores_dir: ClassVar[Under] = Under("scores")
    model_cache_dir: ClassVar[Under] = Under("model-cache")

    @property
    def tracking_uri(self) -> str:
        return self.stores.mlflow_tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def label_store_url(self) -> str:
        return self.stores.labels_url or f"sqlite:///{self.state_dir / 'labels.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.state_dir / "mlartifacts").as_uri()

    @property
    def api_url(self) -> str:
        return f"http://{self.serving.api_host}:{self.serving.api_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
