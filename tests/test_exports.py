"""Each package's public names are exactly what its __init__ re-exports."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "actors": {
        "Actor", "ActorCrashed", "ActorError", "ActorSnapshot", "ActorState", "ActorStopped", "AskTimeout",
        "Backoff", "BreakerEvent", "BreakerSnapshot", "BreakerState", "Bulkhead", "CallObserver", "CheckHealth",
        "Child", "ChildInfo", "ChildSpec", "ChildState", "CircuitBreaker", "Claimed", "ConnectorActor",
        "ConnectorSnapshot", "DEFAULT_ASK_TIMEOUT", "DEFAULT_MAILBOX_SIZE", "DispatchState", "Dispatcher",
        "DispatcherSettings", "Drain", "Escalation", "EventKind", "FollowerSettings", "ForceOpen", "HealthChecker",
        "HealthResult", "MailboxFull", "Outcome", "OutcomeKind", "Pause", "PayoutStore", "Periodic",
        "PushedOutcome", "RateLimiter", "Refused", "ResetCircuit", "RestartPolicy", "RestartType", "Resume",
        "RetryPolicy", "Router", "RunNow", "SentSlice", "SetRate", "StatusFollower", "StatusOutcome", "Strategy",
        "Supervisor", "SupervisorError", "SupervisorEvent", "UnknownChild", "describe_error",
        "AttemptOutcome", "AttemptStart", "Deferred", "NOT_REACHED", "Route",
        "Build", "FileBatcher", "FileObserver", "FileStore", "Recorded", "ReportApplied", "ReportIn", "Submission",
        "Waiting", "clear_spool", "spool_prefix",
    },
    "connectors": {
        "AnyConnectorConfig", "Auth", "BadResponse", "BankConnector", "BreakerConfig", "Busy", "CallContext",
        "CallRecord", "Capability", "CircuitOpen", "ConnectorConfig", "ConnectorError", "ConnectorKind", "Duration",
        "Health", "IdempotencyConflict", "KINDS", "LimitsConfig", "Network", "NullConfig", "NullConnector",
        "PaymentConnector", "PaymentEvent", "PaymentRef", "PaymentState", "PaymentStatus", "PayoutSlice",
        "REDACTED", "RateLimited", "Rejected", "RestConfig", "RestConnector", "RestOptions", "Secret", "SendResult",
        "ServerError", "Timeout", "Validation", "build_connector", "decode_hook", "encode_hook", "mask_account",
        "Camt053SftpConfig", "CsvSftpConfig", "Fetched", "FileChanged", "FileRefused", "Mt940SftpConfig", "RemoteFile",
        "SftpConfig", "SftpOptions", "SftpSourceConfig", "SftpStatementConnector",
        "Listing", "MoveRefused", "Skipped", "SourceMisconfigured",
        "AmountError", "EventConnector", "offers", "render_amount",
        "BankCalendar", "CalendarError", "CutoffConfig", "FileChannelConfig", "FileChannelConnector",
        "FileChannelOptions", "Prepared", "SftpClient", "UploadRefused", "Uploaded",
    },
    "connectors.statements": {
        "Balance", "BalanceMismatch", "CsvColumns", "CsvProfile", "DEFAULT_MAX_BYTES", "Details", "FORMATS",
        "MOLAMD_PROFILE", "Statement", "StatementError", "StatementFormatError", "StatementLine", "check_balance",
        "guess_format", "iter_mt940", "iter_statements", "parse_camt", "parse_csv", "parse_details",
        "parse_mt940", "parse_statements",
    },
    "connectors.iso20022": {
        "Account", "CharsetError", "Pain001Version", "Party", "PaymentBatch", "PaymentFile", "PaymentFileError",
        "PostalAddress", "SEPA_LATIN", "Transfer", "build_pain001", "msg_id", "to_charset", "validate",
        "PaymentStatus", "Reason", "StatusReport", "StatusReportError", "TransactionStatus", "parse_pain002",
        "ECDSA_SHA256", "RSA_SHA256", "SignatureInvalid", "SigningError", "sign_enveloped", "verify_enveloped",
        "sign_detached", "verify_detached", "Effect", "Move", "effect", "move",
    },
    "molamd.config": {
        "AuditSection", "Config", "ConfigError", "ConfigProblem", "ControlSection", "DatabaseSection",
        "HealthCheckerSection",
        "LogLevel", "Resolver", "SecretUnavailable", "SupervisionSection", "default_resolvers", "load_config",
        "load_resolved", "parse_config", "resolve_secrets", "secret_values", "split_listen", "secret_entries",
        "connect_vault", "resolve_config",
    },
    "molamd.control": {
        "Access", "AlreadyRunning", "COMMANDS", "ControlError", "ControlServer", "ErrorCode", "MAX_LINE",
        "PROTOCOL_VERSION", "Peer", "access_for", "check_socket_path",
    },
    "molamd.db": {
        "Conn", "Database", "DatabaseError", "DatabaseUnavailable", "Listener", "Migration", "MigrationError",
        "RegistryRow", "config_hash", "conninfo", "current_version", "migrate", "report_states",
        "shipped_migrations", "sync_configured", "dict_rows", "DatabaseConflict", "SessionLock",
    },
}


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_exports(package: str) -> None:
    module = importlib.import_module(package)
    public = {name for name in vars(module) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert public - submodules == EXPECTED[package]


def test_error_trees() -> None:
    import actors
    import connectors

    assert issubclass(connectors.RateLimited, connectors.ConnectorError) and connectors.RateLimited.retryable
    assert not connectors.Rejected.retryable and connectors.Timeout.retryable
    rejected = connectors.Rejected("bank-a", "insufficient funds", reason_code="AM04")
    assert rejected.reason_code == "AM04" and "AM04" in str(rejected)
    assert connectors.RateLimited("b", "slow down", retry_after=2.5).retry_after == 2.5
    assert issubclass(actors.MailboxFull, actors.ActorError) and actors.MailboxFull.retryable
    assert str(actors.UnknownChild("x")) == "no child named 'x'"
