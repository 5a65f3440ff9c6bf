"""What one table cell is: missing, or an integer, float, boolean, ISO datetime or string."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

INTEGER, FLOAT, BOOLEAN, DATETIME, STRING = "integer", "float", "boolean", "datetime", "string"
MISSING_TOKENS = frozenset({"", "na", "n/a", "null", "none", "nan"})
MAX_INTEGER_DIGITS = 300  # longer integers would overflow a float
_integer = re.compile(rf"[+-]?[0-9]{{1,{MAX_INTEGER_DIGITS}}}").fullmatch
# Each digit can match in one place only: "[0-9]+\.?[0-9]*" could split a run of digits n ways
# and, on a long digit run that does not match, backtracked through all of them (8,000 digits: 1 s).
_float = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
_iso_date = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9:.,+\-Z]{2,})?").fullmatch

INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS

Number = int | float


def classify(value: Any) -> tuple[str, Number | None, str] | None:
    """(kind, numeric value or None, text key) of one cell; None when the cell is missing."""
    if value is None:
        return None
    if isinstance(value, str):
        return _classify_text(value)
    if isinstance(value, bool):
        return BOOLEAN, None, "true" if value else "false"
    if isinstance(value, int):
        # Past 10**300 it is no float; hex, because str() refuses integers of more than 4,300 digits.
        return (INTEGER, value, str(value)) if abs(value) < INTEGER_LIMIT else (STRING, None, hex(value))
    if isinstance(value, float):
        return (FLOAT, value, repr(value)) if math.isfinite(value) else None
    return STRING, None, json.dumps(value, sort_keys=True, default=str)


def _classify_text(raw: str) -> tuple[str, Number | None, str] | None:
    text = raw.strip()
    if text.lower() in MISSING_TOKENS:
        return None
    if _integer(text):
        return INTEGER, int(text), text
    if _float(text):
        number = float(text)
        return (FLOAT, number, text) if math.isfinite(number) else (STRING, None, text)
    if text.lower() in ("true", "false"):
        return BOOLEAN, None, text.lower()
    if _iso_date(text):
        try:
            datetime.fromisoformat(text)
            return DATETIME, None, text
        except ValueError:
            pass
    return STRING, None, text
