"""Encryption at rest: envelope encryption with a data key per file, wrapped by Vault's transit or a local key.

Each sealed value gets its own 256-bit data key. Only the data key goes to Vault (``transit/datakey`` makes it,
``transit/decrypt`` opens it, ``transit/rewrap`` moves it to the key's latest version after a rotation), so a
100 MB statement file never crosses the wire: its bytes are AES-256-GCM here, in 1 MiB chunks (the STREAM
construction: a random 8-byte prefix and a chunk counter make each nonce, the counter and a last-chunk flag are
authenticated, so chunks cannot be dropped, reordered or cut off). The wrapped key is not in the authenticated
data: transit authenticates it itself, another file's wrapped key opens a key under which no chunk verifies,
and rewrapping after a rotation replaces it without touching the ciphertext (no nonce is ever used twice).

The sealed form::

    b"MDE1" | u16 length of the wrapped key | wrapped key (ASCII: "vault:vN:…" or "local:…") | 8-byte nonce prefix
    | chunks, each AES-GCM(ciphertext + 16-byte tag)

Without Vault the same interface wraps data keys with a local key from a secret reference (``LocalKeys``): it
gives up key rotation without re-encrypting, the audit of every unwrap, and keeping the key out of this host.

Lookups that need equality (a counterparty account looked up without decrypting every row) use ``lookup_hash``,
an HMAC-SHA256 under a key of its own: equal values hash equal, and the hash says nothing without the key.

Errors::

    SealError                 the bytes are not what we sealed: corrupted, cut, or another format (their fault)
    KeyUnavailable            the wrapping key cannot open the data key: transit down or refusing, the key
                              missing, its version retired (min_decryption_version) — retryable when Vault is down
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .vault import Vault, VaultError

MAGIC = b"MDE1"
CHUNK = 1024 * 1024
_TAG = 16
_PREFIX = 8
_LOCAL_AAD = b"molamd data key"


class SealError(Exception):
    """The sealed bytes are corrupted, cut short, or not ours."""


class KeyUnavailable(Exception):
    """The data key cannot be made or opened now; ``retryable`` when the cause is Vault being away."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Keys(Protocol):
    """Where data keys come from and how they are wrapped."""

    def new_key(self) -> tuple[bytes, str]: ...

    def open_key(self, wrapped: str) -> bytes: ...

    def rewrap(self, wrapped: str) -> str: ...


class TransitKeys:
    """Data keys from Vault's transit engine (blocking: call from a worker thread)."""

    def __init__(self, vault: Vault, key: str) -> None:
        self._vault, self.key = vault, key

    def new_key(self) -> tuple[bytes, str]:
        try:
            return self._vault.data_key(self.key)
        except VaultError as exc:
            raise KeyUnavailable(str(exc), retryable=exc.retryable) from None

    def open_key(self, wrapped: str) -> bytes:
        if not wrapped.startswith("vault:"):
            raise SealError("the data key was not wrapped by transit")
        try:
            return self._vault.unwrap_key(self.key, wrapped)
        except VaultError as exc:
            raise KeyUnavailable(str(exc), retryable=exc.retryable) from None

    def rewrap(self, wrapped: str) -> str:
        try:
            return self._vault.rewrap(self.key, wrapped)
        except VaultError as exc:
            raise KeyUnavailable(str(exc), retryable=exc.retryable) from None


