"""Unit tests of generate_report: known history rows in, exact statistics and three real artifacts out."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy
import pytest
from PIL import Image

import functions.generate_report as module
from functions._report_render import KNOWN_STATUSES, STATUS_COLOURS
from functions.generate_report import generate_report
from runner.authoring import context
from runner.authoring.registry import Registry
from runner.errors import InvalidInput
from runner.store.models import InvocationRecord
from runner.store.sql_store import Store
from runner.worker.environment import WorkerEnvironment, install_environment
from tests.history import insert_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A bar segment covers hundreds of pixels of its status colour; anti-aliased text hits a few greys by chance.
BAR_PIXELS = 100
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPEC = generate_report.__runner_function__  # type: ignore[attr-defined]

Row = dict[str, Any]
ROW_NUMBERS = itertools.count()


def row(function: str, status: str, *, attempts: int = 1, seconds: float | None = None, offset: int = 0) -> Row:
    """One history row as `invocation_history` yields it; `seconds` is its run time (None: never started)."""
    created = T0 + timedelta(minutes=offset)
    started = ended = None
    if seconds is not None:
        started = created + timedelta(seconds=1)
        ended = started + timedelta(seconds=seconds) if status in module.ENDED_STATUSES else None
    return {"id": f"row{next(ROW_NUMBERS)}", "function": function, "queue": "demo_tasks", "status": status,
            "attempts": attempts, "created_at": created, "started_at": started, "ended_at": ended}


# "steady": ten finished jobs taking 1..10 s. "mixed": every kind of outcome, with retries.
STEADY = [row("steady", "finished", seconds=float(n), offset=n) for n in range(1, 11)]
MIXED = [
    row("mixed", "finished", attempts=1, seconds=2.0),
    row("mixed", "finished", attempts=3, seconds=4.0),  # two retries
    row("mixed", "failed", attempts=3, seconds=6.0),  # two retries
    row("mixed", "stopped", attempts=2, seconds=8.0),  # one retry
    row("mixed", "canceled", attempts=0),  # canceled while queued: ended, but has no duration
    row("mixed", "started", attempts=1, seconds=100.0),  # still running: no duration
    row("mixed", "queued", attempts=0),
]


@pytest.fixture
def history(real_store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[Row]], list[tuple[Any, ...]]]:
    """Write `rows` to a real (SQLite) store the report sums up; returns the list of the periods it asked for."""
    calls: list[tuple[Any, ...]] = []
    summary = module.invocation_summary

    def install(rows: list[Row]) -> list[tuple[Any, ...]]:
        def recorded(since: Any = None, until: Any = None, function: Any = None) -> list[dict[str, Any]]:
            calls.append((since, until, function))
            return summary(since, until, function)

        insert_rows(real_store, *[InvocationRecord(input={}, **values) for values in rows])
        monkeypatch.setattr(module, "invocation_summary", recorded)
        return calls

    return install


@pytest.fixture
def artifacts(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[bytes, str | None]]:
    """Record every saved artifact as name -> (bytes, media type)."""
    saved: dict[str, tuple[bytes, str | None]] = {}

    def record(name: str, data: bytes | str, media_type: str | None = None) -> dict[str, Any]:
        saved[name] = (data.encode() if isinstance(data, str) else data, media_type)
        return {"name": name, "size": len(saved[name][0]), "media_type": media_type}

    monkeypatch.setattr(module, "save_artifact", record)
    return saved


@pytest.fixture
def skip_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing (~0.2 s a chart) in tests about numbers; the chart tests below draw for real."""
    monkeypatch.setattr(module, "render_chart", lambda functions, period: PNG_SIGNATURE)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["function"]: entry for entry in report["functions"]}


