"""pgdr.toml: the pydantic models, the one place defaults live, and loading.

Found via --config, then PGDR_CONFIG, then ./pgdr.toml. Relative paths in the file
are relative to the file, so a sandbox folder can be moved or mounted elsewhere.
A bad file gives one line naming the key and the problem (exit code 2).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

# reading the file is config_file.py's (no pydantic); these names stay importable from here
from pgdr.config_file import expand_env_refs as expand_env_refs
from pgdr.config_file import find_config_path as find_config_path
from pgdr.config_file import parse_duration as parse_duration
from pgdr.config_file import read_config_file
from pgdr.errors import ConfigError
from pgdr.pg.conninfo import parse as parse_conninfo


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else value


# The one duration type of the config: "90s", "5m", "12h", "7d", "2w" or seconds.
Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    conninfo: str
    data_dir: Path | None = None
    role: Literal["primary", "standby"] = "standby"
    drillable: bool = False
    # The server log, for corruption signatures; when unset diagnose asks the server
    # (pg_current_logfile) and then looks in data_dir/log.
    log_file: Path | None = None
    # What this node's primary_conninfo should say when it follows a new primary. Unset:
    # keep what it already has (user, passfile, sslmode, application_name) and change
    # only host and port — pgdr's own (superuser) conninfo is never written there.
    replication_conninfo: str | None = None

    @field_validator("conninfo", "replication_conninfo")
    @classmethod
    def _valid_conninfo(cls, value: str | None) -> str | None:
        if value is not None:
            parse_conninfo(value)
        return value


class RepositoryConfig(_Strict):
    path: Path
    # s3://BUCKET/PREFIX: the bucket is the repository and `path` the local working folder
    # (locks, archiver state, WAL spool, a cache of what commands read); see repo/remote.py
    url: str | None = None
    endpoint: str | None = None
    region: str | None = None
    # the environment variable holding the passphrase; set = every object encrypted
    encryption_key_env: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("s3://") or not value[5:].split("/", 1)[0]):
            raise ValueError(f"url {value!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
        return value


class BackupConfig(_Strict):
    # server-zstd:1 measured fastest on this class of machine (DESIGN.md: 2.3 s vs
    # 4.5 s uncompressed) and compresses before the network for remote primaries.
    compression: str = "server-zstd:1"
    checkpoint: Literal["fast", "spread"] = "fast"
    logical_jobs: Annotated[int, Field(ge=1, le=64)] = 2
    logical_compression: Annotated[int, Field(ge=0, le=9)] = 1
    # directory: pg_dump -Fd -j (parallel); custom: one pg_dump -Fc file per database
    logical_format: Literal["directory", "custom"] = "directory"
    logical_databases: list[str] = []

    @field_validator("compression")
    @classmethod
    def _valid_compression(cls, value: str) -> str:
        method = value.split(":", 1)[0]
        allowed = {"none", "server-zstd", "client-zstd", "server-lz4", "client-lz4",
                   "server-gzip", "client-gzip", "zstd", "lz4", "gzip"}
        if method not in allowed:
            raise ValueError(f"unknown compression {method!r}; use one of {sorted(allowed)}")
        return value


class ArchiveConfig(_Strict):
    # Default: unique per repository (pgdr_<tag> / pgdr_archiver_<tag>, tag from the
    # repository's path), so status counts this repository's own archiver, never one
    # feeding another repository from the same primary.
    slot: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = ""
    application_name: str = ""
    compression_level: Annotated[int, Field(ge=1, le=19)] = 1
    max_lag: Duration = 60.0
    # how often the archiver snapshots relfilenode -> table names (find-disaster names
    # tables created after the newest backup); 0 = never
    relmap_interval: Duration = 10.0



class RetentionConfig(_Strict):
    """A backup is kept when it is among the newest keep_last OR younger than keep_within."""

    keep_last: Annotated[int, Field(ge=1)] = 7
    keep_within: Duration = 7 * 86400.0



class PgConfig(_Strict):
    """How pgdr runs PostgreSQL's programs and bounds its SQL sessions."""

    # Unset: the server's own major version under /usr/lib/postgresql/<major>/bin, else PATH.
    bindir: Path | None = None
    os_user: str = "postgres"
    # pg_basebackup, pg_dump, pg_restore, pg_receivewal: no progress for this long ends them.
    stall_timeout: PositiveDuration = 120.0
    # Every SQL session: a peer that stops answering costs at most these (per call overridable).
    connect_timeout: PositiveDuration = 5.0
    statement_timeout: Duration = 300.0
    tcp_user_timeout: Duration = 10.0