class LocalKeys:
    """Data keys wrapped with a local 256-bit key (the fallback without Vault)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the local key must be 32 bytes (base64 of 32 random bytes)")
        self._aead = AESGCM(key)

    @classmethod
    def from_text(cls, text: str) -> LocalKeys:
        try:
            return cls(base64.b64decode(text, validate=True))
        except ValueError as exc:
            raise ValueError(f"the local key is not base64 of 32 bytes ({exc})") from None

    def new_key(self) -> tuple[bytes, str]:
        key, nonce = AESGCM.generate_key(256), os.urandom(12)
        wrapped = self._aead.encrypt(nonce, key, _LOCAL_AAD)
        return key, "local:" + base64.b64encode(nonce + wrapped).decode()

    def open_key(self, wrapped: str) -> bytes:
        if not wrapped.startswith("local:"):
            raise SealError("the data key was not wrapped by the local key")
        try:
            blob = base64.b64decode(wrapped.removeprefix("local:"), validate=True)
            return self._aead.decrypt(blob[:12], blob[12:], _LOCAL_AAD)
        except (ValueError, InvalidTag):
            raise KeyUnavailable("the local key cannot open this data key (another key, or corrupted)") from None

    def rewrap(self, wrapped: str) -> str:
        return wrapped  # one local key has no versions


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", (index << 1) | int(last))


def seal_chunks(keys: Keys, chunks: Iterable[bytes], *, data_key: tuple[bytes, str] | None = None) -> Iterator[bytes]:
    """The sealed form of the concatenated ``chunks`` (re-cut to CHUNK), as a stream of pieces; under a new data
    key, or ``data_key`` (key, wrapped) when the caller seals more under it (the lines of the file)."""
    key, wrapped = data_key or keys.new_key()
    aead, prefix = AESGCM(key), os.urandom(_PREFIX)
    wrapped_bytes = wrapped.encode()
    yield MAGIC + struct.pack(">H", len(wrapped_bytes)) + wrapped_bytes + prefix
    aad = MAGIC + prefix
    index, pending = 0, bytearray()
    for piece in chunks:
        with memoryview(piece) as view:
            start = 0
            if pending:  # complete the partial chunk first
                start = min(len(view), CHUNK - len(pending))
                pending += view[:start]
                if len(pending) < CHUNK or start == len(view):
                    continue  # a full chunk is held back until more comes: it may be the last
                yield aead.encrypt(_nonce(prefix, index, False), bytes(pending), aad)
                pending, index = bytearray(), index + 1
            while len(view) - start > CHUNK:  # straight from the caller's buffer, no copy
                yield aead.encrypt(_nonce(prefix, index, False), view[start:start + CHUNK], aad)
                start, index = start + CHUNK, index + 1
            pending += view[start:]
    yield aead.encrypt(_nonce(prefix, index, True), bytes(pending), aad)


def seal(keys: Keys, data: bytes) -> bytes:
    return b"".join(seal_chunks(keys, [data]))


def _header(sealed: bytes) -> tuple[str, bytes, int]:
    if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + 2:
        raise SealError("not sealed by molamd (no MDE1 header)")
    (length,) = struct.unpack(">H", sealed[4:6])
    end = 6 + length + _PREFIX
    if len(sealed) < end + _TAG:
        raise SealError("sealed bytes cut short in the header")
    return sealed[6:6 + length].decode("ascii", "replace"), sealed[end - _PREFIX:end], end


def wrapped_key(sealed: bytes) -> str:
    """The wrapped data key of a sealed value (to rewrap it, or to see which key version made it)."""
    return _header(sealed)[0]


def unseal(keys: Keys, sealed: bytes) -> bytes:
    """The plaintext; SealError if any byte was changed, dropped or added."""
    return unseal_with(keys.open_key(wrapped_key(sealed)), sealed)


def unseal_with(key: bytes, sealed: bytes) -> bytes:
    """``unseal`` with the data key already opened."""
    _, prefix, offset = _header(sealed)
    aead, aad = AESGCM(key), MAGIC + prefix
    out, index = [], 0
    step = CHUNK + _TAG
    while True:
        piece = sealed[offset:offset + step]
        last = offset + step >= len(sealed)
        try:
            out.append(aead.decrypt(_nonce(prefix, index, last), piece, aad))
        except InvalidTag:
            raise SealError(f"chunk {index} fails authentication: the sealed bytes were changed or cut") from None
        if last:
            return b"".join(out)
        offset, index = offset + step, index + 1


def rewrap(keys: Keys, sealed: bytes) -> bytes:
    """The same ciphertext with its data key wrapped by the key's latest version (after a transit rotation)."""
    wrapped, prefix, offset = _header(sealed)
    fresh = keys.rewrap(wrapped).encode()
    return MAGIC + struct.pack(">H", len(fresh)) + fresh + prefix + sealed[offset:]


class FieldSealer:
    """Fields of one file's lines, sealed under that file's data key: one AES-GCM per line with a random nonce and
    the line's place (file/statement/line) as authenticated data, so a sealed value cannot be moved to another
    line unnoticed."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, place: str, fields: dict[str, Any]) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, json.dumps(fields, separators=(",", ":")).encode(), place.encode())

    def open(self, place: str, sealed: bytes) -> dict[str, Any]:
        try:
            fields: dict[str, Any] = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], place.encode()))
        except InvalidTag:
            raise SealError(f"the sealed fields of line {place} fail authentication") from None
        return fields


def lookup_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a normalised value (spaces dropped, upper case): equal accounts hash equal."""
    normal = "".join(value.split()).upper()
    return hmac.new(key, normal.encode(), hashlib.sha256).hexdigest()
