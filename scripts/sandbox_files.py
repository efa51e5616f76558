"""The sandbox bank's file desk: pain.001 files from its SFTP inbox executed into the bank's ledger, answered with
pain.002 reports in its outbox.

Each file is checked as a bank checks it: valid against the official XSD, its signature verified by the
``xmlsec1`` command line against the certificate the bank was given (enveloped, or the detached ``NAME.sig``
beside it), and its MsgId never seen before (a duplicate is refused with DU01 and nothing in it runs). Each
transaction is then executed once into the ledger, as the bank's REST API executes a payment: deduplicated by
file, not by transaction, so a payment put in two files is paid twice, and the demo's check can fail. A group
ACTC report goes out at once; after ``report_delay`` each transaction is settled (ACSC) or rejected (RJCT AC04),
reported in a second file. Reports may be signed with the bank's own key (python-xmlsec, enveloped).

Faults (``faults`` dict, changed at run time): ``report_loss_rate`` (the final report never comes),
``late_report_rate`` (it comes ten report delays late, after a statement may have settled the payment),
``duplicate_report_rate`` (it comes twice, under two MsgIds).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import random
import shutil
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import trio
from lxml import etree

SCHEMAS = Path(__file__).resolve().parent.parent / "connectors" / "iso20022" / "schemas"
PAIN002 = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.10"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_SCHEMA_CACHE: dict[str, etree.XMLSchema] = {}


def _schema(version: str) -> etree.XMLSchema:
    if version not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[version] = etree.XMLSchema(etree.parse(str(SCHEMAS / f"{version}.xsd")))
    return _SCHEMA_CACHE[version]


class FileDesk:
    def __init__(self, bank: Any, root: Path, *, certificate: Path | None, report_delay: float = 1.0,
                 report_key: Path | None = None, rng: random.Random | None = None) -> None:
        self.bank = bank
        self.root = root
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.taken, self.processed = root / "taken", root / "processed"
        for d in (self.inbox, self.outbox, self.outbox / "archive", self.outbox / "error", self.taken, self.processed):
            d.mkdir(parents=True, exist_ok=True)
        self.certificate = certificate
        self.report_delay = report_delay
        self.report_key = report_key
        self.rng = rng or random.Random()
        self.faults: dict[str, float] = {"report_loss_rate": 0.0, "late_report_rate": 0.0,
                                         "duplicate_report_rate": 0.0}
        self._late: list[tuple[float, str, list[dict[str, Any]]]] = []
        self.seen: dict[str, str] = {}  # MsgId -> sha256 of the file first received under it
        self.ids = itertools.count(1)
        self.stats: dict[str, int] = {"files": 0, "duplicates": 0, "invalid": 0, "bad_signature": 0,
                                      "transactions": 0, "reports": 0}
        self.verified: list[str] = []  # MsgIds whose signature xmlsec1 verified
        self._due: list[tuple[float, str, list[dict[str, Any]]]] = []
        self.uploads: dict[str, str] = {}  # REST: Idempotency-Key -> sha256 of the bytes first posted under it

    # -- the inbox ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await trio.sleep(0.2)
            for folder in (self.inbox, self.taken):
                for path in sorted(folder.iterdir()):
                    if path.name.startswith(".") or path.name.endswith(".sig") or not path.is_file():
                        continue
                    await trio.to_thread.run_sync(self.take, path)
            now = time.monotonic()
            due, self._due = [d for d in self._due if d[0] <= now], [d for d in self._due if d[0] > now]
            for _, msg_id, payments in due:
                self.finish(msg_id, payments)
            late, self._late = [d for d in self._late if d[0] <= now], [d for d in self._late if d[0] > now]
            for _, msg_id, payments in late:
                self.report(msg_id, None, None, None, payments)

    def take(self, path: Path) -> None:
        """One pain.001 file out of the inbox: checked, executed, acknowledged."""
        data = path.read_bytes()
        signature_path = path.with_name(path.name + ".sig")
        signature = signature_path.read_bytes() if signature_path.exists() else None
        target = self.processed / f"{int(time.time() * 1000)}-{path.name}"
        shutil.move(str(path), target)
        if signature is not None:
            shutil.move(str(signature_path), target.with_name(target.name + ".sig"))
        self.stats["files"] += 1
        try:
            root = etree.fromstring(data, _PARSER)
        except etree.XMLSyntaxError as exc:
            self.stats["invalid"] += 1
            self.report(None, "RJCT", "FF01", f"not XML: {exc}"[:105])
            return
        ns = etree.QName(root).namespace or ""
        version = ns.rsplit(":", 1)[-1]
        msg_id = root.findtext(f"{{{ns}}}CstmrCdtTrfInitn/{{{ns}}}GrpHdr/{{{ns}}}MsgId") or ""
        if version not in ("pain.001.001.03", "pain.001.001.09") or not _schema(version).validate(root):
            self.stats["invalid"] += 1
            error = str(_schema(version).error_log.last_error) if version.startswith("pain.001") else version
            self.report(msg_id or None, "RJCT", "FF01", error[:105])
            return
        if not self.verify(data, signature, path.name):
            self.stats["bad_signature"] += 1
            self.report(msg_id, "RJCT", "DS0A", "signature missing or not valid for the registered certificate")
            return
        self.verified.append(msg_id)
        if msg_id in self.seen:
            self.stats["duplicates"] += 1
            self.report(msg_id, "RJCT", "DU01", "duplicate message identification")
            return
        self.seen[msg_id] = data.hex()[:16]
        payments = self.execute(root, ns, msg_id)
        self.report(msg_id, "ACTC", None, None)
        self._due.append((time.monotonic() + self.report_delay, msg_id, payments))

    def verify(self, data: bytes, signature: bytes | None, name: str) -> bool:
        """The signature checked by the xmlsec1 command line against the registered certificate."""
        if self.certificate is None:
            return True
        with tempfile.TemporaryDirectory(prefix="sandbox-verify-") as tmp:
            (Path(tmp) / name).write_bytes(data)
            checked = name
            if signature is not None:
                (Path(tmp) / f"{name}.sig").write_bytes(signature)
                checked = f"{name}.sig"
            elif b"http://www.w3.org/2000/09/xmldsig#" not in data:
                return False
            result = subprocess.run(
                ["xmlsec1", "--verify", "--pubkey-cert-pem", str(self.certificate), checked],
                cwd=tmp, capture_output=True, text=True, check=False)
        return result.returncode == 0

    def execute(self, root: Any, ns: str, msg_id: str) -> list[dict[str, Any]]:
        q = f"{{{ns}}}"
        payments = []
        for block in root.iter(f"{q}PmtInf"):
            block_id = block.findtext(f"{q}PmtInfId")
            debtor = block.findtext(f"{q}DbtrAcct/{q}Id/{q}IBAN") or block.findtext(f"{q}DbtrAcct/{q}Id/{q}Othr/{q}Id")
            for tx in block.iter(f"{q}CdtTrfTxInf"):
                amount = tx.find(f"{q}Amt/{q}InstdAmt")
                payment = {
                    "id": f"file_{next(self.ids):08d}", "channel": "file", "msg_id": msg_id, "block": block_id,
                    "idempotency_key": tx.findtext(f"{q}PmtId/{q}EndToEndId"),
                    "reference": tx.findtext(f"{q}PmtId/{q}InstrId"),
                    "amount": str(Decimal(amount.text)), "currency": amount.get("Ccy"),
                    "creditor_account": tx.findtext(f"{q}CdtrAcct/{q}Id/{q}IBAN")
                    or tx.findtext(f"{q}CdtrAcct/{q}Id/{q}Othr/{q}Id"),
                    "debtor_account": debtor, "status": "accepted", "reason_code": None, "executed_at": time.time(),
                }
                self.bank.ledger.append(payment)
                self.bank.by_id[payment["id"]] = payment
                payments.append(payment)
                self.stats["transactions"] += 1
        return payments

    def finish(self, msg_id: str, payments: list[dict[str, Any]]) -> None:
        """Each transaction settled or rejected, and the final report (unless the fault loses it)."""
        for p in payments:
            if self.rng.random() < self.bank.reject_rate:
                p["status"], p["reason_code"] = "rejected", "AC04"
            else:
                p["status"] = "settled"
        if self.rng.random() < self.faults["report_loss_rate"]:
            return
        if self.rng.random() < self.faults["late_report_rate"]:
            self._late.append((time.monotonic() + 10 * self.report_delay, msg_id, payments))
            return
        copies = 2 if self.rng.random() < self.faults["duplicate_report_rate"] else 1
        for _ in range(copies):
            self.report(msg_id, None, None, None, payments)

    # -- pain.002 -----------------------------------------------------------------------------------

    def report(self, msg_id: str | None, group: str | None, reason: str | None, info: str | None,
               payments: list[dict[str, Any]] | None = None) -> Path:
        number = next(self.ids)
        e = etree.Element(f"{{{PAIN002}}}Document", nsmap={None: PAIN002})  # type: ignore[dict-item]
        body = etree.SubElement(e, f"{{{PAIN002}}}CstmrPmtStsRpt")

        def sub(parent: Any, tag: str, text: str | None = None) -> Any:
            node = etree.SubElement(parent, f"{{{PAIN002}}}{tag}")
            if text is not None:
                node.text = text
            return node

        header = sub(body, "GrpHdr")
        sub(header, "MsgId", f"SBX-{number}")
        sub(header, "CreDtTm", dt.datetime.now().replace(microsecond=0).isoformat())
        original = sub(body, "OrgnlGrpInfAndSts")
        sub(original, "OrgnlMsgId", msg_id or "NOTPROVIDED")
        sub(original, "OrgnlMsgNmId", "pain.001")
        if group:
            sub(original, "GrpSts", group)
        if reason:
            why = sub(original, "StsRsnInf")
            sub(sub(why, "Rsn"), "Cd", reason)
            if info:
                sub(why, "AddtlInf", info)
        blocks: dict[str, list[dict[str, Any]]] = {}
        for p in payments or []:
            blocks.setdefault(p["block"], []).append(p)
        for block_id, txs in blocks.items():
            info_node = sub(body, "OrgnlPmtInfAndSts")
            sub(info_node, "OrgnlPmtInfId", block_id)
            for p in txs:
                tx = sub(info_node, "TxInfAndSts")
                sub(tx, "OrgnlInstrId", p["reference"])
                sub(tx, "OrgnlEndToEndId", p["idempotency_key"])
                sub(tx, "TxSts", "ACSC" if p["status"] == "settled" else "RJCT")
                if p["status"] == "rejected":
                    sub(sub(sub(tx, "StsRsnInf"), "Rsn"), "Cd", p["reason_code"])
        if self.report_key is not None:
            self._sign(e, body)
        data = etree.tostring(e, xml_declaration=True, encoding="UTF-8")
        path = self.outbox / f"pain002-{number:06d}.xml"
        partial = path.with_name("." + path.name)
        partial.write_bytes(data)
        partial.rename(path)  # never half a report in the outbox
        self.stats["reports"] += 1
        return path

    def _sign(self, document: Any, body: Any) -> None:
        import xmlsec

        envelope = etree.SubElement(etree.SubElement(body, f"{{{PAIN002}}}SplmtryData"), f"{{{PAIN002}}}Envlp")
        signature = xmlsec.template.create(document, xmlsec.constants.TransformExclC14N,
                                           xmlsec.constants.TransformRsaSha256, ns="ds")
        envelope.append(signature)
        ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="")
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_file(str(self.report_key), xmlsec.constants.KeyDataFormatPem)
        ctx.sign(signature)

    # -- the same over HTTP (a bank's file API) ---------------------------------------------------------

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes
             ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /files (Idempotency-Key: the MsgId), GET /files/reports, POST /files/reports/NAME/ack; answers
        (status, JSON body, headers)."""

        def Reply(status: int, answer: dict[str, Any], extra: dict[str, str] | None = None  # noqa: N802
                  ) -> tuple[int, dict[str, Any], dict[str, str]]:
            return status, answer, extra or {}

        if path == "/files" and method == "POST":
            key, name = headers.get("idempotency-key", ""), headers.get("x-file-name", "")
            if not key or not name or "/" in name or name.startswith("."):
                return Reply(400, {"error": "validation", "message": "Idempotency-Key and X-File-Name are required"})
            digest = hashlib.sha256(body).hexdigest()
            known = self.uploads.get(key)
            if known is not None:
                if known != digest:
                    return Reply(409, {"error": "idempotency_conflict", "message": "other bytes under this key"})
                return Reply(202, {"status": "received", "file": name}, {"Idempotent-Replayed": "true"})
            self.uploads[key] = digest
            partial = self.inbox / f".{name}.part"
            partial.write_bytes(body)
            partial.rename(self.inbox / name)
            return Reply(202, {"status": "received", "file": name})
        if path == "/files/reports" and method == "GET":
            names = sorted(p.name for p in self.outbox.iterdir() if p.is_file() and not p.name.startswith("."))[:20]
            return Reply(200, {"reports": [{"name": n, "content": base64.b64encode(
                (self.outbox / n).read_bytes()).decode()} for n in names]})
        if path.startswith("/files/reports/") and path.endswith("/ack") and method == "POST":
            name = unquote(path.removeprefix("/files/reports/").removesuffix("/ack"))
            report = self.outbox / name
            if "/" in name or not report.is_file():
                return Reply(404, {"error": "not_found"})
            report.rename(self.outbox / "archive" / name)
            return Reply(200, {"status": "acknowledged"})
        return Reply(404, {"error": "not_found", "message": f"no route {method} {path}"})

    def summary(self) -> dict[str, Any]:
        return {**self.stats, "verified": len(self.verified), "verified_ids": self.verified, "faults": self.faults}
