"""Text in the character set a bank declares: transliterated where a reading exists, refused where none does.

The default is the SEPA basic Latin set of EPC217-08 (``a-z A-Z 0-9 / - ? : ( ) . , ' +`` and space); a bank
profile may allow more. Letters and digits of any script are transliterated with ``anyascii`` (Aïssatou →
Aissatou, Дмитрий → Dmitriy); ``&`` becomes ``+`` (EPC217-08 §6.2). A symbol, an emoji or a control character
has no reading a bank would accept: it is an error naming the field, never silently dropped.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from anyascii import anyascii

SEPA_LATIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-?:().,'+ ")
_REPLACEMENTS: Final = {"&": "+", "\u00a0": " ", "\t": " ", "_": "-", '"': "'", "\u2019": "'", "\u2018": "'"}
_NO_READING: Final = ("S", "C")  # Unicode categories of symbols and of control, format and unassigned points


class CharsetError(ValueError):
    """A text that cannot be written in the declared character set; the message names the character."""


def to_charset(text: str, allowed: frozenset[str] = SEPA_LATIN) -> str:
    """``text`` in ``allowed``, transliterated; raises CharsetError for a character with no reading in it."""
    out = []
    for char in unicodedata.normalize("NFC", text):
        if char in allowed:
            out.append(char)
            continue
        replaced = _REPLACEMENTS.get(char)
        if replaced is None:
            if unicodedata.category(char)[0] in _NO_READING:
                raise CharsetError(f"{_name(char)} has no reading in the bank's character set")
            replaced = anyascii(char)
        if not replaced or any(c not in allowed for c in replaced):
            raise CharsetError(f"{_name(char)} has no reading in the bank's character set")
        out.append(replaced)
    return " ".join("".join(out).split())  # transliteration may leave doubled or edge spaces


def _name(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"