class StatusConfig(_Strict):
    max_backup_age: Duration = 26 * 3600.0
    max_standby_lag: Duration = 10.0
    # The runbooks' weekly restore test and quarterly drill: status fails when the newest
    # successful verification / the last passed drill is older than this.
    max_verify_age: Duration = 8 * 86400.0
    max_drill_age: Duration = 95 * 86400.0



class DiagnoseConfig(_Strict):
    """Thresholds for `pgdr diagnose` (runbook numbers: idle in transaction over 5 minutes...)."""

    long_query: Duration = 300.0
    long_transaction: Duration = 600.0
    idle_in_transaction: Duration = 300.0
    lock_wait: Duration = 10.0
    connections_warn_pct: Annotated[float, Field(gt=0, le=100)] = 80.0
    connections_critical_pct: Annotated[float, Field(gt=0, le=100)] = 95.0
    replication_lag: Duration = 30.0
    replication_lag_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024
    slot_retained_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024 * 1024
    # age(datfrozenxid): autovacuum forces freezing at 200M; at ~2.1 billion the server
    # stops accepting commands. Warn well before, call it critical at 1.5 billion.
    wraparound_warn_age: Annotated[int, Field(ge=0)] = 500_000_000
    wraparound_critical_age: Annotated[int, Field(ge=0)] = 1_500_000_000
    archive_ready_warn: Annotated[int, Field(ge=0)] = 10
    query_chars: Annotated[int, Field(ge=20, le=10000)] = 200
    max_sessions_listed: Annotated[int, Field(ge=1, le=10000)] = 50
    log_tail_bytes: Annotated[int, Field(ge=0)] = 4 * 1024 * 1024
    connect_timeout: Duration = 3.0



class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8008
    health_timeout: Annotated[float, BeforeValidator(_duration), Field(gt=0, le=60)] = 2.0
    # Load balancers poll health many times a second; answers are reused this long
    # (and only one check runs at a time) so a poll storm cannot flood the database.
    health_cache: Duration = 0.5



class ScheduleConfig(_Strict):
    """A job `pgdr serve --schedule` runs: [[schedule]] job = "backup", every = "24h".
    "verify" proves the newest backup; "drill" runs the drill scenarios on copies."""

    job: Literal["backup", "logical-backup", "redis-backup", "verify", "drill"]
    every: PositiveDuration
    # redis-backup: which [[redis]] (default: each of them)
    redis: str | None = None
    # drill: which scenarios (default all)
    scenarios: list[str] = []



class RepointTarget(_Strict):
    """Where clients learn the new primary after a failover or switchover.

    kind = "pgbouncer": rewrite the `database` entry in `ini_file`, RELOAD, and PAUSE
      before / RESUME after the promotion through `admin_conninfo`, so clients wait
      instead of failing (use pool_mode = transaction so PAUSE can drain).
    kind = "env_file": rewrite DATABASE_URL and/or PGHOST/PGPORT in `path` atomically.
    kind = "command": run `command` with PGDR_PRIMARY_HOST/PORT/NAME/CONNINFO set.
    """

    kind: Literal["pgbouncer", "env_file", "command"]
    name: str = ""
    ini_file: Path | None = None
    admin_conninfo: str | None = None
    database: str | None = None
    path: Path | None = None
    command: list[str] | None = None
    pause_timeout: Duration = 5.0

    @model_validator(mode="after")
    def _fields_for_kind(self) -> RepointTarget:
        need = {"pgbouncer": ("ini_file", "admin_conninfo", "database"),
                "env_file": ("path",), "command": ("command",)}[self.kind]
        missing = [f for f in need if getattr(self, f) in (None, "", [])]
        if missing:
            raise ValueError(f"repoint target of kind {self.kind} needs {', '.join(missing)}")
        return self


class EtcdConfig(_Strict):
    endpoints: list[str]
    prefix: str = "/pgdr"


