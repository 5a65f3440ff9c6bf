"""Profile tabular data (CSV, JSON, JSON lines or inline records): per-column statistics and group aggregates."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import AfterValidator, Field

from functions import _record_readers as readers
from functions._column_stats import TableStats
from runner import PermanentError, UploadId, function, progress, upload_path

MAX_INLINE_RECORDS = 10_000
# Progress is reported at most once per this many percent of the file, and the file position
# is only looked at every PROGRESS_CHECK_ROWS rows: cheap, and never more than ~25 calls a job.
PROGRESS_STEP = 5
PROGRESS_CHECK_ROWS = 2048
METHODS = {
    "std": "sample standard deviation (n - 1)",
    "quartiles": "linear interpolation between closest ranks; 'reservoir' columns use a uniform sample",
    "unique": "exact when unique_exact is true, else a K-minimum-values estimate (about 3% error)",
    "missing": "absent, null, or empty / NA / N/A / null / none / NaN text",
}


def _profilable(records: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    # In the schema, not the body: a record the statistics cannot take is a 422 at invoke time.
    for index, record in enumerate(records or ()):
        problem = readers.record_problem(record)
        if problem is not None:
            raise ValueError(f"record {index} {problem}")
    return records


@function(queue="ai_processing", timeout=600, retries=1, backoff=[5], exactly_one_of=[("upload_id", "records")])
def data_processing(
    upload_id: UploadId | None = None,
    records: Annotated[
        list[dict[str, Any]] | None, Field(max_length=MAX_INLINE_RECORDS), AfterValidator(_profilable)
    ] = None,
    group_by: Annotated[str | None, Field(min_length=1, max_length=200)] = None,
    format: Literal["auto", "csv", "json", "jsonl"] = "auto",
) -> dict[str, Any]:
    """Compute per-column statistics (types, missing, unique, numeric summaries) and optional group aggregates."""
    table = TableStats(group_by)
    if records is not None:
        source: dict[str, Any] = {"source": "records", "format": "records", "encoding": None}
        _consume(table, (list(record.items()) for record in records), lambda: None)
    else:
        assert upload_id is not None  # exactly_one_of: the input model gives one or the other
        source = _profile_file(upload_path(upload_id), format, table)
    if group_by is not None and group_by not in table.columns:
        raise PermanentError(f"Cannot group by {group_by!r}: the data has no such column "
                             f"(columns: {', '.join(list(table.columns)[:50]) or 'none'}).")
    result = {**source, **table.summary(), "methods": METHODS}
    progress(100, f"profiled {table.rows} rows")
    return result


def _profile_file(path: Path, requested: str, table: TableStats) -> dict[str, Any]:
    """Stream the file through `table`; return what was detected about it."""
    size = path.stat().st_size
    with path.open("rb") as binary:
        head = binary.read(readers.HEAD_BYTES)
        encoding = readers.detect_encoding(head)
        binary.seek(0)
        head_text = head.decode(encoding, errors="ignore")
        kind = readers.detect_format(head_text) if requested == "auto" else requested
        # newline="" lets the csv module see quoted line breaks; the JSON readers do not mind it.
        text = io.TextIOWrapper(binary, encoding=encoding, errors="strict", newline="")
        meter = _Meter(binary, size)
        detected: dict[str, Any] = {"source": "upload", "format": kind, "encoding": encoding, "bytes": size}
        try:
            if kind == "csv":
                delimiter = readers.sniff_delimiter(head_text)
                detected["delimiter"] = delimiter
                reader = csv.reader(readers.bounded_lines(text), delimiter=delimiter, strict=True)
                header = readers.csv_header(reader)
                if table.group_by is not None and table.group_by not in header:
                    raise PermanentError(f"Cannot group by {table.group_by!r}: the CSV header has no such column "
                                         f"(columns: {', '.join(header[:50])}).")
                for name in header:  # columns exist, in header order, even when every value is missing
                    table.add_column(name)
                rows: Iterable[readers.Row] = readers.csv_rows(reader, header)
            elif kind == "json":
                rows = readers.JsonArrayReader(text).rows()
            else:
                rows = readers.jsonl_rows(text)
            _consume(table, rows, meter.check)
        except UnicodeDecodeError as exc:
            where = binary.tell()
            raise PermanentError(f"The file is not valid {encoding} text near byte {where}: {exc.reason}.") from None
    return detected


def _consume(table: TableStats, rows: Iterable[readers.Row], check: Callable[[], None]) -> None:
    for count, row in enumerate(rows, 1):
        table.add(row)
        if count % PROGRESS_CHECK_ROWS == 0:
            check()


class _Meter:
    """Reports bytes read / file size as progress, once per PROGRESS_STEP percent."""

    def __init__(self, binary: IO[bytes], size: int) -> None:
        self._binary = binary
        self._size = max(1, size)
        self._reported = 0

    def check(self) -> None:
        """Report progress if the reader has moved on by another step."""
        done = self._binary.tell()
        percent = min(99, 100 * done // self._size)
        if percent >= self._reported + PROGRESS_STEP:
            self._reported = percent
            progress(percent, f"read {done} of {self._size} bytes")

