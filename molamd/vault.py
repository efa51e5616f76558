"""The Vault client: OpenBao or HashiCorp Vault through hvac, AppRole login, ``vault:`` references from KV v2.

hvac is synchronous (requests): every call here blocks and belongs in a worker thread (config resolution runs
in one). Every call has an explicit timeout. hvac's and requests' errors are mapped to our own, by whose fault:

    VaultError
    ├── VaultUnavailable     the server is down, hangs, or is sealed (retryable: nothing is wrong with us)
    ├── VaultDenied          a policy denies the path, or the token is bad, expired or revoked
    ├── VaultNotFound        no such mount, path, field or version (or the version was deleted or destroyed)
    ├── WrappingTokenUsed    the response-wrapped secret_id was already unwrapped: someone else has it (alert)
    └── VaultLoginFailed     the role_id or secret_id is refused (expired, used up, wrong)

hvac reads ``VAULT_TOKEN`` and ``~/.vault-token`` by itself; this client never lets it: it always sets its own
token (empty until the AppRole login). A reference is ``vault:MOUNT/PATH#FIELD`` or ``vault:MOUNT/PATH#FIELD@N``
(version N); messages name the reference, never a value.
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Any, Final, cast

import msgspec

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
    if isinstance(exc, hv.VaultError):
        return VaultError(f"{what}: {type(exc).__name__}: {'; '.join(map(str, exc.errors or []))[:300]}")
    return VaultUnavailable(f"{what}: {type(exc).__name__}")


class Vault:
    """One hvac client and its token; safe to share between threads (one lock around the token)."""

    def __init__(self, address: str, *, timeout: float = 5.0, ca_file: str | None = None,
                 namespace: str | None = None) -> None:
        import hvac

        self.address = address
        # hvac's stubs say int; requests takes a float, and a config of "1.5s" means it
        self._timeout = cast(Any, timeout)
        self._verify, self._namespace = ca_file or True, namespace or None
        self._client = hvac.Client(url=address, token="", timeout=self._timeout, verify=self._verify,
                                   namespace=self._namespace)
        self._lock = threading.Lock()
        self.token_ttl: int | None = None

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
        self.token_ttl = int(answer["auth"]["lease_duration"])
        return self.token_ttl

    # -- KV v2 ----------------------------------------------------------------------------------------

    def read(self, reference: Reference) -> Resolved:
        """One field of a KV v2 secret, at its latest version or the one named."""
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
        version = int(((answer.get("data") or {}).get("metadata") or {}).get("version") or 0)
        return Resolved(value=value, version=version)

    def close(self) -> None:
        self._client.adapter.close()
