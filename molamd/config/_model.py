"""The shape of molamd.toml, as frozen msgspec Structs. Unknown keys are errors everywhere."""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from connectors import AnyConnectorConfig, ConnectorConfig, Duration, Secret, SftpSourceConfig
from connectors.statements import MOLAMD_PROFILE, CsvProfile

DEFAULT_SOCKET: Final = "/run/molamd/control.sock"
DEFAULT_SOCKET_MODE: Final = "0660"
DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9464"


def _d(text: str) -> Duration:
    return Duration(text)


MOLAMD_PROFILE_NAME = "molamd"  # the built-in CSV layout, always available


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DaemonSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = ""
    shutdown_grace: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    reload_max_removals: int = 3  # a reload removing more connectors needs `molamctl reload --allow-removals N`


class ControlSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    socket: str = DEFAULT_SOCKET
    socket_mode: str = DEFAULT_SOCKET_MODE
    operator_group: str = ""
    readonly_group: str = ""
    max_clients: int = 64
    max_clients_per_uid: int | None = None  # root is not limited; unset: min(8, max_clients)
    reserved_clients: int | None = None  # of max_clients, kept for operators; unset: a quarter of max_clients
    idle_timeout: Duration = msgspec.field(default_factory=lambda: _d("30s"))  # a request line must end by then

    @property
    def per_uid(self) -> int:
        return self.max_clients_per_uid if self.max_clients_per_uid is not None else min(8, self.max_clients)

    @property
    def reserved(self) -> int:
        return self.reserved_clients if self.reserved_clients is not None else self.max_clients // 4


class MetricsSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    listen: str = DEFAULT_METRICS_LISTEN


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LoggingSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: LogLevel = LogLevel.INFO


class DatabaseSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dsn: str = "postgresql:///molam"
    password: Secret | None = None
    pool_min_size: int = 1
    pool_max_size: int = 8
    connect_timeout: Duration = msgspec.field(default_factory=lambda: _d("5s"))
    statement_timeout: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    ping_interval: Duration = msgspec.field(default_factory=lambda: _d("5s"))
    retry_initial: Duration = msgspec.field(default_factory=lambda: _d("1s"))
    retry_max: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    # "vault-db:ROLE" or "vault-db:MOUNT/ROLE": leased credentials from Vault's database engine; empty: the dsn's
    # user with `password`
    credentials: str = ""

    @property
    def credentials_role(self) -> tuple[str, str] | None:
        """(mount, role) of ``credentials``, or None for a static login."""
        if not self.credentials:
            return None
        target = self.credentials.removeprefix("vault-db:")
        mount, _, role = target.rpartition("/")
        return (mount or "database", role)


class SupervisionSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_restarts: int = 5
    period: Duration = msgspec.field(default_factory=lambda: _d("60s"))
    stable_after: Duration = msgspec.field(default_factory=lambda: _d("60s"))
    backoff_initial: Duration = msgspec.field(default_factory=lambda: _d("1s"))
    backoff_max: Duration = msgspec.field(default_factory=lambda: _d("30s"))


class HealthCheckerSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    interval: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    timeout: Duration = msgspec.field(default_factory=lambda: _d("5s"))
    concurrency: int = 16


class DispatcherSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    batch_size: int = 200
    lease: Duration = msgspec.field(default_factory=lambda: _d("60s"))
    idle_poll: Duration = msgspec.field(default_factory=lambda: _d("200ms"))
    max_in_flight: int = 256
    call_timeout: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    first_status_check: Duration = msgspec.field(default_factory=lambda: _d("500ms"))
    release_delay: Duration = msgspec.field(default_factory=lambda: _d("1s"))
    retry_initial: Duration = msgspec.field(default_factory=lambda: _d("1s"))
    retry_max: Duration = msgspec.field(default_factory=lambda: _d("5m"))
    flush_interval: Duration = msgspec.field(default_factory=lambda: _d("20ms"))
    lookup_initial: Duration = msgspec.field(default_factory=lambda: _d("2s"))
    lookup_max: Duration = msgspec.field(default_factory=lambda: _d("2m"))
    lookup_grace: Duration = msgspec.field(default_factory=lambda: _d("5m"))


class StatusFollowerSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    batch_size: int = 200
    interval: Duration = msgspec.field(default_factory=lambda: _d("500ms"))
    lease: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    concurrency: int = 64
    call_timeout: Duration = msgspec.field(default_factory=lambda: _d("30s"))
    unknown_after: Duration = msgspec.field(default_factory=lambda: _d("1h"))
    backoff_initial: Duration = msgspec.field(default_factory=lambda: _d("500ms"))
    backoff_max: Duration = msgspec.field(default_factory=lambda: _d("60s"))


