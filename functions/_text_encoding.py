"""Guess the text encoding of a file from its first bytes: a BOM, else UTF-8, else charset detection."""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Control characters other than backspace, tab, line feed, form feed, carriage return and escape
# do not occur in text: a file holding them is binary.
BINARY_CONTROL_BYTES = bytes(sorted(set(range(32)) - {8, 9, 10, 12, 13, 27}))
# Legacy encodings still met in files. charset-normalizer tries ~90 code pages and, on short
# samples, often prefers an exotic one (mac_latin2 for French latin-1 text): these are enough.
LEGACY_ENCODINGS = (
    "cp1252", "latin_1", "iso8859_15", "cp1250", "iso8859_2", "cp1251", "koi8_r", "iso8859_5", "cp1253",
    "cp1254", "cp1255", "cp1256", "cp1257", "cp1258", "cp874", "shift_jis", "cp932", "euc_jp", "iso2022_jp",
    "gb18030", "big5", "euc_kr",
)
DETECTION_THRESHOLD = 0.5  # charset-normalizer's "chaos" ceiling; control bytes already ruled binary out
# Candidates this close in chaos decode the sample equally well.
CHAOS_TIE = 0.02
# Among equally good candidates, windows-1252 is the WHATWG default for unlabelled Western text.
PREFERRED_LEGACY = "cp1252"


def detect_encoding(head: bytes) -> str | None:
    """The encoding of a sample (a Python codec name), or None when it does not look like text."""
    for bom, name in BOMS:  # UTF-32-LE's BOM starts with UTF-16-LE's: longest first
        if head.startswith(bom):
            return name
    if len(head.translate(None, BINARY_CONTROL_BYTES)) != len(head):
        return None
    try:
        # Incremental, so a multi-byte character cut at the end of the sample is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    matches = from_bytes(head, cp_isolation=list(LEGACY_ENCODINGS), threshold=DETECTION_THRESHOLD)
    if not matches:
        return None
    lowest = min(match.chaos for match in matches)
    tied = [match for match in matches if match.chaos <= lowest + CHAOS_TIE]
    if any(PREFERRED_LEGACY in match.could_be_from_charset for match in tied):
        return PREFERRED_LEGACY
    best = matches.best()
    return None if best is None else str(best.encoding)