class FailoverConfig(_Strict):
    max_lag_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    max_lag_seconds: Duration = 30.0
    fence_command: list[str] | None = None
    replay_timeout: Duration = 30.0
    repoint: list[RepointTarget] = []
    # The primary's synchronous_standby_names, for when it is dead and cannot be asked:
    # failover then promotes only a synchronous standby.
    synchronous_standby_names: str | None = None
    # After a synchronous failover, how long to wait for standbys to stream from the new
    # primary before it names them synchronous; none by then → asynchronous, recorded.
    sync_wait: Duration = 5.0



class WatchConfig(_Strict):
    interval: Duration = 1.0
    failures: Annotated[int, Field(ge=1)] = 3
    probe_timeout: Duration = 1.0
    # How long a streaming standby's silence can still mean an idle primary when its
    # wal_receiver_timeout is 0 (otherwise watch uses wal_receiver_timeout/2, when the
    # receiver asks the primary for a reply).
    receiver_fresh: Duration = 3.0
    etcd: EtcdConfig | None = None
    lease_ttl: Annotated[int, Field(ge=2)] = 5



class VerifyCheckConfig(_Strict):
    """A user's smoke query: the first column of the first row, as text, must equal expect."""

    name: Annotated[str, Field(min_length=1)]
    database: str = "postgres"
    sql: Annotated[str, Field(min_length=1)]
    expect: str | bool | int | float = True