def test_reports_exact_statistics(history: Callable[..., Any], artifacts: dict[str, Any]) -> None:
    history(STEADY + MIXED)
    report = generate_report()
    assert report["total"] == 17
    assert report["since"] is None and report["until"] is None
    assert [entry["function"] for entry in report["functions"]] == ["mixed", "steady"]
    steady, mixed = by_name(report)["steady"], by_name(report)["mixed"]

    assert steady["count"] == 10
    assert steady["statuses"] == {**dict.fromkeys(KNOWN_STATUSES, 0), "finished": 10}
    assert steady["success_rate"] == 1.0
    # Linear interpolation between closest ranks: p50 of 1..10 is 5.5, p95 is 9 + 0.55 * (10 - 9).
    assert (steady["p50_seconds"], steady["p95_seconds"]) == (5.5, 9.55)
    assert steady["retries"] == 0

    assert mixed["count"] == 7
    assert mixed["statuses"] == {**dict.fromkeys(KNOWN_STATUSES, 0), "finished": 2, "failed": 1, "stopped": 1,
                                 "canceled": 1, "started": 1, "queued": 1}
    assert mixed["success_rate"] == 2 / 5  # finished / (finished + failed + stopped + canceled)
    assert (mixed["p50_seconds"], mixed["p95_seconds"]) == (5.0, 7.7)  # durations 2, 4, 6, 8 only
    assert mixed["retries"] == 5
    assert report["artifacts"] == ["report.csv", "report.html", "report.png"]
    assert {name: media for name, (_, media) in artifacts.items()} == {
        "report.csv": "text/csv", "report.html": "text/html", "report.png": "image/png"}


@pytest.mark.parametrize(
    ("values", "p50", "p95"),
    [
        ([7.0], 7.0, 7.0),
        ([1.0, 2.0], 1.5, 1.95),
        ([float(n) for n in range(1, 11)], 5.5, 9.55),
        ([float(n) for n in range(1, 101)], 50.5, 95.05),
        ([3.0, 3.0, 3.0], 3.0, 3.0),
        ([0.000001, 0.25, 1.5], 0.25, 1.375),  # to the microsecond
    ],
)
@pytest.mark.usefixtures("skip_chart")
def test_the_database_interpolates_percentiles_linearly(history: Callable[..., Any], artifacts: Any,
                                                        values: list[float], p50: float, p95: float) -> None:
    history([row("f", "finished", seconds=value, offset=n) for n, value in enumerate(reversed(values))])
    entry = generate_report()["functions"][0]
    assert (entry["p50_seconds"], entry["p95_seconds"]) == (p50, p95)


@pytest.mark.usefixtures("skip_chart")
def test_percentiles_match_numpys_default(history: Callable[..., Any], artifacts: Any) -> None:
    seconds = [micros / 1e6 for micros in random.Random(7).choices(range(300_000_000), k=999)]
    history([row(f"f{n % 3}", "finished", seconds=value, offset=n) for n, value in enumerate(seconds)])
    for entry in generate_report()["functions"]:
        mine = sorted(seconds[int(entry["function"][1])::3])
        for key, percent in (("p50_seconds", 50), ("p95_seconds", 95)):
            assert entry[key] == pytest.approx(float(numpy.percentile(mine, percent)), abs=1e-6)


@pytest.mark.parametrize("status", ["queued", "started", "scheduled", "deferred"])
@pytest.mark.usefixtures("skip_chart")
def test_no_ended_job_gives_null_rate_and_durations(history: Callable[..., Any], artifacts: Any, status: str) -> None:
    history([row("waiting", status, seconds=3.0), row("waiting", status, attempts=2, seconds=4.0, offset=1)])
    entry = generate_report()["functions"][0]
    assert entry["count"] == 2 and entry["statuses"][status] == 2
    assert (entry["success_rate"], entry["p50_seconds"], entry["p95_seconds"]) == (None, None, None)
    assert entry["retries"] == 1


@pytest.mark.usefixtures("skip_chart")
def test_skewed_clocks_never_give_negative_durations(history: Callable[..., Any], artifacts: Any) -> None:
    skewed = {**row("skew", "finished", seconds=1.0), "ended_at": T0 - timedelta(seconds=5)}
    history([skewed])
    assert generate_report()["functions"][0]["p50_seconds"] == 0.0


