"""Stream records out of CSV, JSON (a list of objects) and JSON-lines text without reading it whole."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

from functions import _text_encoding as text_encoding
from functions._cell_types import MAX_INTEGER_DIGITS
from functions._column_stats import MAX_COLUMNS
from runner import PermanentError

HEAD_BYTES = 64 * 1024  # what encoding, format and delimiter detection look at
CHUNK_CHARS = 64 * 1024
MAX_RECORD_CHARS = 1024 * 1024  # one JSON object, JSON line or CSV line may not exceed this
# How deep a value inside one record may nest: deeper JSON costs recursion (Python's limit is
# 1,000 frames) for values the statistics only count as text.
MAX_NESTING = 64
DELIMITERS = ",;\t|"
# csv.Sniffer is slow on long samples without a delimiter (~1 s for 64 KB): a few lines are enough.
SNIFF_LINES = 50
SNIFF_CHARS = 8192
_whitespace = re.compile(r"[ \t\r\n]*")
# Python writes no integer of more than 4,300 digits as text (sys.get_int_max_str_digits): a value
# holding one could not be profiled. 13,000 bits is about 3,900 digits.
MAX_INTEGER_BITS = 13_000

Row = list[tuple[str, Any]]


def detect_encoding(head: bytes) -> str:
    """The text encoding of a file from its first bytes; PermanentError when it is not text."""
    encoding = text_encoding.detect_encoding(head)
    if encoding is None:
        raise PermanentError("The file is not text in any encoding that could be detected.")
    return encoding


def detect_format(head_text: str) -> str:
    """'json' for a top-level array, 'jsonl' for objects one per line, else 'csv'."""
    start = head_text.lstrip()[:1]
    return {"[": "json", "{": "jsonl"}.get(start, "csv")


def sniff_delimiter(head_text: str) -> str:
    """The delimiter among , ; TAB | that splits the sample's lines most consistently (',' if unsure)."""
    lines = head_text[:SNIFF_CHARS].splitlines(keepends=True)[:SNIFF_LINES]
    if len(lines) > 1 and not lines[-1].endswith(("\n", "\r")):
        lines.pop()  # cut short by the sample's end
    sample = "".join(lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def csv_header(reader: Iterator[list[str]]) -> list[str]:
    """The column names from the first row: blanks named column_N, duplicates refused."""
    try:
        header = next(reader)
    except StopIteration:
        raise PermanentError("The CSV file is empty: it has no header row.") from None
    except csv.Error as exc:
        raise PermanentError(f"The CSV header cannot be parsed: {exc}.") from None
    if len(header) > MAX_COLUMNS:  # before looking at the names: the work grows with their number
        raise PermanentError(f"The data has more than {MAX_COLUMNS} columns: the CSV header has {len(header)}.")
    names = [name.strip() or f"column_{index}" for index, name in enumerate(header, 1)]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise PermanentError(f"The CSV header repeats column names: {', '.join(duplicates)}.")
    return names


def bounded_lines(text: TextIO) -> Iterator[str]:
    """The lines of `text` for csv.reader, each read at most MAX_RECORD_CHARS at a time.

    A file without line breaks would otherwise be read and parsed as one row, however large.
    """
    number = 0
    while line := text.readline(MAX_RECORD_CHARS + 1):
        number += 1
        if len(line) > MAX_RECORD_CHARS:
            raise PermanentError(f"Line {number} is longer than {MAX_RECORD_CHARS} characters.")
        yield line


def csv_rows(reader: Iterator[list[str]], header: list[str]) -> Iterator[Row]:
    """Rows as (name, value) pairs; short rows leave the rest missing, long rows are an error."""
    width = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise PermanentError(f"The CSV file is malformed near line {_line(reader)}: {exc}.") from None
        if not row:  # a blank line
            continue
        if len(row) > width:
            raise PermanentError(f"CSV line {_line(reader)} has {len(row)} fields but the header has {width}.")
        yield list(zip(header, row, strict=False))


def _line(reader: Iterator[list[str]]) -> int:
    return int(getattr(reader, "line_num", 0))


def jsonl_rows(text: TextIO) -> Iterator[Row]:
    """One JSON object per non-blank line."""
    number = 0
    while line := text.readline(MAX_RECORD_CHARS + 1):
        number += 1
        if len(line) > MAX_RECORD_CHARS:
            raise PermanentError(f"JSON line {number} is longer than {MAX_RECORD_CHARS} characters.")
        if not line.strip():
            continue
        try:
            record = JSON_DECODER.decode(line)
        except json.JSONDecodeError as exc:
            raise PermanentError(
                f"Line {number} is not valid JSON ({exc.msg}); expected a list of objects or one object per line."
            ) from None
        except RecursionError:
            raise PermanentError(f"Line {number} nests deeper than {MAX_NESTING} levels.") from None
        yield _fields(record, f"line {number}")


def _json_integer(text: str) -> int | str:
    # int() refuses more than 4,300 digits, and an integer that long is no number to a float: text, then.
    return int(text) if len(text.lstrip("-")) <= MAX_INTEGER_DIGITS else text


# NaN and Infinity stay strings: they would break the JSON result.
JSON_DECODER = json.JSONDecoder(parse_constant=str, parse_int=_json_integer)


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be profiled (a value nested deeper than MAX_NESTING levels, or an integer
    too long to write as text), or None."""
    stack: list[tuple[Any, int]] = [(value, 1) for value in record.values()]  # iterative: no recursion here
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_NESTING:
                return f"nests deeper than {MAX_NESTING} levels"
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INTEGER_BITS:
            return f"holds an integer of more than {MAX_INTEGER_BITS} bits"
    return None


def _fields(record: Any, where: str) -> Row:
    if not isinstance(record, dict):
        raise PermanentError(f"JSON input must hold objects, but {where} is {type(record).__name__}.")
    problem = record_problem(record)
    if problem is not None:
        raise PermanentError(f"JSON {where} {problem}.")
    return list(record.items())


class JsonArrayReader:
    """Objects of a top-level JSON array, decoded one at a time from a chunked text stream."""

    def __init__(self, text: TextIO) -> None:
        self._text = text
        self._buffer = ""
        self._position = 0
        self._eof = False

    def rows(self) -> Iterator[Row]:
        """Each element of the array as (name, value) pairs; PermanentError on any other shape."""
        first = self._peek()
        if not first:
            raise PermanentError("The JSON input is empty; expected a list of objects.")
        if first != "[":
            raise PermanentError(f"JSON input must be a list of objects, but it starts with {first!r}.")
        self._position += 1
        if self._peek() == "]":
            self._position += 1
        else:
            index = 0
            while True:
                yield _fields(self._value(index), f"item {index}")
                index += 1
                separator = self._peek()
                self._position += 1
                if separator == "]":
                    break
                if separator != ",":
                    raise PermanentError(f"JSON array is malformed after item {index - 1}: expected ',' or ']'.")
        if self._peek():
            raise PermanentError("JSON input has data after the end of its top-level list.")

    def _more(self) -> bool:
        chunk = self._text.read(CHUNK_CHARS)
        if not chunk:
            self._eof = True
            return False
        # Drop what was consumed so the buffer holds at most one record plus one chunk.
        self._buffer = self._buffer[self._position :] + chunk
        self._position = 0
        return True

    def _peek(self) -> str:
        """The next non-whitespace character ('' at the end), without consuming it."""
        while True:
            match = _whitespace.match(self._buffer, self._position)
            self._position = match.end() if match else self._position
            if self._position < len(self._buffer):
                return self._buffer[self._position]
            if not self._more():
                return ""

    def _value(self, index: int) -> Any:
        self._peek()
        while True:
            try:
                value, end = JSON_DECODER.raw_decode(self._buffer, self._position)
            except RecursionError:
                raise PermanentError(f"JSON item {index} nests deeper than {MAX_NESTING} levels.") from None
            except json.JSONDecodeError as exc:
                if len(self._buffer) - self._position > MAX_RECORD_CHARS:
                    raise PermanentError(f"JSON item {index} is larger than {MAX_RECORD_CHARS} characters.") from None
                if not self._eof and self._more():
                    continue  # the item continues in the next chunk
                raise PermanentError(f"JSON item {index} is not valid JSON: {exc.msg}.") from None
            if end == len(self._buffer) and not self._eof and self._more():
                continue  # a number at the end of the buffer may go on in the next chunk
            self._position = end
            return value
