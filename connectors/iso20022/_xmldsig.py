"""XML-DSig over a pain.001 built with lxml, with SignedInfo signed elsewhere (in the HSM): python-xmlsec cannot
load PKCS#11 keys, so it only verifies.

Detached profile (pain.001.001.03, which has no slot for one): a signature document beside the payment file,
its Reference naming the file and digesting its bytes.

Enveloped profile (pain.001.001.09): the signature goes into ``CstmrCdtTrfInitn/SplmtryData/Envlp``, the one
place the schema allows any element; its Reference (URI "") covers the whole Document with the
enveloped-signature transform and exclusive c14n, SHA-256. SignedInfo is canonicalised with exclusive c14n and
signed with RSA-SHA256 or ECDSA-SHA256 (r||s). Pure apart from the ``sign`` callable it is given.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import Final

from lxml import etree

DS: Final = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED: Final = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


class SigningError(ValueError):
    """The document has no place for the signature, or the signature method is not ours."""


def sign_enveloped(document: bytes, algorithm: str, sign: Callable[[bytes], bytes],
                   key_name: str | None = None) -> bytes:
    """``document`` (a pain.001.001.09) with its enveloped signature; ``sign`` signs canonical SignedInfo."""
    if algorithm not in (RSA_SHA256, ECDSA_SHA256):
        raise SigningError(f"signature method {algorithm!r} is not RSA-SHA256 or ECDSA-SHA256")
    root = etree.fromstring(document, _PARSER)
    ns = etree.QName(root).namespace
    body = root.find(f"{{{ns}}}CstmrCdtTrfInitn")
    if body is None or not (ns or "").endswith("pain.001.001.09"):
        raise SigningError("an enveloped signature needs a pain.001.001.09 Document (SplmtryData/Envlp)")
    envelope = etree.SubElement(etree.SubElement(body, f"{{{ns}}}SplmtryData"), f"{{{ns}}}Envlp")
    signature = _skeleton(envelope, algorithm, key_name)
    _ds(signature, "DigestValue").text = _digest(root, signature)
    signed_info = _ds(signature, "SignedInfo")
    canonical = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    _ds(signature, "SignatureValue").text = base64.b64encode(sign(canonical)).decode()
    signed: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return signed


def _skeleton(parent: etree._Element, algorithm: str, key_name: str | None) -> etree._Element:
    signature = etree.SubElement(parent, f"{{{DS}}}Signature", nsmap={"ds": DS})
    info = etree.SubElement(signature, f"{{{DS}}}SignedInfo")
    etree.SubElement(info, f"{{{DS}}}CanonicalizationMethod", Algorithm=EXC_C14N)
    etree.SubElement(info, f"{{{DS}}}SignatureMethod", Algorithm=algorithm)
    reference = etree.SubElement(info, f"{{{DS}}}Reference", URI="")
    transforms = etree.SubElement(reference, f"{{{DS}}}Transforms")
    etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm=ENVELOPED)
    etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm=EXC_C14N)
    etree.SubElement(reference, f"{{{DS}}}DigestMethod", Algorithm=SHA256)
    etree.SubElement(reference, f"{{{DS}}}DigestValue")
    etree.SubElement(signature, f"{{{DS}}}SignatureValue")
    if key_name:
        etree.SubElement(etree.SubElement(signature, f"{{{DS}}}KeyInfo"), f"{{{DS}}}KeyName").text = key_name
    return signature


def _digest(root: etree._Element, signature: etree._Element) -> str:
    """The Reference's digest: the Document without the Signature element (taken out for the moment, as the
    enveloped-signature transform does), exclusive c14n, SHA-256."""
    parent = signature.getparent()
    assert parent is not None
    index = parent.index(signature)
    parent.remove(signature)
    try:
        canonical = etree.tostring(root, method="c14n", exclusive=True, with_comments=False)
    finally:
        parent.insert(index, signature)
    return base64.b64encode(hashlib.sha256(canonical).digest()).decode()


def _ds(signature: etree._Element, name: str) -> etree._Element:
    found = signature.find(f".//{{{DS}}}{name}")
    assert found is not None
    return found


class SignatureInvalid(ValueError):
    """The signature does not verify against the key (tampered, another key, or no signature)."""


def verify_enveloped(signed: bytes, public_key_pem: bytes) -> None:
    """Verify the enveloped signature with python-xmlsec (an implementation that is not ours)."""
    import xmlsec

    root = etree.fromstring(signed, _PARSER)
    node = xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature)
    if node is None:
        raise SignatureInvalid("no ds:Signature in the document")
    _covers_the_document(node)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(public_key_pem, xmlsec.constants.KeyDataFormatPem)
    try:
        ctx.verify(node)
    except xmlsec.Error as exc:
        raise SignatureInvalid(f"signature does not verify: {exc}") from None


def _covers_the_document(signature: etree._Element) -> None:
    """An enveloped signature counts only if it signs the whole document: one Reference, URI "" (the document
    it sits in) with the enveloped-signature transform. One that references an element by id signs that
    element alone, and would vouch for whatever is written beside it."""
    references = signature.findall(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")
    if len(references) != 1:
        raise SignatureInvalid(f"the signature has {len(references)} Reference elements; one, URI \"\", is wanted")
    uri = references[0].get("URI")
    if uri != "":
        raise SignatureInvalid(f"the signature's Reference URI is {uri!r}, not \"\" (the whole document)")
    transforms = [t.get("Algorithm") for t in references[0].iterfind(f"{{{DS}}}Transforms/{{{DS}}}Transform")]
    if ENVELOPED not in transforms:
        raise SignatureInvalid("the signature's Reference has no enveloped-signature transform")


def sign_detached(payment: bytes, file_name: str, algorithm: str, sign: Callable[[bytes], bytes],
                  key_name: str | None = None) -> bytes:
    """A detached XML-DSig document for the payment file ``file_name`` (pain.001.001.03 has no place for a
    signature inside): its Reference points at the file beside it and digests its bytes as they are."""
    if algorithm not in (RSA_SHA256, ECDSA_SHA256):
        raise SigningError(f"signature method {algorithm!r} is not RSA-SHA256 or ECDSA-SHA256")
    if "/" in file_name or not file_name:
        raise SigningError(f"{file_name!r}: the detached signature names a file beside it, not a path")
    holder = etree.Element("holder")
    signature = _skeleton(holder, algorithm, key_name)
    reference = _ds(signature, "Reference")
    reference.set("URI", file_name)
    transforms = _ds(signature, "Transforms")
    reference.remove(transforms)  # the file's bytes as they are
    _ds(signature, "DigestValue").text = base64.b64encode(hashlib.sha256(payment).digest()).decode()
    holder.remove(signature)
    canonical = etree.tostring(_ds(signature, "SignedInfo"), method="c14n", exclusive=True, with_comments=False)
    _ds(signature, "SignatureValue").text = base64.b64encode(sign(canonical)).decode()
    detached: bytes = etree.tostring(signature, xml_declaration=True, encoding="UTF-8")
    return detached


def verify_detached(signature: bytes, payment: bytes, file_name: str, public_key_pem: bytes) -> None:
    """Verify a detached signature over ``payment`` (known as ``file_name``) with python-xmlsec."""
    import xmlsec

    root = etree.fromstring(signature, _PARSER)
    reference = root.find(f".//{{{DS}}}Reference")
    if reference is None or reference.get("URI") != file_name:
        raise SignatureInvalid(f"the signature does not name {file_name!r}")
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(public_key_pem, xmlsec.constants.KeyDataFormatPem)
    # python-xmlsec 1.3.18 limits a context's Reference URIs to the same document by default (1.3.17 allowed
    # any); libxmlsec classifies a bare file name with no base as remote. What a remote URI can load is only what
    # _serving's callbacks hand out (the one file named above), so allowing that type opens nothing else.
    if hasattr(ctx, "enabled_reference_uris"):
        ctx.enabled_reference_uris = xmlsec.constants.TransformUriTypeRemote
    with _serving(file_name, payment):
        try:
            ctx.verify(root)
        except xmlsec.Error as exc:
            raise SignatureInvalid(f"signature does not verify: {exc}") from None


# What a detached Reference may load while it is verified: only the file handed in, by its name. Every other URI
# (a path on this host, a URL) finds nothing: a signature from outside can never make us read a file.
_SERVED: dict[bytes, bytes] = {}
_SERVED_LOCK = threading.Lock()
_CALLBACKS: list[bool] = []


@contextlib.contextmanager
def _serving(file_name: str, payment: bytes) -> Iterator[None]:
    import xmlsec

    with _SERVED_LOCK:
        if not _CALLBACKS:
            xmlsec.cleanup_callbacks()
            xmlsec.register_callbacks(lambda name: bytes(name) in _SERVED,
                                      lambda name: io.BytesIO(_SERVED[bytes(name)]),
                                      lambda stream, buffer: stream.readinto(buffer), lambda stream: stream.close())
            _CALLBACKS.append(True)
        _SERVED.clear()
        _SERVED[file_name.encode()] = payment
        try:
            yield
        finally:
            _SERVED.clear()
