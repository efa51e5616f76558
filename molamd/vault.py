"""The Vault client: OpenBao or HashiCorp Vault through hvac, AppRole login, ``vault:`` references from KV v2.

hvac is synchronous (requests): every call here blocks. Config resolution runs in a worker thread; the daemon's
actors call through ``Vault.run``, one worker thread per call under the client's own CapacityLimiter. Every
call has an explicit timeout. hvac's and requests' errors are mapped to our own, by whose fault:

    VaultError
    ├── VaultUnavailable     the server is down, hangs, or is sealed (retryable: nothing is wrong with us)
    ├── VaultDenied          a policy denies the path, or the token is bad, expired or revoked
    ├── VaultNotFound        no such mount, path, field or version (or the version was deleted or destroyed)
    ├── WrappingTokenUsed    the response-wrapped secret_id was already unwrapped: someone else has it (alert)
    └── VaultLoginFailed     the role_id or secret_id is refused (expired, used up, wrong)

hvac reads ``VAULT_TOKEN`` and ``~/.vault-token`` by itself; this client never lets it: it always sets its own
token (empty until the AppRole login). KV reads go through an in-memory cache (never written to disk): a fresh
entry answers without a call, and while Vault cannot be reached an entry keeps answering until ``cache_ttl``
after it was read; then the reference fails with the reason. A reference is ``vault:MOUNT/PATH#FIELD`` or
``vault:MOUNT/PATH#FIELD@N`` (version N); messages name the reference, never a value.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import msgspec
import trio

T = TypeVar("T")
_THREADS: Final = 4  # calls to Vault in flight at once from the daemon's actors

_REFERENCE: Final = re.compile(r"(?P<mount>[A-Za-z0-9_.-]+)/(?P<path>[A-Za-z0-9_./-]+)#(?P<field>[A-Za-z0-9_.-]+)"
                               r"(?:@(?P<version>[0-9]+))?")


class VaultError(Exception):
    retryable = False


class VaultUnavailable(VaultError):
    retryable = True


class VaultDenied(VaultError):
    pass


class VaultNotFound(VaultError):
    pass


class WrappingTokenUsed(VaultError):
    pass


class VaultLoginFailed(VaultError):
    pass


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    mount: str
    path: str
    field: str
    version: int | None = None

    @classmethod
    def parse(cls, target: str) -> Reference:
        match = _REFERENCE.fullmatch(target)
        if match is None or ".." in match["path"].split("/"):
            raise VaultNotFound(f"vault:{target}: not a reference of the form vault:MOUNT/PATH#FIELD[@VERSION]")
        version = match["version"]
        return cls(mount=match["mount"], path=match["path"], field=match["field"],
                   version=int(version) if version else None)

    def __str__(self) -> str:
        return f"vault:{self.mount}/{self.path}#{self.field}" + (f"@{self.version}" if self.version else "")


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    version: int
    created_at: float | None = None  # when this version was written (KV v2 metadata): secret age alerts


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A lease of the database engine: its id (shown in status and metrics) and how long it runs from ``at``."""

    lease_id: str
    duration: int
    renewable: bool
    at: float  # time.time() when the duration was granted


