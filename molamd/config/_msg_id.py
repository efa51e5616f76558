"""The rule for a file channel's ``msg_id_prefix``, from how its ids are made (connectors.iso20022):

- MsgId is ``PREFIX-FILEID`` and each payment block's PmtInfId is ``MSGID-N`` (N up to the file's block count,
  at most ``max_transactions``): both are ISO 20022 Max35Text, and the bank's XSD and the builder allow only the
  SEPA identifier characters, not starting with '/' nor holding '//';
- FILEID is the database's bigint file id: up to 19 digits;
- the MsgId is also the file's name on the bank's SFTP server (``MSGID.xml``) and its idempotency key over REST.

So the prefix is letters, digits and '-', starting with a letter or digit (no '/', ':', space or other
character a file name or the bank's id rules would take otherwise), and short enough that the longest PmtInfId
still fits in 35 characters.
"""

from __future__ import annotations

import re
from typing import Final

MAX35: Final = 35
FILE_ID_DIGITS: Final = 19  # the largest bigint, 9223372036854775807
_PREFIX: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def longest_prefix(max_transactions: int) -> int:
    """The most characters a prefix may have: PREFIX-FILEID-N within 35 for the largest FILEID and N."""
    return MAX35 - len("-") - FILE_ID_DIGITS - len("-") - len(str(max(max_transactions, 1)))


def prefix_problem(prefix: str, max_transactions: int) -> str | None:
    """Why ``prefix`` cannot start this channel's MsgIds, or None."""
    most = longest_prefix(max_transactions)
    if not _PREFIX.fullmatch(prefix):
        return (f"{prefix[:40]!r}: use letters A-Z a-z, digits and '-', starting with a letter or digit (it"
                " starts every MsgId, the bank's file name and idempotency key)")
    if len(prefix) > most:
        return (f"{prefix[:40]!r} has {len(prefix)} characters, at most {most}: MsgId PREFIX-FILEID and PmtInfId"
                f" MSGID-N are at most 35 characters, with FILEID up to {FILE_ID_DIGITS} digits and N up to"
                f" max_transactions ({max_transactions})")
    return None