@pytest.mark.usefixtures("skip_chart")
def test_csv_parses_back_to_the_same_numbers(history: Callable[..., Any], artifacts: dict[str, Any]) -> None:
    history(STEADY + MIXED + [row("idle", "queued")])
    report = generate_report()
    parsed = list(csv.DictReader(io.StringIO(artifacts["report.csv"][0].decode())))
    assert [line["function"] for line in parsed] == ["idle", "mixed", "steady"]
    for line, entry in zip(parsed, report["functions"], strict=True):
        assert int(line["count"]) == entry["count"]
        assert {status: int(line[status]) for status in KNOWN_STATUSES} == entry["statuses"]
        for key in ("success_rate", "p50_seconds", "p95_seconds"):
            assert (float(line[key]) if line[key] else None) == entry[key]
        assert int(line["retries"]) == entry["retries"]
    assert parsed[0]["success_rate"] == ""  # null is an empty cell


@pytest.mark.usefixtures("skip_chart")
def test_html_escapes_names_from_data(history: Callable[..., Any], artifacts: dict[str, Any]) -> None:
    hostile = "<script>alert('x')</script>&$x$"
    history([row(hostile, "finished", seconds=1.0)])
    assert generate_report()["functions"][0]["function"] == hostile  # the JSON keeps the real name
    page = artifacts["report.html"][0].decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;$x$" in page
    # Self-contained: nothing to fetch, the one image is inline.
    assert re.findall(r'(?:src|href)="([a-z]+:)', page) == ["data:"]
    assert "<td>100.0%</td><td>1.000</td><td>1.000</td><td>0</td></tr>" in page  # rate, p50, p95, retries


def pixels_of(png: bytes, colour: str) -> int:
    """How many pixels of the image have exactly this #rrggbb colour."""
    wanted = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(count for count, rgb in image.getcolors(maxcolors=1 << 24) or [] if rgb == wanted)


def test_chart_is_a_png_with_a_bar_per_status(history: Callable[..., Any], artifacts: dict[str, Any]) -> None:
    history(STEADY + MIXED + [row("$price$", "failed", seconds=1.0)])  # '$' must not break mathtext
    generate_report()
    png = artifacts["report.png"][0]
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert 800 <= image.width <= 3000 and 400 <= image.height <= 1000
    for status in ("finished", "failed", "stopped", "canceled", "started", "queued"):
        assert pixels_of(png, STATUS_COLOURS[status]) > BAR_PIXELS, status  # a bar segment of that status
    assert pixels_of(png, STATUS_COLOURS["deferred"]) < BAR_PIXELS  # no deferred job, no deferred bar
    # The page carries the same chart inside it: it is read alone, downloaded or mailed.
    page = artifacts["report.html"][0].decode()
    assert f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page


def test_empty_history_gives_a_valid_empty_report(history: Callable[..., Any], artifacts: dict[str, Any]) -> None:
    history([])
    report = generate_report(since=datetime(2024, 1, 1), until=datetime(2024, 2, 1))
    assert report == {"since": "2024-01-01T00:00:00+00:00", "until": "2024-02-01T00:00:00+00:00",
                      "functions": [], "total": 0, "artifacts": ["report.csv", "report.html", "report.png"]}
    assert list(csv.reader(io.StringIO(artifacts["report.csv"][0].decode()))) == [
        ["function", "count", *KNOWN_STATUSES, "success_rate", "p50_seconds", "p95_seconds", "retries"]]
    assert "no invocations" in artifacts["report.html"][0].decode()
    png = artifacts["report.png"][0]
    assert png.startswith(PNG_SIGNATURE) and Image.open(io.BytesIO(png)).width > 0
    assert all(pixels_of(png, colour) < BAR_PIXELS for colour in STATUS_COLOURS.values())  # no bars