class DbCredentials(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    password: str
    lease: Lease

    def __repr__(self) -> str:
        return f"DbCredentials(username={self.username!r}, password=***, lease={self.lease!r})"


class Certificate(msgspec.Struct, frozen=True, kw_only=True):
    """A client certificate issued by the PKI engine: its chain, its key (never shown), serial and expiry."""

    chain_pem: str
    key_pem: str
    serial: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Certificate(serial={self.serial!r}, expires_at={self.expires_at}, key=***)"


class TokenState(msgspec.Struct, frozen=True, kw_only=True):
    """The daemon's token after a login or renewal: its TTL, and whether the server capped it (max TTL near)."""

    ttl: int
    renewable: bool
    capped: bool = False


def _mapped(exc: Exception, what: str) -> VaultError:
    """hvac's and requests' exceptions as ours; ``what`` names the call (never a value)."""
    import hvac.exceptions as hv
    import requests

    if isinstance(exc, hv.VaultDown):
        return VaultUnavailable(f"{what}: Vault is sealed or down")
    if isinstance(exc, requests.exceptions.Timeout):
        return VaultUnavailable(f"{what}: no answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return VaultUnavailable(f"{what}: cannot connect")
    if isinstance(exc, hv.Forbidden):
        return VaultDenied(f"{what}: permission denied (a policy, or a token that is no longer valid)")
    if isinstance(exc, hv.InvalidPath):
        return VaultNotFound(f"{what}: no such path (or its version was deleted or destroyed)")
    if isinstance(exc, hv.InvalidRequest):
        text = "; ".join(map(str, exc.errors or []))
        if "too old" in text or "disallowed by policy" in text:
            return VaultDenied(f"{what}: that key version is retired (min_decryption_version)")
        if "message authentication failed" in text or "invalid ciphertext" in text:
            return VaultError(f"{what}: the ciphertext is corrupted (authentication failed)")
        if "lease not found" in text or "invalid lease" in text:
            return VaultNotFound(f"{what}: the lease is gone (revoked or expired)")
    if isinstance(exc, hv.VaultError):
        return VaultError(f"{what}: {type(exc).__name__}: {'; '.join(map(str, exc.errors or []))[:300]}")
    return VaultUnavailable(f"{what}: {type(exc).__name__}")


def _timestamp(text: Any) -> float | None:
    """Vault's RFC 3339 times (nanoseconds, ``Z``) as Unix time; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    head, _, rest = text.rstrip("Z").partition(".")
    try:
        whole = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    digits = re.match(r"\d*", rest).group()[:6]  # type: ignore[union-attr]
    return whole.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _session() -> Any:
    """requests' session without the environment: no proxy variables or .netrc between the daemon and Vault (and
    not looking them up saves about 0.7 ms a call, a third of a cold read), a pool for the prefetch threads."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.trust_env = False
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(pool_maxsize=16))
    return session