class TelemetrySection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    # How often audit rows of status and health calls are written, and payout counts refreshed for metrics.
    interval: Duration = msgspec.field(default_factory=lambda: _d("5s"))


class HsmSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The PKCS#11 token that holds the signing keys."""

    module: str = "/usr/lib/softhsm/libsofthsm2.so"  # the vendor's PKCS#11 library
    token: str = ""  # token label; empty: no HSM configured
    pin: Secret | None = None  # the user PIN, as a secret reference


class VaultSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[vault]``: where ``vault:`` references are resolved (OpenBao or HashiCorp Vault), and how to log in."""

    address: str = ""  # e.g. "https://vault.internal:8200"; empty: no Vault, and a vault: reference is an error
    role_id: str = ""  # the AppRole role_id (not a secret by itself)
    secret_id: Secret | None = None  # the AppRole secret_id: credential:, file: or env:, never vault:
    secret_id_wrapped: bool = False  # secret_id is a response-wrapping token, unwrapped once at start
    approle_mount: str = "approle"
    namespace: str = ""  # Vault Enterprise / OpenBao namespaces; empty: none
    ca_file: str = ""  # PEM bundle to verify the server's certificate; empty: the system's
    timeout: Duration = msgspec.field(default_factory=lambda: _d("5s"))
    cache_ttl: Duration = msgspec.field(default_factory=lambda: _d("15m"))
    rotation_check: Duration = msgspec.field(default_factory=lambda: _d("1m"))
    token_renew_fraction: float = 0.5


class EncryptionSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[encryption]``: what is sealed at rest, and with which keys."""

    statements: bool = False  # seal raw statement files in bank_statements_raw
    transit_key: str = "molamd"  # with [vault]: the transit key that wraps each data key
    local_key: Secret | None = None  # without [vault]: base64 of 32 random bytes, from a secret reference
    lookup_key: Secret | None = None  # HMAC key of the counterparty account lookup hashes (base64 of 32 bytes)


class AuditSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[audit]``: how long the audit trail stays in the database, and its month partitions."""

    retention_months: int = 84  # 7 years (BCEAO, GDPR); older months are exported, then detached, never dropped
    partitions_ahead: int = 3  # month partitions kept ready ahead of now (made at migrate, checked daily)


class TracingSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[tracing]``: OpenTelemetry spans over OTLP/HTTP; off unless an endpoint is given."""

    otlp_endpoint: str = ""  # e.g. "http://127.0.0.1:4318/v1/traces"; empty: no tracing
    sample_ratio: float = 1.0  # share of traces kept, decided by trace id (the same on every host)
    service_name: str = "molamd"


class WorkersSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    health_checker: HealthCheckerSection = msgspec.field(default_factory=HealthCheckerSection)
    dispatcher: DispatcherSection = msgspec.field(default_factory=DispatcherSection)
    status_follower: StatusFollowerSection = msgspec.field(default_factory=StatusFollowerSection)
    telemetry: TelemetrySection = msgspec.field(default_factory=TelemetrySection)


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    control: ControlSection = msgspec.field(default_factory=ControlSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    database: DatabaseSection = msgspec.field(default_factory=DatabaseSection)
    supervision: SupervisionSection = msgspec.field(default_factory=SupervisionSection)
    workers: WorkersSection = msgspec.field(default_factory=WorkersSection)
    hsm: HsmSection = msgspec.field(default_factory=HsmSection)
    vault: VaultSection = msgspec.field(default_factory=VaultSection)
    encryption: EncryptionSection = msgspec.field(default_factory=EncryptionSection)
    audit: AuditSection = msgspec.field(default_factory=AuditSection)
    tracing: TracingSection = msgspec.field(default_factory=TracingSection)
    connectors: list[AnyConnectorConfig] = msgspec.field(default_factory=list)
    csv_profiles: dict[str, CsvProfile] = msgspec.field(default_factory=dict)

    def connector(self, name: str) -> AnyConnectorConfig | None:
        for entry in self.connectors:
            if entry.name == name:
                return entry
        return None

    def csv_profile(self, name: str) -> CsvProfile | None:
        """A ``[csv_profiles.NAME]``, else the built-in profile when NAME is "molamd"; None when neither."""
        found = self.csv_profiles.get(name)
        if found is None and name == MOLAMD_PROFILE_NAME:
            return MOLAMD_PROFILE
        return found

    def source_profile(self, entry: ConnectorConfig) -> CsvProfile | None:
        """The profile a ``csv-sftp`` source reads with (None for other kinds, or a profile that is missing)."""
        if isinstance(entry, SftpSourceConfig) and entry.statement_format == "csv":
            return self.csv_profile(entry.sftp.csv_profile)
        return None
