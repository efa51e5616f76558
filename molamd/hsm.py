"""The Signer: keys that never leave a PKCS#11 token (SoftHSM2 in development and tests, a vendor's HSM in
production: the same code with another module path).

One logged-in session for the signer's life; every call is serialised (PKCS#11 sessions are not for concurrent
use). RSA-2048 signs with CKM_SHA256_RSA_PKCS. P-256 hashes on the host and signs with CKM_ECDSA (SoftHSM 2.6 has
no CKM_ECDSA_SHA256); the result is r||s, as XML-DSig wants it. Keys are generated inside the token, sensitive
and not extractable. Every failure is one of the typed errors below, naming the module, token or key.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key


class HsmError(Exception):
    """Base of the signer's errors; none of them says a PIN."""


class HsmUnavailable(HsmError):
    """The module cannot be loaded, or the token is not there."""


class HsmLoginFailed(HsmError):
    """The token refused the PIN, or is locked."""


class KeyNotFound(HsmError):
    """No key of that label in the token."""


class KeyKind(enum.StrEnum):
    RSA_2048 = "rsa-2048"
    EC_P256 = "ec-p256"


class Signer:
    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.module, self.token_label = module, token_label
        self._pin = pin
        self._session: Any = None
        self._private: dict[str, Any] = {}  # key handles by label: a lookup per signature would halve the rate
        self._lock = threading.Lock()

    # -- the session ----------------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                lib = pkcs11.lib(self.module)
            except (RuntimeError, OSError) as exc:
                raise HsmUnavailable(f"PKCS#11 module {self.module}: cannot load it ({exc})") from None
            try:
                token = lib.get_token(token_label=self.token_label)
            except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
                raise HsmUnavailable(f"token {self.token_label!r} in {self.module}: {type(exc).__name__}") from None
            try:
                self._session = token.open(user_pin=self._pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 logs in once per process: another session of ours (a signer being replaced after a PIN
                # rotation) still holds the login, and this session shares it.
                self._session = token.open(rw=True)
            except (pkcs11.PinIncorrect, pkcs11.PinLocked, pkcs11.PinLenRange) as exc:
                raise HsmLoginFailed(f"token {self.token_label!r}: login refused ({type(exc).__name__})") from None

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
            self._private.clear()
            if session is not None:
                session.close()

    # -- keys -----------------------------------------------------------------------------------------

    def keygen(self, label: str, kind: KeyKind) -> bytes:
        """A key pair made inside the token (the private half sensitive and never extractable); its public key
        as DER SubjectPublicKeyInfo."""
        template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True}
        with self._lock:
            session = self._open_session()
            if self._find(session, ObjectClass.PRIVATE_KEY, label) is not None:
                raise HsmError(f"token {self.token_label!r} already has a key {label!r}")
            if kind is KeyKind.RSA_2048:
                public, _ = session.generate_keypair(KeyType.RSA, 2048, label=label, store=True,
                                                     private_template=template)
            else:
                params = session.create_domain_parameters(KeyType.EC, {
                    Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
                public, _ = params.generate_keypair(label=label, store=True, private_template=template)
            return self._public_der(public)

    def public_key(self, label: str) -> bytes:
        """The DER SubjectPublicKeyInfo of key ``label``."""
        with self._lock:
            session = self._open_session()
            public = self._find(session, ObjectClass.PUBLIC_KEY, label)
            if public is None:
                raise KeyNotFound(f"token {self.token_label!r}: no public key {label!r}")
            return self._public_der(public)

    def list_keys(self) -> list[tuple[str, KeyKind]]:
        with self._lock:
            session = self._open_session()
            found = []
            for key in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                kind = KeyKind.RSA_2048 if key.key_type is KeyType.RSA else KeyKind.EC_P256
                found.append((str(key.label), kind))
            return sorted(found)

    def kind(self, label: str) -> KeyKind:
        for name, kind in self.list_keys():
            if name == label:
                return kind
        raise KeyNotFound(f"token {self.token_label!r}: no key {label!r}")

    # -- signing --------------------------------------------------------------------------------------

    def sign(self, label: str, data: bytes) -> bytes:
        """RSA: PKCS#1 v1.5 over SHA-256; P-256: ECDSA over SHA-256, as r||s."""
        with self._lock:
            session = self._open_session()
            key = self._private.get(label)
            if key is None:
                key = self._find(session, ObjectClass.PRIVATE_KEY, label)
                if key is None:
                    raise KeyNotFound(f"token {self.token_label!r}: no private key {label!r}")
                self._private[label] = key
            try:
                if key.key_type is KeyType.RSA:
                    return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
                return bytes(key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"token {self.token_label!r}, key {label!r}: signing failed ({type(exc).__name__})"
                               ) from None

    # -- inside the lock --------------------------------------------------------------------------------

    def _open_session(self) -> Any:
        if self._session is None:
            raise HsmUnavailable(f"token {self.token_label!r}: not open")
        return self._session

    @staticmethod
    def _find(session: Any, cls: ObjectClass, label: str) -> Any:
        found = list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))
        return found[0] if found else None

    @staticmethod
    def _public_der(public: Any) -> bytes:
        if public.key_type is KeyType.RSA:
            # PKCS#1 RSAPublicKey, which cryptography reads too: re-encoded as SubjectPublicKeyInfo
            key = load_der_public_key(encode_rsa_public_key(public))
            return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return bytes(encode_ec_public_key(public))
