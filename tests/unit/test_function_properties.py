"""Property tests, one per shipped function: any input its schema accepts ends in a result or a PermanentError.

Each test draws inputs shaped like the function's signature (extreme numbers, odd unicode with
lone surrogates and control characters, empty strings, deep nesting within the schema's limits,
files of random or crafted bytes), keeps those the input model accepts, and runs the function
in-process as the worker would (`FunctionSpec.call`, a worker environment with uploads,
artifacts and a store under tmp_path, a job context for progress and artifacts). Any other
exception is what a worker would retry until the retries are spent: a bug. A result must be
JSON, as the worker requires.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from runner import PermanentError
from runner.authoring import context
from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.errors import InvalidInput
from runner.store.files import ArtifactStore, UploadStore
from runner.store.models import InvocationRecord
from runner.store.sql_store import Store
from runner.worker.environment import WorkerEnvironment, install_environment
from tests.history import insert_rows

FUNCTIONS = Registry.discover("functions")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Bounded so the whole file runs in well under a minute; a hung example fails instead of stalling.
FAST = settings(max_examples=60, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=15)  # functions that draw a chart or decode images per example

# Text as hostile JSON can carry it: any code point, lone surrogates and control characters included.
ODD_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
NAMES = st.text(max_size=12) | st.sampled_from(["", "a", "group", "x y", "\u202e", "\x00", "\ud800", "é" * 3])
EXTREME_INTEGERS = st.integers() | st.sampled_from([0, -1, 2**63, -(2**63), 10**300, 10**301, -(10**4000)])
EXTREME_FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [5e-324, -5e-324, 1.7976931348623157e308, -0.0, 1e-300])
SCALARS = st.none() | st.booleans() | EXTREME_INTEGERS | EXTREME_FLOATS | ODD_TEXT | st.sampled_from(
    ["", "NaN", "1e999", "-", "2024-02-30", "2024-01-01T00:00:00+14:00", "9" * 400, "1" * 5000 + "x"])


def deep(value: Any, levels: int) -> Any:
    """`value` wrapped in `levels` lists."""
    for _ in range(levels):
        value = [value]
    return value


JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=20,
) | st.builds(deep, SCALARS, st.integers(0, 63))


@dataclass
class FakeJob:
    """The job context a worker opens around a function: progress and artifacts, checked and kept."""

    artifacts: ArtifactStore
    attempt: int = 1
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    progress: list[int] = field(default_factory=list)
    parents: dict[str, Any] = field(default_factory=dict)

    def parent_results(self) -> dict[str, Any]:
        return self.parents

    def report_progress(self, percent: int, message: str) -> None:
        assert 0 <= percent <= 100 and isinstance(message, str)
        self.progress.append(percent)

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        return self.artifacts.write(self.job_id, name, content, media_type)


@dataclass
class Worker:
    """A worker environment under tmp_path: stored uploads, artifacts and a store with some history."""

    uploads: UploadStore
    artifacts: ArtifactStore

    def upload(self, data: bytes, filename: str = "upload") -> str:
        """Store `data` as an upload; its id."""
        return self.uploads.save(io.BytesIO(data), filename, MAX_UPLOAD_BYTES).id

    def run(self, name: str, payload: dict[str, Any], attempt: int = 1, parents: dict[str, Any] | None = None) -> Any:
        """Run `name` on `payload` as a worker does; inputs the schema refuses are not this test's business."""
        spec: FunctionSpec = FUNCTIONS.get(name)
        validation = {"uploads": self.uploads}
        try:
            spec.validate(payload, validation)
        except InvalidInput:
            assume(False)
        job = FakeJob(self.artifacts, attempt=attempt, parents=parents or {})
        with context.running(job):
            try:
                result = spec.call(payload, validation)
                if spec.is_async:  # a coroutine: the worker awaits it on its event loop, in the job's context
                    result = asyncio.run(result)
            except PermanentError as exc:
                assert str(exc), "a PermanentError says why"
                return exc
        json.dumps(result, allow_nan=False)  # the worker would refuse a result that is not JSON
        return result


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("worker")
    store = Store(f"sqlite:///{root}/runner.db")
    store.migrate()
    start = datetime(2024, 5, 1, tzinfo=UTC)
    for number, status in enumerate(["finished", "failed", "queued", "started", "odd-status", "canceled"] * 3):
        created = start + timedelta(hours=number)
        insert_rows(store, InvocationRecord(
            id=f"job-{number}", function=["simple_calculation", "a$b$c", "ünï\u202ecode" * 10][number % 3],
            queue="demo_tasks", status=status, input={}, attempts=number % 4,
            created_at=created, started_at=created + timedelta(seconds=1),
            ended_at=created + timedelta(seconds=number) if status != "started" else None))
    uploads, artifacts = UploadStore(root / "uploads"), ArtifactStore(root / "artifacts")
    install_environment(WorkerEnvironment(registry=FUNCTIONS, store=store, uploads=uploads, artifacts=artifacts))
    yield Worker(uploads, artifacts)
    install_environment(None)
    store.engine.dispose()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LLM server or SMTP relay: the offline generator and the outbox under tmp_path."""
    for name in ("RUNNER_LLM_BASE_URL", "RUNNER_SMTP_URL", "RUNNER_SMTP_FROM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path))


def test_every_shipped_function_has_a_property_test() -> None:
    tested = {name.removeprefix("test_").removesuffix("_ends_in_a_result_or_a_permanent_error")
              for name in globals() if name.endswith("_ends_in_a_result_or_a_permanent_error")}
    assert tested == {spec.name for spec in FUNCTIONS}


# simple_calculation: numbers at the edges, every operator, deep parentheses, and plain junk.
NUMBERS = st.sampled_from(["0", "1", "-1", "2", "0.5", "1e308", "1e-320", "9" * 400, "4096", "1_000", ".5", "1e"]) | (
    st.integers(-(10**30), 10**30).map(str)) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
OPERATORS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<<", "&", " and ", "@", ""])
EXPRESSIONS = st.recursive(
    NUMBERS,
    lambda inner: st.tuples(inner, OPERATORS, inner).map("".join)
    | inner.map(lambda text: f"({text})") | inner.map(lambda text: f"-{text}"),
    max_leaves=30,
) | st.integers(1, 200).map(lambda depth: "(" * depth + "1" + ")" * depth) | ODD_TEXT


@FAST
@given(expression=EXPRESSIONS)
def test_simple_calculation_ends_in_a_result_or_a_permanent_error(worker: Worker, expression: str) -> None:
    outcome = worker.run("simple_calculation", {"expression": expression})
    if not isinstance(outcome, PermanentError):
        assert isinstance(outcome["result"], int | float)


@FAST
@given(fail_times=st.integers(0, 100), failure_rate=st.none() | st.floats(0, 1), attempt=st.integers(1, 5),
       seed=st.none() | st.integers(-(2**63) + 1, 2**63 - 1))
def test_unreliable_task_ends_in_a_result_or_a_permanent_error(
    worker: Worker, fail_times: int, failure_rate: float | None, attempt: int, seed: int | None
) -> None:
    # Its one other exception is the point of the function: a planned failure, which is retried.
    try:
        outcome = worker.run("unreliable_task", {"fail_times": fail_times, "failure_rate": failure_rate,
                                                 "seed": seed}, attempt=attempt)
    except RuntimeError as exc:
        assert str(exc).startswith("Simulated") and (attempt <= fail_times or failure_rate is not None)
        return
    assert attempt > fail_times and outcome["succeeded_on_attempt"] == attempt


@FAST
@given(prompt=ODD_TEXT | st.sampled_from(["a", " ", "\n" * 50, "the " * 5000, "\ud800\udfff", "🙂" * 100]),
       max_tokens=st.integers(1, 64) | st.just(4096),
       temperature=st.floats(0, 2) | st.sampled_from([0.0, 5e-324, 1e-300, 1e-10, 2.0]),
       system=st.none() | ODD_TEXT, seed=st.none() | st.integers(0, 2**63 - 1))
def test_text_generation_ends_in_a_result_or_a_permanent_error(
    worker: Worker, prompt: str, max_tokens: int, temperature: float, system: str | None, seed: int | None
) -> None:
    outcome = worker.run("text_generation", {"prompt": prompt, "max_tokens": max_tokens,
                                             "temperature": temperature, "system": system, "seed": seed})
    if not isinstance(outcome, PermanentError):
        assert outcome["usage"]["completion_tokens"] <= max_tokens


def image_bytes(mode: str, size: tuple[int, int], image_format: str) -> bytes:
    """An image of `mode` and `size` (noise, so every channel varies), encoded as `image_format`."""
    noise = Image.effect_noise(size, 64).convert(mode) if mode != "F" else Image.new(mode, size, 1.5)
    buffer = io.BytesIO()
    try:
        noise.save(buffer, image_format)
    except (OSError, ValueError, KeyError):  # a format that cannot hold this mode: send the raw pixels instead
        return noise.tobytes()
    return buffer.getvalue()


FILE_IMAGES = st.builds(
    image_bytes,
    st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr", "LAB", "HSV", "PA"]),
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA"]),
)
# Crafted and damaged files: random bytes, an image cut short, an image with random bytes flipped.
IMAGE_FILES = FILE_IMAGES | st.binary(max_size=200) | st.builds(
    lambda data, cut: data[: max(1, len(data) * cut // 100)], FILE_IMAGES, st.integers(1, 99)
) | st.builds(
    lambda data, where, byte: data[:where % len(data)] + bytes([byte]) + data[where % len(data) + 1:],
    FILE_IMAGES, st.integers(0, 10**6), st.integers(0, 255))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged files drawn here
@SLOW
@given(data=IMAGE_FILES, as_upload=st.booleans(), wrapping=st.sampled_from(["", "data:image/png;base64,", "\n"]),
       junk=st.none() | ODD_TEXT.filter(bool))
def test_image_analysis_ends_in_a_result_or_a_permanent_error(
    worker: Worker, data: bytes, as_upload: bool, wrapping: str, junk: str | None
) -> None:
    if junk is not None:
        payload = {"image_base64": junk}
    elif as_upload:
        payload = {"upload_id": worker.upload(data)}
    else:
        encoded = base64.b64encode(data).decode()
        lines = "\n".join(encoded[start:start + 76] for start in range(0, len(encoded), 76))
        payload = {"image_base64": lines if wrapping == "\n" else wrapping + encoded}
    outcome = worker.run("image_analysis", payload)
    if not isinstance(outcome, PermanentError):
        assert outcome["width"] >= 1 and outcome["thumbnail"]["width"] <= 256


RECORDS = st.lists(st.dictionaries(NAMES, JSON_VALUES, max_size=6), max_size=20)


def csv_text(rows: list[list[str]], delimiter: str) -> str:
    return "".join(delimiter.join(row) + "\n" for row in rows)


CELLS = st.sampled_from(["", "1", "-2.5", "NA", "true", "2024-01-01", '"quoted, cell"', '"', "9" * 400,
                         "1" * 3000 + "x", "\r", "é", "\x00"]) | ODD_TEXT
TABLE_FILES = st.one_of(
    st.builds(csv_text, st.lists(st.lists(CELLS, max_size=6), max_size=20), st.sampled_from([",", ";", "\t", "|"])),
    RECORDS.map(json.dumps),
    RECORDS.map(lambda records: "".join(json.dumps(record) + "\n" for record in records)),
    # Spelled out, not json.dumps'd: encoding 2,000 levels would overflow the stack of the test itself.
    st.builds(lambda value, levels: '[{"a": ' + "[" * levels + json.dumps(value) + "]" * levels + "}]",
              SCALARS, st.integers(0, 2000)),
    st.sampled_from(["", "[", "[{}", "{}\n{", "[1]", "[{}] x", "[" + "{}," * 100 + "]", '[{"n": ' + "7" * 5000 + "}]"]),
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=300) | st.builds(
    lambda text, codec: text.encode(codec, "replace"), ODD_TEXT, st.sampled_from(["utf-16", "cp1252", "shift_jis"]))


@FAST
@given(source=st.sampled_from(["records", "upload"]), records=RECORDS, file=TABLE_FILES,
       group_by=st.none() | NAMES.filter(bool) | st.just("a"), file_format=st.sampled_from(["auto", "csv", "json",
                                                                                              "jsonl"]))
def test_data_processing_ends_in_a_result_or_a_permanent_error(
    worker: Worker, source: str, records: list[dict[str, Any]], file: bytes, group_by: str | None, file_format: str
) -> None:
    payload: dict[str, Any] = {"group_by": group_by, "format": file_format}
    if source == "records":
        payload["records"] = records
    else:
        payload["upload_id"] = worker.upload(file, "table")
    outcome = worker.run("data_processing", payload)
    if not isinstance(outcome, PermanentError):
        assert outcome["rows"] >= 0


# combine_profiles: its parents' results, as data_processing makes them (from records drawn as above)
# or as anything else a job may have returned.
STATS = st.dictionaries(st.sampled_from(["count", "missing", "min", "max", "mean", "type"]), SCALARS, max_size=6)
PROFILES = st.fixed_dictionaries({"rows": EXTREME_INTEGERS | SCALARS,
                                  "columns": st.dictionaries(NAMES, STATS | SCALARS, max_size=4) | SCALARS})


@FAST
@given(parents=st.dictionaries(st.text(min_size=1, max_size=8), PROFILES | JSON_VALUES, max_size=4),
       real=st.lists(RECORDS, max_size=3), columns=st.none() | st.lists(NAMES, max_size=3))
def test_combine_profiles_ends_in_a_result_or_a_permanent_error(
    worker: Worker, parents: dict[str, Any], real: list[list[dict[str, Any]]], columns: list[str] | None
) -> None:
    for number, records in enumerate(real):
        profile = worker.run("data_processing", {"records": records})
        if not isinstance(profile, PermanentError):
            parents[f"profile-{number}"] = profile
    outcome = worker.run("combine_profiles", {"columns": columns}, parents=parents)
    if not isinstance(outcome, PermanentError):
        assert outcome["rows"] == sum(parent["rows"] for parent in parents.values())


TEXT_FILES = st.binary(max_size=500) | st.builds(
    lambda text, codec: text.encode(codec, "replace"),
    ODD_TEXT, st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig", "cp1252", "shift_jis", "koi8_r"]),
) | st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\x00" * 10, b"\x89PNG\r\n\x1a\n", "é".encode() * 5])


@FAST
@given(data=TEXT_FILES)
def test_process_file_upload_ends_in_a_result_or_a_permanent_error(worker: Worker, data: bytes) -> None:
    outcome = worker.run("process_file_upload", {"upload_id": worker.upload(data)})
    if not isinstance(outcome, PermanentError):
        assert outcome["size"] == len(data)


ZONES = st.none() | st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)),
                                     timezone(timedelta(hours=23, minutes=59))])
MOMENTS = st.none() | st.builds(lambda moment, zone: moment.replace(tzinfo=zone),
                               st.datetimes() | st.sampled_from([datetime.min, datetime.max]), ZONES)


@SLOW
@given(since=MOMENTS, until=MOMENTS, function=st.none() | ODD_TEXT | st.just("simple_calculation"))
def test_generate_report_ends_in_a_result_or_a_permanent_error(
    worker: Worker, since: datetime | None, until: datetime | None, function: str | None
) -> None:
    payload = {"since": since and since.isoformat(), "until": until and until.isoformat(), "function": function}
    outcome = worker.run("generate_report", payload)
    if not isinstance(outcome, PermanentError):
        assert outcome["total"] == sum(entry["count"] for entry in outcome["functions"])


ADDRESSES = st.emails().filter(lambda address: len(address) <= 254) | st.sampled_from(
    ["a@b.co", "x+y@example.com", "o'brien@mail.example.org"])


# The schema refuses most odd subjects and senders (header injection, the sender allow-list): many
# drawn inputs are filtered out by design, so the filter health check would fail the test for it.
@settings(FAST, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(to=st.lists(ADDRESSES, min_size=1, max_size=5), subject=ODD_TEXT | st.just("=?utf-8?b?SGk=?="),
       body=ODD_TEXT, html=st.none() | ODD_TEXT, from_address=st.none() | st.none() | st.none() | ADDRESSES)
def test_send_notification_email_ends_in_a_result_or_a_permanent_error(
    worker: Worker, to: list[str], subject: str, body: str, html: str | None, from_address: str | None
) -> None:
    outcome = worker.run("send_notification_email", {"to": to, "subject": subject, "body": body, "html": html,
                                                     "from_address": from_address})
    if not isinstance(outcome, PermanentError):
        assert outcome["accepted"]