@pytest.mark.parametrize(
    ("since", "until", "expected_since", "expected_until"),
    [
        (datetime(2024, 5, 1, 12), datetime(2024, 5, 2), T0, datetime(2024, 5, 2, tzinfo=UTC)),  # naive = UTC
        (datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))), None, T0, None),
        (None, T0, None, T0),
    ],
)
@pytest.mark.usefixtures("skip_chart")
def test_reads_the_period_in_utc(
    history: Callable[..., Any], artifacts: Any, since: datetime | None, until: datetime | None,
    expected_since: datetime | None, expected_until: datetime | None,
) -> None:
    calls = history([])
    report = generate_report(since=since, until=until, function="steady")
    assert calls == [(expected_since, expected_until, "steady")]
    assert calls[0][0] is None or calls[0][0].tzinfo == UTC
    assert report["since"] == (expected_since.isoformat() if expected_since else None)
    assert report["until"] == (expected_until.isoformat() if expected_until else None)


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (T0, T0),
        (T0 + timedelta(seconds=1), T0),
        (datetime(2024, 5, 1, 12), T0),  # naive 12:00 is 12:00 UTC: the same instant
        (T0, datetime(2024, 5, 1, 13, tzinfo=timezone(timedelta(hours=1)))),
    ],
)
def test_validation_requires_since_before_until(since: datetime, until: datetime) -> None:
    with pytest.raises(InvalidInput) as caught:  # the API refuses it before enqueueing; the worker re-validates
        SPEC.validate({"since": since.isoformat(), "until": until.isoformat()})
    assert [(detail["field"], detail["message"]) for detail in caught.value.details] == [
        ("until", "Value error, must be later than 'since'")]


@pytest.mark.usefixtures("skip_chart")
def test_progress_follows_the_work(history: Callable[..., Any], artifacts: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append((percent, message)))
    history([row(f"f{n % 7}", "finished", seconds=n % 13, offset=n) for n in range(200)])
    assert generate_report()["total"] == 200
    assert [message for _, message in calls] == [
        "summing up invocation history", "summed up 200 invocations of 7 functions",
        "saved report.csv", "saved report.png", "saved report.html"]
    percents = [percent for percent, _ in calls]
    assert percents == sorted(percents) and percents[-1] == 100


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01T00:00:00"}, "until"),
        ({"since": "2024-05-01T25:00:00"}, "since"),
        ({"since": [2024]}, "since"),
        ({"function": "x" * 129}, "function"),
        ({"function": ""}, "function"),
        ({"function": 5}, "function"),
        ({"limit": 10}, "limit"),
    ],
)
def test_validation_rejects_bad_input(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        SPEC.validate(payload)
    assert field in {detail["field"] for detail in caught.value.details}


def test_validation_accepts_good_input() -> None:
    assert SPEC.validate({}) == {"since": None, "until": None, "function": None}
    assert SPEC.validate({"since": "2024-05-01T12:00:00Z", "until": "2024-05-02", "function": "x" * 128}) == {
        "since": "2024-05-01T12:00:00Z", "until": "2024-05-02T00:00:00", "function": "x" * 128}


@pytest.mark.parametrize("payload", [
    {"since": "0001-01-01T00:00:00+14:00"},
    {"until": "9999-12-31T23:59:59-14:00"},
    {"since": "0001-01-01T00:00:00+00:01", "until": "2024-01-01T00:00:00Z"},
])
def test_times_without_a_utc_equivalent_are_refused_by_the_schema(payload: dict[str, str]) -> None:
    # They raised OverflowError in the worker, which retried them until the retries were spent.
    with pytest.raises(InvalidInput) as caught:
        SPEC.validate(payload)
    assert [detail["field"] for detail in caught.value.details] == [next(iter(payload))]
    assert "out of range once converted to UTC" in caught.value.details[0]["message"]


def test_the_earliest_and_latest_utc_times_are_accepted(history: Callable[[list[Row]], Any],
                                                        artifacts: dict[str, Any]) -> None:
    history([])
    payload = SPEC.validate({"since": "0001-01-01T00:00:00+00:00", "until": "9999-12-31T23:59:59-00:00"})
    assert SPEC.call(payload)["since"] == "0001-01-01T00:00:00+00:00"


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "\x7f"])
def test_a_function_filter_with_control_characters_is_refused(name: str) -> None:
    # PostgreSQL refuses NUL in a query: the worker would fail, and retry, on every attempt.
    with pytest.raises(InvalidInput):
        SPEC.validate({"function": name})