class VerifyConfig(_Strict):
    # A table that shrank by more than this fraction since the previous verified
    # physical backup fails verification (a mass DELETE that nobody meant).
    tolerance: Annotated[float, Field(ge=0, le=1)] = 0.01
    # Where scratch instances live; default <repository>/../scratch. Every folder on
    # the path must be traversable by the server user.
    scratch_dir: Path | None = None
    # Ports scratch instances may use, e.g. [54000, 54099]; default: any free port.
    ports: tuple[Annotated[int, Field(ge=1024, le=65535)], Annotated[int, Field(ge=1024, le=65535)]] | None = None
    checks: list[VerifyCheckConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> VerifyConfig:
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError("verify.checks names must be unique")
        return self


class DrillConfig(_Strict):
    """Targets from the runbooks: failover RTO 5 min / RPO 0 (sync), PITR 30 min / 5 min,
    full restore 2 h / 1 h. RPO is counted in commits for failover, seconds otherwise."""

    failover_rto: Duration = 300.0
    failover_rpo_commits: Annotated[int, Field(ge=0)] = 0
    pitr_rto: Duration = 1800.0
    pitr_rpo: Duration = 300.0
    full_restore_rto: Duration = 7200.0
    full_restore_rpo: Duration = 3600.0
    synchronous: bool = True
    dir: Path | None = None



class MigrateConfig(_Strict):
    """`pgdr migrate`: where the migration runs, how its revision is read, its bounds.

    database: the database the migration changes (default: the primary conninfo's).
    revision_query: one value, the schema revision (Alembic's by default; any tool's).
    downgrade_command: the tool's way back to a revision; {revision} is replaced.
    url_env: the variable that hands the rehearsal copy's libpq URL to the command.
    """

    database: str | None = None
    revision_query: str = "select version_num from alembic_version"
    downgrade_command: list[str] = ["alembic", "downgrade", "{revision}"]
    url_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "DATABASE_URL"
    lock_timeout: Duration = 5.0
    statement_timeout: Duration = 0.0
    timeout: PositiveDuration = 3600.0
    archive_wait: PositiveDuration = 30.0
    min_free_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    ignore_tables: list[str] = ["public.alembic_version"]


class CutoverConfig(_Strict):
    """`pgdr cutover`: commands that stop and restart the application around the change,
    besides pgbouncer's PAUSE/RESUME (e.g. ["kubectl", "scale", "deployment/api",
    "--replicas=0"]). Run without a shell; a failing pause command stops the cutover."""

    pause_command: list[str] | None = None
    resume_command: list[str] | None = None
    command_timeout: PositiveDuration = 120.0


class RedisConfig(_Strict):
    """A Redis beside PostgreSQL ([[redis]]): hourly RDB snapshots kept 7 days by default.

    url: redis://[[user]:password@]host:port/db (or ${ENV}); the password never leaves
    pgdr except to the server itself (redis-cli gets it through REDISCLI_AUTH).
    data_dir: the server's own folder when it runs on this machine: BGSAVE there and
    copy the file; unset, the snapshot is streamed with `redis-cli --rdb`.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    url: str
    data_dir: Path | None = None
    # Kept when among the newest keep_last OR younger than keep_within (like [retention]).
    keep_last: Annotated[int, Field(ge=1)] = 168
    keep_within: Duration = 7 * 86400.0
    # status fails when the newest snapshot is older than this (hourly snapshots + slack)
    max_snapshot_age: PositiveDuration = 2 * 3600.0
    bgsave_timeout: PositiveDuration = 600.0
    connect_timeout: PositiveDuration = 5.0

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        from pgdr.rdb.target import parse_url

        try:
            parse_url(value)
        except ConfigError as exc:  # a ValueError names the key: redis.0.url
            raise ValueError(exc.message) from None
        return value


class ClusterConfig(_Strict):
    name: str = "main"
    # "logical": a managed database reached by a role without REPLICATION or superuser
    # (pg_dump only); "auto" detects it from the role's privileges (pgdr/mode.py).
    mode: Literal["auto", "physical", "logical"] = "auto"


class Config(_Strict):
    cluster: ClusterConfig = ClusterConfig()
    nodes: list[NodeConfig]
    repository: RepositoryConfig
    backup: BackupConfig = BackupConfig()
    archive: ArchiveConfig = ArchiveConfig()
    retention: RetentionConfig = RetentionConfig()
    pg: PgConfig = PgConfig()
    status: StatusConfig = StatusConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    serve: ServeConfig = ServeConfig()
    schedule: list[ScheduleConfig] = []
    failover: FailoverConfig = FailoverConfig()
    watch: WatchConfig = WatchConfig()
    drill: DrillConfig = DrillConfig()
    verify: VerifyConfig = VerifyConfig()
    migrate: MigrateConfig = MigrateConfig()
    cutover: CutoverConfig = CutoverConfig()
    redis: list[RedisConfig] = []
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _archive_names(cls, data: object) -> object:
        """Fill archive.slot / application_name from the repository when not given."""
        if not isinstance(data, dict):
            return data
        repo = data.get("repository")
        path = repo.get("path") if isinstance(repo, dict) else getattr(repo, "path", None)
        archive = data.get("archive", {})
        if path is None or not isinstance(archive, dict):
            return data
        tag = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
        archive = {**archive}
        archive.setdefault("slot", f"pgdr_{tag}")
        archive.setdefault("application_name", f"pgdr_archiver_{tag}")
        return {**data, "archive": archive}

    @model_validator(mode="after")
    def _one_primary(self) -> Config:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        if sum(n.role == "primary" for n in self.nodes) != 1:
            raise ValueError("exactly one node must have role = \"primary\"")
        redis_names = [r.name for r in self.redis]
        if len(set(redis_names)) != len(redis_names):
            raise ValueError("redis names must be unique")
        for job in self.schedule:
            if job.job == "redis-backup" and not self.redis:
                raise ValueError("schedule job redis-backup needs a [[redis]] entry")
            if job.redis is not None and job.job != "redis-backup":
                raise ValueError(f"schedule job {job.job} takes no redis = (only redis-backup does)")
            if job.redis is not None and job.redis not in redis_names:
                raise ValueError(f"schedule names redis {job.redis!r}, which is not a [[redis]] name")
        return self

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no node named {name!r} in the config (have: {', '.join(n.name for n in self.nodes)})")

    def redis_named(self, name: str) -> RedisConfig:
        for entry in self.redis:
            if entry.name == name:
                return entry
        have = ", ".join(r.name for r in self.redis) or "none"
        raise ConfigError(f"no [[redis]] named {name!r} in the config (have: {have})")

    @property
    def configured_primary(self) -> NodeConfig:
        return next(n for n in self.nodes if n.role == "primary")

    @property
    def standbys(self) -> list[NodeConfig]:
        return [n for n in self.nodes if n.role == "standby"]


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{path}: {loc}: {msg}{more}"


def load_config(explicit: Path | None = None) -> Config:
    path = find_config_path(explicit)
    return validate_config(read_config_file(path), path)


def validate_config(raw: dict[str, object], path: Path) -> Config:
    """The config from the dict read_config_file gave; a ConfigError naming the key
    and the problem (one line, exit 2) when it is not valid."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    return config.model_copy(update={"source": path.resolve()})
