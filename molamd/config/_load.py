"""Reading molamd.toml: TOML syntax, types (via msgspec), then the rules that span keys."""

from __future__ import annotations

import grp
import ipaddress
import os
import posixpath
import re
from pathlib import Path
from typing import Any

import msgspec
import psycopg

# tomli is the standard library's tomllib, shipped compiled: three times faster on a 1,000-connector file,
# which is most of what a reload costs.
import tomli as tomllib
from psycopg.conninfo import conninfo_to_dict

from connectors import KINDS, decode_hook

from ._bounds import check_numbers
from ._errors import ConfigError, ConfigProblem
from ._files import CONFIG_MAX_BYTES, UnreadableFile, read_regular
from ._model import MOLAMD_PROFILE_NAME, Config

_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def parse_config(text: str, *, file: str) -> Config:
    """Decode and validate config text (secret references are checked for syntax, not resolved)."""
    data = _toml(text, file)
    # TOML has no raw NUL: one comes only from an escape, so a file without one is not walked (60,000 leaves)
    nuls = _nul_paths(data) if "\\u0000" in text or "\\U00000000" in text else []
    if nuls:
        raise ConfigError(file, [ConfigProblem(path, "holds a NUL character (\\x00): no name, path or value may")
                                 for path in nuls])
    _check_kinds(data, file)
    try:
        config = msgspec.convert(data, Config, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        match = _MSGSPEC_PATH.match(str(exc))
        assert match is not None
        raise ConfigError(file, [ConfigProblem(match["path"] or "$", match["message"])]) from exc
    problems = validate(config)
    if problems:
        raise ConfigError(file, problems)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming the file and path of every problem."""
    file = str(path).replace("\x00", "\\x00")  # as shown; read_regular refuses the path itself
    try:
        text = read_regular(str(path), CONFIG_MAX_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        raise ConfigError(file, [ConfigProblem("$", f"cannot read the file: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(file, [ConfigProblem("$", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from exc
    return parse_config(text, file=file)


_LONG_NUMBER = re.compile(r"\d{4300}")


def _toml(text: str, file: str) -> dict[str, Any]:
    """TOML, or a ConfigError: tomli raises RecursionError for deep nesting and a bare ValueError for an integer
    over Python's digit limit (without a position: the line is found here)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [ConfigProblem("$", f"not valid TOML: {exc}")]) from exc
    except RecursionError as exc:
        raise ConfigError(file, [ConfigProblem("$", f"not valid TOML: nested too deep ({exc})")]) from None
    except ValueError as exc:
        found = _LONG_NUMBER.search(text)
        where = f" (at line {text.count(chr(10), 0, found.start()) + 1})" if found else ""
        raise ConfigError(file, [ConfigProblem(
            "$", f"not valid TOML: an integer of more than 4,300 digits{where}")]) from exc


def _nul_paths(data: dict[str, Any]) -> list[str]:
    """The path of every string (or key) holding a NUL: the OS refuses such a path or name with a ValueError,
    and only when it is finally used (a bind, a group lookup, an open at the next reload)."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("$", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append(path)
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found.append(path)
                else:
                    stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return sorted(found)


def _check_kinds(data: dict[str, Any], file: str) -> None:
    entries = data.get("connectors")
    if not isinstance(entries, list):
        return
    known = ", ".join(sorted(KINDS))
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        kind = entry.get("kind")
        path = f"$.connectors[{index}].kind"
        if kind is None:
            raise ConfigError(file, [ConfigProblem(path, f"missing; one of: {known}")])
        if not isinstance(kind, str):  # a list or table is not even hashable
            raise ConfigError(file, [ConfigProblem(path, f"a {type(kind).__name__}, not a string; one of: {known}")])
        if kind not in KINDS:
            raise ConfigError(file, [ConfigProblem(path, f"unknown connector kind {kind[:64]!r}; one of: {known}")])


def validate(config: Config) -> list[ConfigProblem]:
    """Rules no single type can express; returns every problem found."""
    problems = check_numbers(config)
    for check in (_check_connectors, _check_sources, _check_file_channels, _check_csv_profiles, _check_control,
                  _check_metrics, _check_database, _check_supervision, _check_workers, _check_encryption,
                  _check_client_certificates):
        check(config, problems)
    return problems


def _check_connectors(config: Config, problems: list[ConfigProblem]) -> None:
    seen: dict[str, int] = {}
    for index, entry in enumerate(config.connectors):
        path = f"$.connectors[{index}]"
        if not _NAME.match(entry.name):
            problems.append(ConfigProblem(
                f"{path}.name", "use 1-63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"))
        if entry.name in seen:
            problems.append(ConfigProblem(
                f"{path}.name", f"duplicate of $.connectors[{seen[entry.name]}].name ({entry.name!r})"))
        seen.setdefault(entry.name, index)
        if not entry.bank_profile:
            problems.append(ConfigProblem(f"{path}.bank_profile", "must not be empty"))
        breaker = entry.breaker
        if breaker.open_duration_max.seconds < breaker.open_duration.seconds:
            problems.append(ConfigProblem(f"{path}.breaker.open_duration_max", "must not be below open_duration"))
        for currency in entry.currencies:
            if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
                problems.append(ConfigProblem(f"{path}.currencies", f"{currency!r} is not an ISO 4217 code"))
        if entry.idempotency_scope and not _NAME.match(entry.idempotency_scope):
            problems.append(ConfigProblem(f"{path}.idempotency_scope", "use the same characters as a name"))
    _check_scopes(config, problems)


def _check_scopes(config: Config, problems: list[ConfigProblem]) -> None:
    """A scope is one bank's idempotency store: connectors of two bank profiles can never share one."""
    owner: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(config.connectors):
        first = owner.setdefault(entry.scope, (index, entry.bank_profile))
        if first[1] != entry.bank_profile:
            problems.append(ConfigProblem(
                f"$.connectors[{index}].idempotency_scope",
                f"scope {entry.scope!r} is also used by $.connectors[{first[0]}] of bank profile {first[1]!r};"
                f" connectors of different bank profiles never share an idempotency store"))


def _check_sources(config: Config, problems: list[ConfigProblem]) -> None:
    from connectors import SftpSourceConfig

    for index, entry in enumerate(config.connectors):
        if not isinstance(entry, SftpSourceConfig):
            continue
        path, o = f"$.connectors[{index}].sftp", entry.sftp
        for key in ("inbox", "archive", "error"):
            if not getattr(o, key).startswith("/"):
                problems.append(ConfigProblem(f"{path}.{key}", "must be an absolute remote path"))
        if len({o.inbox.rstrip("/"), o.archive.rstrip("/"), o.error.rstrip("/")}) < 3:
            problems.append(ConfigProblem(path, "inbox, archive and error must be three different directories"))
        if not o.patterns:
            problems.append(ConfigProblem(f"{path}.patterns", "must name at least one pattern"))
        if o.password is None and o.private_key is None:
            problems.append(ConfigProblem(path, "set password or private_key"))
        if entry.statement_format == "csv" and config.csv_profile(o.csv_profile) is None:
            known = ", ".join([MOLAMD_PROFILE_NAME, *sorted(config.csv_profiles)])
            problems.append(ConfigProblem(f"{path}.csv_profile", f"no [csv_profiles.{o.csv_profile}] (known: {known})"))


def _check_report_drops(config: Config, problems: list[ConfigProblem]) -> None:
    """One SFTP report drop, one file channel: whichever lists it first takes the other's reports (it knows none
    of their files, flags them and archives them), and the other's slices stay sent for ever."""
    from connectors import FileChannelConfig

    readers: dict[tuple[str, ...], int] = {}
    for index, entry in enumerate(config.connectors):
        if not isinstance(entry, FileChannelConfig):
            continue
        if entry.iso20022.transport == "sftp" and entry.sftp is not None:
            o = entry.sftp
            inbox = posixpath.normpath("/" + o.inbox.strip("/"))
            drop: tuple[str, ...] = ("sftp", o.host.lower().rstrip("."), str(o.port), o.username, inbox)
            where, what = f"$.connectors[{index}].sftp.inbox", f"{o.host}:{o.port} {inbox} (as {o.username!r})"
        elif entry.rest is not None:  # GET /files/reports answers the key, whichever channel asks
            drop = ("rest", entry.rest.base_url.rstrip("/").lower(), entry.rest.key_id)
            where, what = f"$.connectors[{index}].rest.key_id", f"{entry.rest.base_url} as {entry.rest.key_id!r}"
        else:
            continue
        first = readers.setdefault(drop, index)
        if first != index:
            problems.append(ConfigProblem(
                where, f"{what} is also the report drop of $.connectors[{first}] ({config.connectors[first].name!r}):"
                f" each would take the other's pain.002 reports; give each file channel its own"))


def _check_file_channels(config: Config, problems: list[ConfigProblem]) -> None:
    from connectors import BankCalendar, CalendarError, FileChannelConfig
    from connectors.iso20022 import Pain001Version

    from ._msg_id import prefix_problem

    _check_report_drops(config, problems)
    for index, entry in enumerate(config.connectors):
        if not isinstance(entry, FileChannelConfig):
            continue
        path, o = f"$.connectors[{index}]", entry.iso20022
        try:
            BankCalendar(entry.cutoffs)
        except CalendarError as exc:
            problems.append(ConfigProblem(f"{path}.cutoffs", str(exc)))
        if not config.hsm.token:
            problems.append(ConfigProblem("$.hsm.token", f"connector {entry.name!r} signs files: configure the HSM"))
        if o.profile.value == "enveloped" and o.version is not Pain001Version.V09:
            problems.append(ConfigProblem(f"{path}.iso20022.signature",
                                          f"{o.version.value} has no place for an enveloped signature: use detached"))
        if o.key_algorithm not in ("rsa-sha256", "ecdsa-sha256"):
            problems.append(ConfigProblem(f"{path}.iso20022.key_algorithm", "rsa-sha256 or ecdsa-sha256"))
        for key in ("certificate", "bank_certificate"):
            value = getattr(o, key)
            if value and not os.path.isabs(value):
                problems.append(ConfigProblem(f"{path}.iso20022.{key}", f"{value}: give an absolute path"))
        if o.reports_signed and not o.bank_certificate:
            problems.append(ConfigProblem(f"{path}.iso20022.bank_certificate",
                                          "reports_signed needs the bank's certificate to check them against"))
        if o.reports_signed is False and o.bank_certificate:
            problems.append(ConfigProblem(f"{path}.iso20022.reports_signed", (
                "a pinned bank_certificate means every report must be signed: an unsigned one would be applied"
                " unchecked beside it; drop reports_signed = false, or the pin if this bank signs nothing")))
        if not 1 <= o.max_transactions <= 100_000:
            problems.append(ConfigProblem(f"{path}.iso20022.max_transactions", "between 1 and 100000"))
        prefix = prefix_problem(o.msg_id_prefix, o.max_transactions)
        if prefix is not None:
            problems.append(ConfigProblem(f"{path}.iso20022.msg_id_prefix", prefix))
        for key in ("upload_dir",):
            if not getattr(o, key).startswith("/"):
                problems.append(ConfigProblem(f"{path}.iso20022.{key}", "must be an absolute remote path"))
        if o.transport.value == "sftp":
            if entry.sftp is None:
                problems.append(ConfigProblem(f"{path}.sftp", "transport sftp needs [connectors.sftp]"))
            else:
                if o.upload_dir.rstrip("/") == entry.sftp.inbox.rstrip("/"):
                    problems.append(ConfigProblem(f"{path}.iso20022.upload_dir",
                                                  "must differ from sftp.inbox (where the bank drops its reports)"))
                if entry.sftp.password is None and entry.sftp.private_key is None:
                    problems.append(ConfigProblem(f"{path}.sftp", "set password or private_key"))
        elif entry.rest is None:
            problems.append(ConfigProblem(f"{path}.rest", "transport rest needs [connectors.rest]"))


def _check_csv_profiles(config: Config, problems: list[ConfigProblem]) -> None:
    for name, profile in config.csv_profiles.items():
        problems.extend(ConfigProblem(f"$.csv_profiles.{name}", problem) for problem in profile.problems())


def _check_control(config: Config, problems: list[ConfigProblem]) -> None:
    control = config.control
    if not control.socket.startswith("/"):
        problems.append(ConfigProblem("$.control.socket", "must be an absolute path"))
    try:
        mode = int(control.socket_mode, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
    except ValueError:
        problems.append(
            ConfigProblem("$.control.socket_mode", f"{control.socket_mode!r} is not an octal mode like '0660'")
        )
    for key in ("operator_group", "readonly_group"):
        group = getattr(control, key)
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                problems.append(ConfigProblem(f"$.control.{key}", f"no such group {group!r} on this host"))
    if control.per_uid > control.max_clients:
        problems.append(ConfigProblem("$.control.max_clients_per_uid", "must not be above max_clients"))
    if control.reserved and control.reserved >= control.max_clients:
        problems.append(ConfigProblem("$.control.reserved_clients", "must be below max_clients"))


def _check_metrics(config: Config, problems: list[ConfigProblem]) -> None:
    if config.metrics.enabled:
        try:
            split_listen(config.metrics.listen)
        except ValueError as exc:
            problems.append(ConfigProblem("$.metrics.listen", str(exc)))


def _check_database(config: Config, problems: list[ConfigProblem]) -> None:
    db = config.database
    try:
        params = conninfo_to_dict(db.dsn)
    except psycopg.ProgrammingError:
        # libpq's message may quote the string, and a password with it: say only where.
        problems.append(ConfigProblem("$.database.dsn", "not a libpq connection string or URI (not shown)"))
    else:
        if "password" in params:
            problems.append(ConfigProblem("$.database.dsn", "holds a password (not shown): remove it and give "
                                          "[database] password as a secret reference, e.g. \"credential:db-password\""))
    if db.credentials:
        role = db.credentials_role
        if not db.credentials.startswith("vault-db:") or role is None or not _NAME.match(role[1]):
            problems.append(ConfigProblem("$.database.credentials", f"{db.credentials!r}: give \"vault-db:ROLE\" or"
                                          " \"vault-db:MOUNT/ROLE\""))
        if not config.vault.address:
            problems.append(ConfigProblem("$.database.credentials", "leased credentials need [vault] address"))
        if db.password is not None:
            problems.append(ConfigProblem("$.database.password", "set password or credentials, not both"))
    if not 1 <= db.pool_min_size <= db.pool_max_size:
        problems.append(ConfigProblem("$.database.pool_min_size", "need 1 <= pool_min_size <= pool_max_size"))
    if db.retry_max.seconds < db.retry_initial.seconds:
        problems.append(ConfigProblem("$.database.retry_initial", "need retry_initial <= retry_max"))


def _check_client_certificates(config: Config, problems: list[ConfigProblem]) -> None:
    from connectors import RestConfig

    for index, entry in enumerate(config.connectors):
        if not isinstance(entry, RestConfig) or not entry.rest.client_pki:
            continue
        path, o, pki = f"$.connectors[{index}].rest", entry.rest, entry.rest.client_pki
        if not config.vault.address:
            problems.append(ConfigProblem(f"{path}.client_pki", "needs [vault] address"))
        if o.client_cert or o.client_key:
            problems.append(ConfigProblem(f"{path}.client_pki", "set client_pki or client_cert/client_key, not both"))
        if "/issue/" not in pki:
            problems.append(ConfigProblem(f"{path}.client_pki", f"{pki!r}: give MOUNT/issue/ROLE"))
        if not o.base_url.startswith("https://"):
            problems.append(ConfigProblem(f"{path}.base_url", "a client certificate needs an https:// base_url"))


def _check_encryption(config: Config, problems: list[ConfigProblem]) -> None:
    enc = config.encryption
    if enc.statements and not config.vault.address and enc.local_key is None:
        problems.append(ConfigProblem("$.encryption.statements", "sealing needs [vault] (transit) or local_key"))
    if enc.local_key is not None and config.vault.address:
        problems.append(ConfigProblem("$.encryption.local_key", "with [vault], data keys come from transit: remove it"))
    if not _NAME.match(enc.transit_key):
        problems.append(ConfigProblem("$.encryption.transit_key", "use the same characters as a name"))


def _check_supervision(config: Config, problems: list[ConfigProblem]) -> None:
    sup = config.supervision
    if sup.backoff_max.seconds < sup.backoff_initial.seconds:
        problems.append(ConfigProblem("$.supervision.backoff_max", "must not be below backoff_initial"))


def _check_workers(config: Config, problems: list[ConfigProblem]) -> None:
    d = config.workers.dispatcher
    if d.lease.seconds <= d.call_timeout.seconds:
        problems.append(ConfigProblem("$.workers.dispatcher.lease", "must be longer than call_timeout"))
    # Each pair makes a Backoff, which refuses initial > maximum with a ValueError each time its actor starts
    # (the database's and the supervision's pairs are checked with their sections)
    backoffs = (("workers.dispatcher", d, "retry"), ("workers.dispatcher", d, "lookup"),
                ("workers.status_follower", config.workers.status_follower, "backoff"))
    for where, section, name in backoffs:
        if getattr(section, f"{name}_max").seconds < getattr(section, f"{name}_initial").seconds:
            problems.append(ConfigProblem(f"$.{where}.{name}_initial", f"need {name}_initial <= {name}_max"))


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` → (host, port); raises ValueError with the reason."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{listen!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{listen!r}: give an IP address (or localhost) to listen on") from None
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{listen!r}: port out of range")
    return host, port