class Vault:
    """One hvac client and its token; safe to share between threads (one lock around the token)."""

    def __init__(self, address: str, *, timeout: float = 5.0, ca_file: str | None = None,
                 namespace: str | None = None, cache_ttl: float = 900.0) -> None:
        import hvac

        self.address = address
        # hvac's stubs say int; requests takes a float, and a config of "1.5s" means it
        self._timeout = cast(Any, timeout)
        self._verify, self._namespace = ca_file or True, namespace or None
        self._client = hvac.Client(url=address, token="", timeout=self._timeout, verify=self._verify,
                                   namespace=self._namespace, session=_session())
        self._lock = threading.Lock()
        self._limiter: trio.CapacityLimiter | None = None  # made in the trio run that first needs it
        self.token_ttl: int | None = None
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[Resolved, float]] = {}  # reference → (what it resolved to, monotonic read time)
        self._login: tuple[str, str, str] | None = None  # role_id, secret_id, mount: to log in again
        self.logged_in_at: float | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn`` (a call of this client) in a worker thread under the client's limiter. On cancellation the call
        is abandoned; its thread ends at the client's timeout."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(_THREADS)
        return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)

    # -- authentication -------------------------------------------------------------------------------

    def unwrap(self, wrapping_token: str) -> str:
        """The secret_id inside a response-wrapped token; a token already unwrapped is WrappingTokenUsed."""
        import hvac
        import hvac.exceptions as hv

        unwrapper = hvac.Client(url=self.address, token=wrapping_token, timeout=self._timeout, verify=self._verify,
                                namespace=self._namespace)
        try:
            data: Any = unwrapper.sys.unwrap()  # type: ignore[no-untyped-call]
        except hv.InvalidRequest as exc:
            if "not valid" in str(exc) or "does not exist" in str(exc):
                raise WrappingTokenUsed(
                    "the wrapped secret_id was already unwrapped, or has expired: if this daemon did not unwrap"
                    " it, someone else holds its secret_id") from None
            raise _mapped(exc, "unwrap the secret_id") from None
        except Exception as exc:
            raise _mapped(exc, "unwrap the secret_id") from None
        secret_id = (data.get("data") or {}).get("secret_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise VaultLoginFailed("the wrapping token did not hold a secret_id")
        return secret_id

    def login(self, role_id: str, secret_id: str, mount: str = "approle") -> int:
        """AppRole login; the token's TTL in seconds."""
        import hvac.exceptions as hv

        try:
            with self._lock:
                answer = self._client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=mount)
        except hv.InvalidRequest:
            raise VaultLoginFailed(f"AppRole login at auth/{mount}: role_id or secret_id refused (expired, used"
                                   " up, or wrong)") from None
        except Exception as exc:
            raise _mapped(exc, f"AppRole login at auth/{mount}") from None
        self._login = (role_id, secret_id, mount)
        self.token_ttl = int(answer["auth"]["lease_duration"])
        self.logged_in_at = time.time()
        return self.token_ttl

    def login_again(self) -> int:
        """A new token from the AppRole credentials of the first login."""
        if self._login is None:
            raise VaultLoginFailed("never logged in")
        return self.login(*self._login)

    def renew_token(self) -> TokenState:
        """Renew the daemon's own token; ``capped`` when the server granted less than it had (max TTL near)."""
        try:
            with self._lock:
                answer: Any = self._client.auth.token.renew_self()
        except Exception as exc:
            raise _mapped(exc, "renew the token") from None
        auth = answer.get("auth") or {}
        ttl = int(auth.get("lease_duration") or 0)
        capped = bool(answer.get("warnings")) or (self.token_ttl is not None and ttl < self.token_ttl)
        self.token_ttl = ttl
        return TokenState(ttl=ttl, renewable=bool(auth.get("renewable")), capped=capped)

    def token_info(self) -> tuple[int, list[str]]:
        """The token's TTL left (seconds) and its policies (``molamd doctor``)."""
        try:
            answer: Any = self._client.auth.token.lookup_self()
        except Exception as exc:
            raise _mapped(exc, "look up the token") from None
        data = answer.get("data") or {}
        return int(data.get("ttl") or 0), [str(p) for p in data.get("policies") or []]

    def capabilities(self, paths: list[str]) -> dict[str, list[str]]:
        """What the token may do on each API path (sys/capabilities-self): no secret is read."""
        try:
            answer: Any = self._client.adapter.post("/v1/sys/capabilities-self", json={"paths": paths})
        except Exception as exc:
            raise _mapped(exc, "sys/capabilities-self") from None
        data = answer.get("data") or answer
        return {path: [str(c) for c in data.get(path) or []] for path in paths}

    def revoke_token(self) -> None:
        """Revoke the daemon's token (and with it every lease it holds); at shutdown."""
        try:
            self._client.auth.token.revoke_self()
        except Exception as exc:
            raise _mapped(exc, "revoke the token") from None

    # -- KV v2 ----------------------------------------------------------------------------------------

    def read(self, reference: Reference, *, fresh: bool = False, stale_ok: bool = True) -> Resolved:
        """One field of a KV v2 secret, at its latest version or the one named: from the cache while it is fresh
        (unless ``fresh``), from the cache until ``cache_ttl`` while Vault cannot be reached (unless not
        ``stale_ok``: a refresh says so itself). A secret Vault says is gone (deleted, destroyed, no such field)
        leaves the cache at once: no later read answers with it."""
        key = str(reference)
        with self._lock:
            cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[1] < self.cache_ttl:
            return cached[0]
        try:
            found = self._read(reference)
        except VaultNotFound:
            with self._lock:
                self._cache.pop(key, None)
            raise
        except (VaultUnavailable, VaultDenied) as exc:
            if stale_ok and cached is not None and now - cached[1] < self.cache_ttl:
                return cached[0]  # the value we had: Vault is away, not the secret
            raise exc from None
        with self._lock:
            self._cache[key] = (found, now)
        return found

    def current_version(self, reference: Reference) -> int:
        """The latest version of a KV v2 secret (its metadata: no value is read)."""
        return self.latest(reference)[0]

    def latest(self, reference: Reference) -> tuple[int, bool]:
        """The latest version of a KV v2 secret, and whether that version is deleted or destroyed (its metadata:
        no value is read)."""
        try:
            answer: Any = self._client.secrets.kv.v2.read_secret_metadata(path=reference.path,
                                                                          mount_point=reference.mount)
        except Exception as exc:
            raise _mapped(exc, f"{reference} (metadata)") from None
        data = answer.get("data") or {}
        current = int(data.get("current_version") or 0)
        version = (data.get("versions") or {}).get(str(current)) or {}
        return current, bool(version.get("deletion_time") or version.get("destroyed"))

    def _read(self, reference: Reference) -> Resolved:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                answer: Any = self._client.secrets.kv.v2.read_secret_version(
                    path=reference.path, mount_point=reference.mount, version=reference.version,
                    raise_on_deleted_version=True)
        except Exception as exc:
            raise _mapped(exc, str(reference)) from None
        data = (answer.get("data") or {}).get("data") or {}
        if reference.field not in data:
            raise VaultNotFound(f"{reference}: the secret has no field {reference.field!r}")
        value = data[reference.field]
        if not isinstance(value, str) or not value:
            raise VaultNotFound(f"{reference}: the field is empty or not a string")
        metadata = (answer.get("data") or {}).get("metadata") or {}
        return Resolved(value=value, version=int(metadata.get("version") or 0),
                        created_at=_timestamp(metadata.get("created_time")))

    # -- the database engine -------------------------------------------------------------------------

    def database_credentials(self, mount: str, role: str) -> DbCredentials:
        """New PostgreSQL credentials of a database engine role, under a lease that is a child of our token."""
        what = f"vault-db:{mount}/{role}"
        try:
            answer: Any = self._client.secrets.database.generate_credentials(name=role, mount_point=mount)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise _mapped(exc, what) from None
        data = answer.get("data") or {}
        return DbCredentials(username=str(data.get("username")), password=str(data.get("password")),
                             lease=Lease(lease_id=str(answer.get("lease_id")),
                                         duration=int(answer.get("lease_duration") or 0),
                                         renewable=bool(answer.get("renewable")), at=time.time()))

    def renew_lease(self, lease: Lease, increment: int | None = None) -> Lease:
        """The lease renewed; its duration may come back shorter (capped by the role's max TTL)."""
        try:
            answer: Any = self._client.sys.renew_lease(lease_id=lease.lease_id, increment=increment)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise _mapped(exc, f"renew lease {lease.lease_id}") from None
        return Lease(lease_id=lease.lease_id, duration=int(answer.get("lease_duration") or 0),
                     renewable=bool(answer.get("renewable")), at=time.time())

    # -- PKI ------------------------------------------------------------------------------------------

    def issue_certificate(self, path: str, common_name: str) -> Certificate:
        """A new certificate and key from a PKI role (``path``: MOUNT/issue/ROLE); the key exists only in the
        answer."""
        try:
            answer: Any = self._client.adapter.post(f"/v1/{path}", json={"common_name": common_name})
        except Exception as exc:
            raise _mapped(exc, f"PKI {path} for {common_name}") from None
        data = answer.get("data") or {}
        chain = [str(data["certificate"]), *[str(c) for c in data.get("ca_chain") or [] if c != data.get("issuing_ca")]]
        return Certificate(chain_pem="\n".join(chain) + "\n", key_pem=str(data["private_key"]),
                           serial=str(data.get("serial_number")), expires_at=float(data.get("expiration") or 0))

    # -- transit --------------------------------------------------------------------------------------

    def data_key(self, key: str) -> tuple[bytes, str]:
        """A new 256-bit data key from transit: (the key, the key wrapped by ``key`` as ``vault:vN:…``)."""
        try:
            answer: Any = self._client.secrets.transit.generate_data_key(name=key, key_type="plaintext")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise _mapped(exc, f"transit key {key!r} (datakey)") from None
        data = answer["data"]
        return base64.b64decode(data["plaintext"]), str(data["ciphertext"])

    def unwrap_key(self, key: str, wrapped: str) -> bytes:
        """The data key inside ``wrapped``; a retired key version or a corrupted wrapping is VaultError."""
        try:
            answer: Any = self._client.secrets.transit.decrypt_data(name=key, ciphertext=wrapped)
        except Exception as exc:
            raise _mapped(exc, f"transit key {key!r} (decrypt)") from None
        return base64.b64decode(answer["data"]["plaintext"])

    def rewrap(self, key: str, wrapped: str) -> str:
        """``wrapped`` under the key's latest version (after a rotation), without the data key leaving Vault."""
        try:
            answer: Any = self._client.secrets.transit.rewrap_data(name=key, ciphertext=wrapped)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise _mapped(exc, f"transit key {key!r} (rewrap)") from None
        return str(answer["data"]["ciphertext"])

    def close(self) -> None:
        self._client.adapter.close()