def test_declared_policy() -> None:
    assert (SPEC.name, SPEC.queue, SPEC.timeout, SPEC.retries, SPEC.backoff) == (
        "generate_report", "demo_tasks", 300, 2, (5, 30))
    assert SPEC.input_schema()["properties"]["function"]["anyOf"][0]["maxLength"] == 128


@pytest.fixture
def real_store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store installed as the worker environment, forgotten afterwards."""
    store = Store(f"sqlite:///{tmp_path}/r.db")
    store.migrate()
    install_environment(WorkerEnvironment(registry=Registry(), store=store))
    yield store
    install_environment(None)
    store.engine.dispose()


@dataclass
class ReportJob:
    """The job context of a report run by a worker: its id, and nothing to report progress to."""

    job_id: str
    attempt: int = 1

    def report_progress(self, percent: int, message: str) -> None:
        pass

    def save_artifact(self, name: str, content: bytes, media_type: str | None) -> dict[str, Any]:
        raise AssertionError("the test's `artifacts` fixture records artifacts")


def test_reads_the_real_store(real_store: Store, artifacts: dict[str, Any]) -> None:
    def record(job_id: str, function: str, status: str, created: datetime, seconds: float | None,
               attempts: int = 1) -> InvocationRecord:
        started = created + timedelta(seconds=1) if seconds is not None else None
        ended = started + timedelta(seconds=seconds) if started is not None and seconds is not None else None
        return InvocationRecord(id=job_id, function=function, queue="demo_tasks", status=status, input={},
                                attempts=attempts, created_at=created, started_at=started, ended_at=ended)

    for n in range(1, 11):
        insert_rows(real_store,
                    record(f"calc-{n}", "simple_calculation", "finished", T0 + timedelta(minutes=n), float(n)))
    insert_rows(real_store, record("calc-failed", "simple_calculation", "failed", T0 + timedelta(minutes=11), 10.0, 3))
    insert_rows(real_store, record("flaky-1", "unreliable_task", "finished", T0 + timedelta(minutes=12), 2.0, 4))
    insert_rows(real_store, record("calc-late", "simple_calculation", "finished", T0 + timedelta(days=2), 99.0))
    insert_rows(real_store, record("calc-early", "simple_calculation", "failed", T0 - timedelta(days=2), 99.0))

    report = generate_report(since=T0, until=T0 + timedelta(days=1))
    assert report["total"] == 12
    calc, flaky = by_name(report)["simple_calculation"], by_name(report)["unreliable_task"]
    assert (calc["count"], calc["statuses"]["finished"], calc["statuses"]["failed"]) == (11, 10, 1)
    assert calc["success_rate"] == 10 / 11
    assert (calc["p50_seconds"], calc["retries"]) == (6.0, 2)  # durations 1..10 and 10
    assert (flaky["count"], flaky["retries"], flaky["p95_seconds"]) == (1, 3, 2.0)

    # Run as a job whose row is in the history (as the report's own is): that row is left out.
    with context.running(ReportJob("calc-1")):
        itself_left_out = generate_report(since=T0, until=T0 + timedelta(days=1))
    assert itself_left_out["total"] == 11 and by_name(itself_left_out)["simple_calculation"]["count"] == 10

    only = generate_report(function="unreliable_task")
    assert [entry["function"] for entry in only["functions"]] == ["unreliable_task"] and only["total"] == 1
    assert set(artifacts) == {"report.csv", "report.html", "report.png"}
