"""Settings: read once from dynaconf, validated into frozen structs.

This is the only module that reads settings files or ``TASKFLOW_*`` environment variables.
Everything else receives the structs below through its constructor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
QueueName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the key."""


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True):
    """How failed attempts are retried (see :mod:`taskflow.retry`)."""

    max_attempts: PositiveInt = 3
    base_delay: NonNegFloat = 1.0
    factor: Annotated[float, Meta(ge=1)] = 2.0
    max_delay: NonNegFloat = 300.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2


class TaskPolicy(Struct, frozen=True, forbid_unknown_fields=True):
    """Per-task overrides of the retry policy and timeout; unset fields inherit."""

    max_attempts: PositiveInt | None = None
    base_delay: NonNegFloat | None = None
    factor: Annotated[float, Meta(ge=1)] | None = None
    max_delay: NonNegFloat | None = None
    jitter: Annotated[float, Meta(ge=0, le=1)] | None = None
    timeout: NonNegFloat | None = None


class DatabaseSettings(Struct, frozen=True, forbid_unknown_fields=True):
    pool_min: Annotated[int, Meta(ge=0)] = 2
    pool_max: PositiveInt = 10
    # Longest one statement may take before it is cancelled (a hung server, a lost
    # connection nobody closed): no caller waits on PostgreSQL for ever.
    command_timeout: PositiveFloat = 30.0


class RedisSettings(Struct, frozen=True, forbid_unknown_fields=True):
    # Longest a command (or a connection attempt) waits on Redis; pub/sub listeners block
    # without it.
    socket_timeout: PositiveFloat = 5.0
    connect_timeout: PositiveFloat = 5.0


class WorkerSettings(Struct, frozen=True, forbid_unknown_fields=True):
    queues: Annotated[tuple[QueueName, ...], Meta(min_length=1)] = ("default",)
    concurrency: PositiveInt = 50
    claim_batch: PositiveInt = 200
    handler_modules: tuple[str, ...] = ()
    lease_ttl: PositiveFloat = 30.0
    heartbeat_interval: PositiveFloat = 10.0
    default_timeout: NonNegFloat = 0.0
    shutdown_grace: NonNegFloat = 25.0
    sync_threads: PositiveInt = 16
    max_idle_wait: PositiveFloat = 1.0
    # Largest result a handler may return, JSON-encoded; a larger one fails the attempt
    # (for good: the same handler would return it again).
    max_result_bytes: PositiveInt = 1_048_576
    # Most upstream results loaded for one job (``ctx.upstream_results``), JSON-encoded;
    # a job whose upstreams returned more fails without running. Memory held for them is
    # at most concurrency times this.
    max_upstream_bytes: PositiveInt = 16 * 1_048_576
    # A flush that releases DAG dependents starts them for this worker in the same
    # statement (within its free slots, when nothing ready outranks them), sparing each
    # hop a claim round and a start statement. false: every job goes through the index.
    flush_starts: bool = True
    # Prometheus exposition of `taskflow work` (0 = off); `serve`/`dev` use the API's /metrics.
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9101
    # Worker processes `taskflow work` runs under one supervisor (1: no supervisor, the
    # worker is the process; 0 or "auto": one per core). See taskflow.processes.
    processes: int | str = 1

    def __post_init__(self) -> None:
        check_process_count(self.processes, "worker.processes")


def check_process_count(value: int | str, key: str) -> None:
    """A number of processes is 1 or more, or 0 / "auto" for one per core."""
    # isascii: str.isdigit() also takes digits int() refuses, such as "²".
    if isinstance(value, str) and (value == "auto" or value.isascii() and value.isdigit()):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    raise ConfigError(f"invalid setting {key!r}: {value!r} is not a number of processes "
                      '(1 or more; 0 or "auto" for one per core)')


class MaintenanceSettings(Struct, frozen=True, forbid_unknown_fields=True):
    reaper_interval: PositiveFloat = 1.0
    reconcile_interval: PositiveFloat = 30.0
    reconcile_batch: PositiveInt = 1000
    # Unfinished jobs the rescuer's sweep looks at per pass (it goes round all of them).
    sweep_batch: PositiveInt = 100_000
    # Seconds before a job whose enqueue Redis has not confirmed is indexed by the
    # reconciler (confirmations are written within milliseconds).
    unconfirmed_grace: PositiveFloat = 5.0
    # The reconciler's pass over every waiting job, a safety net (the index is rebuilt at
    # once when Redis lost it; unconfirmed enqueues are indexed every reconcile_interval).
    full_reconcile_interval: PositiveFloat = 3600.0


class OutboundSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """Where outbound HTTP (the ``http`` task, later webhooks) may connect.

    By default loopback, private, link-local and other non-public addresses are refused,
    so a job cannot reach the server's own internals; an operator opens specific networks
    (CIDRs) with ``allowed_networks``, or all with ``allow_private``.
    """

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    max_response_bytes: PositiveInt = 1_048_576

    def __post_init__(self) -> None:
        import ipaddress

        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"invalid setting 'outbound.allowed_networks': {exc}") from None


class TenantLimits(Struct, frozen=True, forbid_unknown_fields=True):
    """What one tenant may ask of one queue (every queue is shared by all tenants).

    Checked by the API at submit. ``max_active`` bounds a tenant's unfinished jobs
    (blocked, scheduled, queued or running) in the queue, so one tenant cannot fill it
    ahead of the others; 0 means no bound.
    """

    max_priority: Annotated[int, Meta(ge=-1000, le=1000)] = 1000
    max_active: Annotated[int, Meta(ge=0)] = 0
    # Most attempts a job may ask for: a job that crashes its worker every time costs a
    # lost attempt per crash (and the jobs running beside it theirs), so it must stop soon.
    max_attempts: PositiveInt = 25
    # How far ahead a job may be due (delay or run_at), in seconds.
    max_delay: NonNegFloat = 366 * 86_400.0
    # Longest job timeout a tenant may ask for (0 = no bound); a job that sets none gets
    # this one when its task's own timeout is unset or longer.
    max_timeout: NonNegFloat = 0.0


class QueueLimits(Struct, frozen=True, forbid_unknown_fields=True):
    """Per-queue overrides of :class:`TenantLimits`; unset fields inherit."""

    max_priority: Annotated[int, Meta(ge=-1000, le=1000)] | None = None
    max_active: Annotated[int, Meta(ge=0)] | None = None
    max_attempts: PositiveInt | None = None
    max_delay: NonNegFloat | None = None
    max_timeout: NonNegFloat | None = None


class MetricsSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus exposition. Queue and task names come from clients: each label takes at
    most ``max_label_values`` distinct values per process, later ones are counted as
    ``other``."""

    max_label_values: PositiveInt = 100
    # Seconds between reads of the queue gauges from Redis and PostgreSQL (taskflow.stats);
    # a scrape serves the last read and never touches the stores.
    stats_interval: PositiveFloat = 5.0
    # When set, the API's /metrics and /actuator/prometheus require
    # "Authorization: Bearer <token>" (TASKFLOW_METRICS__TOKEN); empty = open.
    token: str = ""


class LogSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """``format``: "json" (one object a line, for log collectors) or "text"."""

    format: Literal["json", "text"] = "json"


class ApiSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP API (``taskflow serve``)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # API processes sharing the listening socket under one supervisor (1: no supervisor;
    # 0 or "auto": one per core). See taskflow.processes.
    workers: int | str = 1
    # Whole request body (a batch must fit) and one job's payload, JSON-encoded. The
    # batch size and page size limits are part of the API contract (taskflow.api.schemas).
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    max_payload_bytes: PositiveInt = 256 * 1024
    # "reject": a task no registry knows is a 422; "accept": any name is queued.
    unknown_tasks: Literal["reject", "accept"] = "reject"
    # Task names accepted besides the built-ins and worker.handler_modules' handlers.
    known_tasks: tuple[str, ...] = ()
    # A plain POST /tasks is answered without Litestar's routing and middleware (see
    # taskflow.api.fastpath); anything unusual still goes through the route.
    fast_submit: bool = True
    # Single submits that arrive together share one INSERT and one Redis call.
    group_commit: bool = True
    # Group commits in flight at once (per API process); submits arriving meanwhile go
    # together in the next one.
    group_commits: PositiveInt = 1
    # Longest a request waits on PostgreSQL or Redis before answering 503. A submit waits
    # this long for its turn in the group commit; once its INSERT is sent it waits for the
    # answer (bounded by database.command_timeout), so a 503 never hides a created job.
    backend_timeout: PositiveFloat = 10.0
    # Single submits waiting for their group commit; beyond this a submit is a 503 with
    # Retry-After at once (PostgreSQL is slower than the arrivals: shed load, keep memory).
    max_pending_submits: PositiveInt = 10_000
    # Tokens already verified are remembered (until they expire) to skip re-verifying.
    token_cache_size: Annotated[int, Meta(ge=0)] = 10_000
    # Longest wait= a request may ask for (seconds; GET /tasks/{id}?wait=, POST /tasks?wait=).
    max_wait: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    # Comment lines on an idle event stream, so proxies keep it open; the stream reads
    # PostgreSQL again at each (a lost notification costs at most this long).
    events_heartbeat: PositiveFloat = 15.0
    # An event stream ends after this many seconds (with a retry: hint); the client
    # reconnects with Last-Event-ID and misses nothing. Bounds a stream's life so that
    # deploys drain and streams spread over API processes.
    events_max_seconds: PositiveFloat = 900.0

    def __post_init__(self) -> None:
        check_process_count(self.workers, "api.workers")


class AuthSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """How the API verifies bearer JWTs. The HS256 secret is ``jwt_secret`` (top level,
    ``TASKFLOW_JWT_SECRET``); public keys and a JWKS URL serve RS256/ES256 tokens."""

    algorithms: tuple[Literal["HS256", "RS256", "ES256"], ...] = ("HS256", "RS256", "ES256")
    # PEM public keys: the text itself or a path to a file holding it.
    public_keys: tuple[str, ...] = ()
    jwks_url: str = ""
    jwks_cache_seconds: PositiveFloat = 300.0
    # Checked when set ("" = not checked); tokens minted by `taskflow token` carry them.
    issuer: str = ""
    audience: str = ""
    leeway: NonNegFloat = 5.0
    tenant_claim: Annotated[str, Meta(min_length=1)] = "tenant"
    # In development (and only there) an unset jwt_secret is generated once and kept in
    # data_dir.
    generate_dev_secret: bool = False


class NotifyRetry(Struct, frozen=True, forbid_unknown_fields=True):
    """Backoff between delivery attempts of one notification: min(max_delay, base_delay *
    factor ** (attempt - 1)), with a random jitter of +/- jitter * delay."""

    base_delay: NonNegFloat = 5.0
    factor: Annotated[float, Meta(ge=1)] = 2.0
    max_delay: NonNegFloat = 600.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2


class SmtpSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """The SMTP server email notifications go through (``host`` empty: no email)."""

    host: str = ""
    port: Annotated[int, Meta(ge=1, le=65535)] = 25
    username: str = ""
    password: str = ""
    starttls: bool = False  # upgrade a plain connection (usually port 587)
    tls: bool = False       # TLS from the first byte (usually port 465)
    sender: Annotated[str, Meta(min_length=3)] = msgspec.field(
        default="taskflow@localhost", name="from")
    timeout: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if self.starttls and self.tls:
            raise ConfigError("notify.smtp.starttls and notify.smtp.tls are exclusive")


class NotifySettings(Struct, frozen=True, forbid_unknown_fields=True):
    """The notifier (``taskflow notify``): delivers the outbox."""

    batch_size: PositiveInt = 100
    concurrency: PositiveInt = 50         # deliveries in flight at once
    max_attempts: PositiveInt = 10        # per webhook/email; dead letters never give up
    retry: NotifyRetry = NotifyRetry()
    # A claimed row is this notifier's for claim_ttl seconds, extended while it delivers;
    # if the notifier vanishes, another delivers the row once that has passed.
    claim_ttl: PositiveFloat = 60.0
    idle_wait: PositiveFloat = 5.0        # safety net for a missed NOTIFY
    shutdown_grace: NonNegFloat = 10.0
    webhook_timeout: PositiveFloat = 10.0
    # Signs webhooks named in jobs' `notify` (whsec_...); empty: each tenant's own secret.
    webhook_secret: str = ""
    api_url: str = ""                      # link to the job in emails
    smtp: SmtpSettings = SmtpSettings()
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9102

    def __post_init__(self) -> None:
        if self.webhook_secret and not self.webhook_secret.startswith("whsec_"):
            raise ConfigError("notify.webhook_secret must start with whsec_ (whsec_ + base64)")


class KafkaSettings(Struct, frozen=True, forbid_unknown_fields=True):
    bootstrap_servers: Annotated[str, Meta(min_length=1)] = "127.0.0.1:9092"
    topic: Annotated[str, Meta(min_length=1, max_length=249,
                               pattern=r"^[A-Za-z0-9._-]+$")] = "taskflow.dead-letters"
    client_id: str = "taskflow-notifier"
    request_timeout: PositiveFloat = 10.0
    # Idempotent producer (no duplicates from the producer's own retries); turn off for
    # brokers that do not support it.
    idempotent: bool = True
    create_topic: bool = True
    partitions: PositiveInt = 3
    replication_factor: PositiveInt = 1


class RabbitMQSettings(Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1)] = "amqp://guest:guest@127.0.0.1:5672/"
    queue: Annotated[str, Meta(min_length=1, max_length=255)] = "taskflow.dead-letters"
    timeout: PositiveFloat = 10.0


class DlqSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """Where dead letters (jobs that ended failed) are published. With ``none`` they stay
    queryable in PostgreSQL (``GET /dead-letters``) and nothing is written to the outbox."""

    backend: Literal["none", "kafka", "rabbitmq"] = "none"
    kafka: KafkaSettings = KafkaSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()


class Settings(Struct, frozen=True, forbid_unknown_fields=True):
    """Everything taskflow reads from its configuration."""

    database_url: str = ""
    redis_url: str = ""
    data_dir: str = ".taskflow"
    migrations_dir: str = ""
    log_level: str = "INFO"
    redis_prefix: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "tf"
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    retry: RetryPolicy = RetryPolicy()
    outbound: OutboundSettings = OutboundSettings()
    task_policies: dict[str, TaskPolicy] = {}
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    notify: NotifySettings = NotifySettings()
    dlq: DlqSettings = DlqSettings()
    jwt_secret: str = ""
    # The settings environment chosen explicitly (TASKFLOW_ENV, --env, or the command's
    # own: `taskflow dev` means development); "" when none was, and then only the
    # [default] settings apply. Set by load_settings, not a setting to write.
    environment: str = ""
    # The queues that exist (shared by all tenants): a job naming another is refused, and
    # a worker cannot serve another. Not in settings.toml on purpose: dynaconf merges
    # lists, so a default there could never be removed.
    queues: Annotated[tuple[QueueName, ...], Meta(min_length=1)] = ("default",)
    tenant_limits: TenantLimits = TenantLimits()
    queue_limits: dict[str, QueueLimits] = {}
    metrics: MetricsSettings = MetricsSettings()
    # AWS SSM Parameter Store layer (between files and environment variables): every
    # parameter under ssm_path is a setting. Region and endpoint default to boto3's.
    ssm_path: Annotated[str, Meta(pattern=r"^(/.*)?$")] = ""
    ssm_region: str = ""
    ssm_endpoint_url: str = ""
    log: LogSettings = LogSettings()

    def __post_init__(self) -> None:
        undeclared = [q for q in self.queue_limits if q not in self.queues]
        if undeclared:
            raise ConfigError(f"invalid setting 'queue_limits.{undeclared[0]}': not a "
                              f"declared queue (queues = {list(self.queues)})")
        self.check_queues(self.worker.queues, "worker.queues")
        if self.worker.heartbeat_interval >= self.worker.lease_ttl:
            raise ConfigError(
                "worker.heartbeat_interval must be shorter than worker.lease_ttl "
                f"(got {self.worker.heartbeat_interval} >= {self.worker.lease_ttl})"
            )
        if self.database.pool_min > self.database.pool_max:
            raise ConfigError("database.pool_min must not exceed database.pool_max")

    def check_queues(self, names: Sequence[str], key: str) -> None:
        """Raise :class:`ConfigError` naming ``key`` if a queue in ``names`` is not
        declared in ``queues``."""
        for name in names:
            if name not in self.queues:
                raise ConfigError(f"invalid setting {key!r}: {name!r} is not a declared "
                                  f"queue (queues = {list(self.queues)})")

    def limits_for(self, queue: str) -> TenantLimits:
        """What one tenant may ask of ``queue``: the defaults with its overrides."""
        override = self.queue_limits.get(queue)
        if override is None:
            return self.tenant_limits
        changes = {f: getattr(override, f) for f in QueueLimits.__struct_fields__
                   if getattr(override, f) is not None}
        return msgspec.structs.replace(self.tenant_limits, **changes)

    @property
    def migrations_path(self) -> Path:
        return Path(self.migrations_dir) if self.migrations_dir else REPO_ROOT / "migrations"

    def policy_for(self, task: str) -> RetryPolicy:
        """The retry policy of a task name: the defaults with its overrides applied."""
        override = self.task_policies.get(task)
        if override is None:
            return self.retry
        changes = {
            f: getattr(override, f)
            for f in RetryPolicy.__struct_fields__
            if getattr(override, f) is not None
        }
        return msgspec.structs.replace(self.retry, **changes)

    def timeout_for(self, task: str) -> float:
        override = self.task_policies.get(task)
        if override is not None and override.timeout is not None:
            return override.timeout
        return self.worker.default_timeout


# Keys dynaconf adds on its own; they are not settings of ours.
_DYNACONF_KEYS = {"env", "environment", "env_for_dynaconf", "settings_file", "settings_files"}


# Maps whose keys are names (task and queue names), not setting names: their case is kept.
_NAME_KEYED = {"task_policies", "queue_limits"}


def _lower_keys(value: Any, keep_case: bool = False) -> Any:
    """Setting names are case-insensitive (dynaconf upper-cases those from environment
    variables); task names are not."""
    if isinstance(value, dict):
        return {
            (str(k) if keep_case else str(k).lower()): _lower_keys(
                v, keep_case=not keep_case and str(k).lower() in _NAME_KEYED)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def load_settings(
    files: list[str | Path] | None = None, env: str | None = None, *,
    default_env: str | None = None, **overrides: Any,
) -> Settings:
    """Read the settings layers into a validated :class:`Settings`. Later layers win:

    1. files: ``settings.toml`` (this checkout's, or the one in the working directory),
       then those listed in ``TASKFLOW_SETTINGS_FILES`` (TOML or YAML, with environment
       sections like ``settings.toml``); ``files`` replaces this list;
    2. AWS SSM Parameter Store, when ``ssm_path`` is set (in a file or the environment);
    3. ``TASKFLOW_*`` environment variables;
    4. ``overrides``.

    Mappings merge key by key across layers; a list or value from a later layer replaces
    the earlier one. The environment is ``env``, else ``TASKFLOW_ENV``, else
    ``default_env``; with none of them only the ``[default]`` settings apply and
    :attr:`Settings.environment` is empty (so nothing meant for development, such as a
    generated JWT secret, happens).
    """
    from dynaconf import Dynaconf

    chosen = env or os.environ.get("TASKFLOW_ENV") or default_env
    if files is None:
        files = [REPO_ROOT / "settings.toml"]
        if Path("settings.toml").resolve() != files[0]:
            files.append(Path("settings.toml"))
        extra = os.environ.get("TASKFLOW_SETTINGS_FILES", "")
        files.extend(f for f in extra.split(",") if f)
    from_files = Dynaconf(
        settings_files=[str(f) for f in files],
        environments=True,
        env_switcher="TASKFLOW_ENV",
        env=chosen or "default",
        merge_enabled=True,
        loaders=[],  # files only: the environment is its own layer, read below
    )
    from_env = Dynaconf(envvar_prefix="TASKFLOW", environments=False)
    layers = [_clean(from_files.as_dict()), _clean(from_env.as_dict())]
    boot = _merged(*layers)  # where SSM is comes from the files or the environment
    if boot.get("ssm_path"):
        layers.insert(1, _ssm_layer(boot))
    data = _merged(*layers)
    # What dynaconf loaded (TASKFLOW_ENV wins over env there), if anything was chosen.
    data["environment"] = str(from_files.current_env).lower() if chosen else ""
    data.update(overrides)
    return settings_from_dict(data)


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    data = _lower_keys(data)
    for key in _DYNACONF_KEYS | {"settings_files_for_dynaconf", "environment"}:
        data.pop(key, None)
    return data


def _merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Layers merged in order: mappings key by key, anything else replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merged(out[key], value)
            else:
                out[key] = value
    return out


def _ssm_layer(boot: dict[str, Any]) -> dict[str, Any]:
    from taskflow.ssm import SsmError, load_parameters

    try:
        return _lower_keys(load_parameters(
            str(boot["ssm_path"]), region=str(boot.get("ssm_region") or ""),
            endpoint_url=str(boot.get("ssm_endpoint_url") or "")))
    except SsmError as exc:
        raise ConfigError(str(exc)) from None


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Validate a plain mapping into :class:`Settings`, naming the bad key on failure."""
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.worker.concurrency`"
        text = str(exc)
        where = ""
        if " - at `$." in text:
            text, _, path = text.partition(" - at `$.")
            where = path.rstrip("`")
            raise ConfigError(f"invalid setting {where!r}: {text}") from None
        raise ConfigError(f"invalid settings: {text}") from None
