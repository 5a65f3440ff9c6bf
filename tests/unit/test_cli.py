"""The client commands of `python -m runner`, with a Flask test client wired in as the HTTP transport."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import api
from api.events import format_event
from runner.authoring.registry import Registry
from runner.cli import client_commands as cli_client
from runner.cli.client_commands import DEFAULT_URL
from runner.cli.main import main, pool_bounds
from runner.client.http_client import RunnerClient
from runner.config import Settings
from runner.errors import ApiError, ApiUnreachable
from runner.services.backends import Backends
from runner.worker.run import build_worker

RunJobs = Callable[..., bool]


class FlaskResponse:
    """A Flask test response as the client's TransportResponse."""

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self.status = response.status_code

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def read(self) -> bytes:
        return b"".join(self.response.iter_encoded())

    def iter_lines(self) -> Iterator[str]:
        pending = ""
        for chunk in self.response.iter_encoded():
            pending += chunk.decode()
            *lines, pending = pending.split("\n")
            yield from lines
        if pending:
            yield pending

    def close(self) -> None:
        self.response.close()


class FlaskTransport:
    """Sends the client's requests to a Flask test client; `before_stream` runs before each event stream."""

    def __init__(self, client: FlaskClient, before_stream: Callable[[], Any] | None = None) -> None:
        self.client = client
        self.before_stream = before_stream
        self.sent: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.rewrite: dict[str, str] = {}

    def __call__(self, method: str, path: str, *, params: Mapping[str, str], body: bytes | None,
                 headers: Mapping[str, str], timeout: float) -> FlaskResponse:
        self.sent.append((method, path, dict(params), dict(headers)))
        if path.endswith("/events") and self.before_stream is not None:
            self.before_stream()
        for suffix, replacement in self.rewrite.items():
            if path.endswith(suffix):
                path = path.removesuffix(suffix) + replacement
        response = self.client.open(path, method=method, query_string=dict(params), data=body,
                                    headers=dict(headers), buffered=False)
        return FlaskResponse(response)


@pytest.fixture
def transport(client: FlaskClient) -> FlaskTransport:
    return FlaskTransport(client)


@pytest.fixture
def cli(transport: FlaskTransport) -> Callable[..., Result]:
    """Run `python -m runner ARGS` against the test app."""

    def run(*args: str, env: Mapping[str, str] | None = None, obj: Any = None) -> Result:
        return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(
            main, list(args), obj=transport if obj is None else obj, catch_exceptions=False
        )

    return run


def invoke_job(client: FlaskClient, expression: str) -> str:
    response = client.post("/functions/simple_calculation/invocations", json={"expression": expression})
    assert response.status_code == 202
    job_id: str = response.get_json()["id"]
    return job_id


def test_functions_prints_a_table_of_every_function(cli: Callable[..., Result], registry: Registry) -> None:
    result = cli("functions")
    assert result.exit_code == 0, result.stderr
    for spec in registry:
        line = next(line for line in result.stdout.splitlines() if f" {spec.name} " in line)
        assert spec.queue in line and f"{spec.timeout} s" in line
    assert "3 (after 1, 2, 3 s)" in result.stdout  # unreliable_task's retry policy


def test_functions_json_is_the_api_listing(cli: Callable[..., Result], client: FlaskClient) -> None:
    result = cli("functions", "--json")
    assert json.loads(result.stdout) == client.get("/functions").get_json()["functions"]


def test_invoke_without_wait_prints_the_accepted_job(cli: Callable[..., Result], client: FlaskClient) -> None:
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "2*(3+4)"}')
    assert result.exit_code == 0, result.stderr
    accepted = json.loads(result.stdout)
    assert (accepted["status"], accepted["function"]) == ("queued", "simple_calculation")
    assert client.get(f"/jobs/{accepted['id']}").status_code == 200


def test_invoke_after_and_expires_reach_the_api(
    cli: Callable[..., Result], client: FlaskClient, transport: FlaskTransport
) -> None:
    first, second = invoke_job(client, "1"), invoke_job(client, "2")
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "3"}', "--after", f"{first},{second}",
                 "--after", first, "--expires", "90")
    assert result.exit_code == 0, result.stderr
    accepted = json.loads(result.stdout)
    assert (accepted["status"], accepted["after"], accepted["waiting_for"]) == ("deferred", [first, second],
                                                                                [first, second])
    assert transport.sent[-1][2] == {"after": f"{first},{second},{first}", "expires": "90.0"}
    refused = cli("invoke", "simple_calculation", "--data", '{"expression": "3"}', "--after", "nosuchjob")
    assert refused.exit_code != 0 and "nosuchjob" in refused.stderr


def test_invoke_wait_follows_the_event_stream_and_prints_the_result(
    cli: Callable[..., Result], transport: FlaskTransport, run_jobs: RunJobs
) -> None:
    transport.before_stream = run_jobs  # the job runs while the client follows it
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "2*(3+4)"}', "--wait")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"expression": "2*(3+4)", "result": 14, "operations": 2}
    assert any(path.endswith("/events") for _, path, _, _ in transport.sent)
    assert "100%" in result.stderr  # the progress bar, on stderr so stdout stays pipeable


def test_invoke_wait_polls_when_the_api_has_no_event_stream(
    cli: Callable[..., Result], transport: FlaskTransport, run_jobs: RunJobs
) -> None:
    transport.before_stream = run_jobs
    transport.rewrite = {"/events": "/events-of-an-older-api"}
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "6*7"}', "--wait")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["result"] == 42


def test_invoke_wait_exits_1_with_the_error_when_the_job_fails(
    cli: Callable[..., Result], transport: FlaskTransport, run_jobs: RunJobs
) -> None:
    transport.before_stream = run_jobs
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "1/0"}', "--wait")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: job ") and " failed: PermanentError: " in line


def test_invoke_wait_gives_up_after_its_timeout_with_exit_3(
    backends: Backends, registry: Registry, cli: Callable[..., Result]
) -> None:
    fast = dataclasses.replace(backends.settings, sse_max_seconds=0.2, sse_poll_seconds=0.02)
    app = api.create_app({"RUNNER_SETTINGS": fast, "RUNNER_BACKENDS": dataclasses.replace(backends, settings=fast),
                          "RUNNER_REGISTRY": registry, "TESTING": True})
    transport = FlaskTransport(app.test_client())
    result = cli("invoke", "simple_calculation", "--data", '{"expression": "1"}', "--wait", "--timeout", "0.7",
                 obj=transport)
    assert result.exit_code == 3
    assert "is still queued after 0.7 s" in result.stderr
    assert sum(path.endswith("/events") for _, path, _, _ in transport.sent) >= 2  # reconnected after `timeout`


def test_invoke_reads_the_input_from_a_file(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "input.json"
    data.write_text('{"expression": "3*3"}')
    result = cli("invoke", "simple_calculation", "--data-file", str(data))
    assert json.loads(result.stdout)["input"] == {"expression": "3*3"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{nope"], "not valid JSON"),
        (["--data", "{}", "--data-file", "x.json"], "not both"),
        (["--data-file", "/no/such/file.json"], "cannot read"),
    ],
)
def test_invoke_rejects_bad_input_options_as_usage_errors(
    cli: Callable[..., Result], args: list[str], message: str
) -> None:
    result = cli("invoke", "simple_calculation", *args)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["invoke", "nope"], "Error: No function is named 'nope'. (404 function_not_found)"),
        (["invoke", "simple_calculation", "--data", "{}"], "(422 invalid_input)"),
        (["invoke", "simple_calculation", "--data", "[1]"], "(400 malformed_request)"),
        (["job", "nope"], "Error: No job has the id 'nope'. (404 job_not_found)"),
        (["jobs", "--status", "sleepy"], "Unknown status 'sleepy'. (400 malformed_request)"),
        (["requeue-failed", "--queue", "nope"], "(404 queue_not_found)"),
    ],
)
def test_api_errors_are_one_clear_line_and_exit_1(cli: Callable[..., Result], args: list[str], expected: str) -> None:
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    line, *details = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and line.endswith(expected), line
    assert all(detail.startswith("  ") for detail in details), details


@pytest.mark.parametrize(
    ("args", "details"),
    [
        (["invoke", "simple_calculation", "--data", '{"expression": 1, "extra": 2}'],
         ["  expression: Input should be a valid string", "  extra: Extra inputs are not permitted"]),
        # Every queue, `callbacks` included: a fleet started with explicit queues must serve it.
        (["requeue-failed", "--queue", "nope"], ["  known: ai_processing, callbacks, default, demo_tasks"]),
    ],
)
def test_api_errors_show_their_details_a_line_each(
    cli: Callable[..., Result], args: list[str], details: list[str]
) -> None:
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.strip("\n").splitlines()[1:] == details


def test_an_unreachable_api_is_a_clear_message_and_exit_2(cli: Callable[..., Result], closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    for args in (["--url", url, "functions"], ["functions"]):
        result = CliRunner(env={"RUNNER_URL": url}).invoke(main, args)  # the real urllib transport
        assert result.exit_code == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"Error: Cannot reach the API at {url} (") and "Is it running?" in line


@pytest.fixture
def client_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The base URL of every client the commands make."""
    urls: list[str] = []

    def client(url: str, **options: Any) -> RunnerClient:
        urls.append(url)
        return RunnerClient(url, **options)

    monkeypatch.setattr(cli_client, "RunnerClient", client)
    return urls


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"RUNNER_URL": None}, DEFAULT_URL),
        ([], {"RUNNER_URL": ""}, DEFAULT_URL),
        ([], {"RUNNER_URL": "http://from-env"}, "http://from-env"),
        (["--url", "http://from-option"], {"RUNNER_URL": "http://from-env"}, "http://from-option"),
    ],
)
def test_the_url_is_the_option_then_runner_url_then_the_default(
    client_urls: list[str], transport: FlaskTransport, args: list[str], env: dict[str, str | None], expected: str,
) -> None:
    result = CliRunner(env=env).invoke(main, [*args, "functions", "--json"], obj=transport)
    assert result.exit_code == 0, result.stderr
    assert client_urls == [expected]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["functions", "--json", "--url", "http://after"], {}, "http://after"),
        (["--url", "http://before", "functions", "--json", "--url", "http://after"], {}, "http://after"),
        (["--url", "127.0.0.1:9000", "functions", "--json"], {}, "http://127.0.0.1:9000"),
        (["functions", "--json", "--url", "https://runner.example.com/"], {}, "https://runner.example.com"),
        (["functions", "--json"], {"RUNNER_URL": "runner.internal:8000"}, "http://runner.internal:8000"),
    ],
)
def test_the_url_may_follow_the_command_and_may_omit_http(
    client_urls: list[str], transport: FlaskTransport, args: list[str], env: dict[str, str], expected: str,
) -> None:
    result = CliRunner(env=env).invoke(main, args, obj=transport)
    assert result.exit_code == 0, result.stderr
    assert client_urls == [expected]


@pytest.mark.parametrize("url", ["ftp://files.example.com", "http://", "http:///jobs"])
def test_a_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    result = CliRunner().invoke(main, ["jobs", "--url", url])
    assert result.exit_code == 2
    assert "is not an http(s) URL such as http://127.0.0.1:8000" in result.stderr


def test_an_empty_url_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--url", "", "functions"])
    assert result.exit_code == 2
    assert "base URL" in result.stderr


def test_the_api_key_is_sent_as_a_bearer_token(cli: Callable[..., Result], transport: FlaskTransport) -> None:
    cli("functions", env={"RUNNER_API_KEY": "s3cret"})
    cli("workers")
    assert transport.sent[0][3]["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in transport.sent[1][3]


def test_jobs_lists_history_with_filters(cli: Callable[..., Result], client: FlaskClient, run_jobs: RunJobs) -> None:
    ok, bad = invoke_job(client, "1+1"), invoke_job(client, "1/0")
    run_jobs()
    listing = cli("jobs").stdout
    assert ok in listing and bad in listing
    failed = cli("jobs", "--status", "failed", "--function", "simple_calculation").stdout
    assert bad in failed and ok not in failed
    page = json.loads(cli("jobs", "--limit", "1", "--json").stdout)
    assert [job["id"] for job in page["jobs"]] == [bad] and page["next"]
    more = cli("jobs", "--limit", "1")
    assert f"--cursor {page['next']}" in more.stdout
    assert ok in cli("jobs", "--limit", "1", "--cursor", page["next"]).stdout


def test_invoke_wait_names_the_job_and_where_its_artifacts_are(
    cli: Callable[..., Result], transport: FlaskTransport, run_jobs: RunJobs
) -> None:
    transport.before_stream = run_jobs
    result = cli("invoke", "generate_report", "--wait", "--url", "http://runner.example.com:8000")
    assert result.exit_code == 0, result.stderr
    job_id = re.search(r"^job ([0-9a-f]{32}) finished in [0-9.]+ s$", result.stderr, re.MULTILINE)
    assert job_id, result.stderr
    for name in ("report.csv", "report.html", "report.png"):
        assert f"  {name}: http://runner.example.com:8000/jobs/{job_id.group(1)}/artifacts/{name}" in result.stderr
    assert json.loads(result.stdout)["artifacts"] == ["report.csv", "report.html", "report.png"]  # stdout: the result


def test_empty_listings_say_so(cli: Callable[..., Result]) -> None:
    assert cli("jobs").stdout == "No jobs yet: invoke a function first.\n"
    assert cli("jobs", "--status", "failed", "--function", "simple_calculation").stdout == (
        "No jobs match --function simple_calculation --status failed.\n")
    assert cli("workers").stdout.startswith("No workers are registered: start one with `runner worker`")


def test_job_takes_the_start_of_an_id(cli: Callable[..., Result], client: FlaskClient) -> None:
    # 17 ids over 16 hex digits: two of them start alike.
    job_ids = [invoke_job(client, str(number)) for number in range(17)]
    job_id = job_ids[0]
    assert json.loads(cli("job", job_id[:8]).stdout) == client.get(f"/jobs/{job_id}").get_json()
    shared = next(digit for digit in "0123456789abcdef" if sum(i.startswith(digit) for i in job_ids) > 1)
    ambiguous = cli("job", shared)
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith(f"Error: {sum(i.startswith(shared) for i in job_ids)} recent jobs start with")
    assert {line.strip() for line in ambiguous.stderr.splitlines()[1:]} == {i for i in job_ids if i.startswith(shared)}
    unknown = cli("job", "ffffffffffff")
    assert (unknown.exit_code, unknown.stderr.strip()) == (
        1, "Error: No job has the id 'ffffffffffff'. (404 job_not_found)")


def test_job_prints_the_job_view(cli: Callable[..., Result], client: FlaskClient, run_jobs: RunJobs) -> None:
    job_id = invoke_job(client, "2**10")
    run_jobs()
    result = cli("job", job_id)
    assert json.loads(result.stdout) == client.get(f"/jobs/{job_id}").get_json()


def test_workers_shows_each_worker(cli: Callable[..., Result], backends: Backends, registry: Registry) -> None:
    worker = build_worker(["demo_tasks"], backends, registry)
    worker.register_birth()
    try:
        line = next(line for line in cli("workers").stdout.splitlines() if worker.name in line)
        assert "demo_tasks" in line
        assert json.loads(cli("workers", "--json").stdout)[0]["name"] == worker.name
    finally:
        worker.register_death()


def test_queues_shows_depths(cli: Callable[..., Result], client: FlaskClient) -> None:
    invoke_job(client, "1")
    invoke_job(client, "2")
    line = next(line for line in cli("queues").stdout.splitlines() if " demo_tasks " in line)
    assert line.split("│")[2].strip() == "2"  # queued
    depths = {queue["name"]: queue for queue in json.loads(cli("queues", "--json").stdout)}
    assert depths["demo_tasks"]["queued"] == 2


def test_requeue_failed_reports_the_count(cli: Callable[..., Result], client: FlaskClient, run_jobs: RunJobs) -> None:
    job_id = invoke_job(client, "1/0")
    run_jobs()
    result = cli("requeue-failed", "--function", "simple_calculation")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["Requeued 1 failed job.", job_id]
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "queued"
    assert cli("requeue-failed").stdout == "Requeued 0 failed jobs.\n"


def test_a_non_json_error_page_still_becomes_an_api_error() -> None:
    class HtmlProxy:
        def __call__(self, method: str, path: str, **_: Any) -> Any:
            class Page:
                status = 502

                def header(self, name: str) -> str | None:
                    return None

                def read(self) -> bytes:
                    return b"<html>Bad Gateway</html>"

                def iter_lines(self) -> Iterator[str]:
                    return iter(())

                def close(self) -> None:
                    pass

            return Page()

    with pytest.raises(ApiError) as raised:
        RunnerClient("http://proxy", transport=HtmlProxy()).functions()
    assert (raised.value.status, raised.value.code) == (502, "http_error")
    assert "Bad Gateway" in raised.value.message


class CannedStream:
    """A transport answering GET /jobs/<id> with `view` and the event stream with `stream` (SSE text)."""

    def __init__(self, view: dict[str, Any], stream: str) -> None:
        self.view = view
        self.stream = stream

    def __call__(self, method: str, path: str, **_: Any) -> Any:
        body = self.stream if path.endswith("/events") else json.dumps(self.view)

        class Canned:
            status = 200

            def header(self, name: str) -> str | None:
                return None

            def read(self) -> bytes:
                return body.encode()

            def iter_lines(self) -> Iterator[str]:
                return iter(body.split("\n"))

            def close(self) -> None:
                pass

        return Canned()


def test_follow_takes_the_result_from_the_final_event_not_the_progress_before_it() -> None:
    queued = {"id": "j1", "function": "f", "status": "queued", "progress": {"percent": 0, "message": ""},
              "result": None}
    finished = {**queued, "status": "finished", "progress": {"percent": 100, "message": "done"}, "result": 7}
    stream = "".join([
        format_event("state", queued),
        format_event("status", {"status": "started", "previous": "queued", "attempts": 1}),
        format_event("progress", {"percent": 40, "message": "working", "status": "started"}),
        ": keep-alive\n\n",
        format_event("progress", {"percent": 100, "message": "done", "status": "finished"}),
        format_event("finished", finished),
    ])
    updates: list[dict[str, Any]] = []
    view = RunnerClient("http://api", transport=CannedStream(queued, stream)).follow("j1", 5, updates.append)
    assert view == finished
    assert [(u["status"], u["progress"]["percent"]) for u in updates] == [
        ("queued", 0), ("queued", 0), ("started", 0), ("started", 40), ("started", 100), ("finished", 100)]


def test_with_api_keys_on_the_cli_needs_runner_api_key(
    backends: Backends, registry: Registry, cli: Callable[..., Result]
) -> None:
    settings = dataclasses.replace(backends.settings, api_keys="k-one,k-two")
    app = api.create_app({"RUNNER_SETTINGS": settings, "RUNNER_BACKENDS": dataclasses.replace(backends,
                          settings=settings), "RUNNER_REGISTRY": registry, "TESTING": True})
    transport = FlaskTransport(app.test_client())
    refused = cli("functions", obj=transport)
    assert refused.exit_code == 1
    assert refused.stderr.strip().endswith("(401 unauthorized)")
    assert cli("functions", obj=transport, env={"RUNNER_API_KEY": "wrong"}).exit_code == 1
    allowed = cli("functions", "--json", obj=transport, env={"RUNNER_API_KEY": "k-two"})
    assert allowed.exit_code == 0
    assert {spec["name"] for spec in json.loads(allowed.stdout)} == {spec.name for spec in registry}


class FlakyStream(CannedStream):
    """A CannedStream whose event stream breaks `breaks` times before it answers."""

    def __init__(self, view: dict[str, Any], stream: str, breaks: int) -> None:
        super().__init__(view, stream)
        self.breaks = breaks
        self.attempts = 0

    def __call__(self, method: str, path: str, **options: Any) -> Any:
        if path.endswith("/events"):
            self.attempts += 1
            if self.attempts <= self.breaks:
                raise ApiUnreachable("Cannot reach the API at http://api (connection reset).")
        return super().__call__(method, path, **options)


@pytest.mark.parametrize(("breaks", "recovers"), [(2, True), (4, False)])
def test_follow_reconnects_a_few_times_when_the_connection_breaks(
    monkeypatch: pytest.MonkeyPatch, breaks: int, recovers: bool
) -> None:
    monkeypatch.setattr("runner.client.http_client.RECONNECT_DELAY_SECONDS", 0)
    queued = {"id": "j1", "function": "f", "status": "queued", "progress": {"percent": 0, "message": ""}}
    finished = {**queued, "status": "finished", "result": 1}
    transport = FlakyStream(queued, format_event("finished", finished), breaks)
    client = RunnerClient("http://api", transport=transport)
    if recovers:
        assert client.follow("j1", 5) == finished
        assert transport.attempts == 3
    else:
        with pytest.raises(ApiUnreachable):
            client.follow("j1", 5)
        assert transport.attempts == 4  # the first try and three reconnects


def test_schedules_are_created_listed_paused_resumed_and_deleted(cli: Callable[..., Result],
                                                                 client: FlaskClient) -> None:
    created = cli("schedules", "create", "simple_calculation", "--cron", "0 3 * * *", "--timezone",
                  "Europe/Paris", "--data", '{"expression": "1+1"}')
    assert created.exit_code == 0, created.output
    schedule = json.loads(created.output)
    assert (schedule["cron"], schedule["timezone"], schedule["input"]) == ("0 3 * * *", "Europe/Paris",
                                                                         {"expression": "1+1"})
    listed = cli("schedules")
    assert listed.exit_code == 0 and schedule["id"] in listed.output and "0 3 * * * (Europe/Paris)" in listed.output
    assert json.loads(cli("schedules", "--json").output) == client.get("/schedules").get_json()["schedules"]
    assert json.loads(cli("schedules", "pause", schedule["id"]).output)["paused"] is True
    assert "paused" in cli("schedules").output
    assert json.loads(cli("schedules", "resume", schedule["id"]).output)["next_run_at"] is not None
    assert json.loads(cli("schedules", "show", schedule["id"]).output)["id"] == schedule["id"]
    deleted = cli("schedules", "delete", schedule["id"])
    assert deleted.exit_code == 0 and f"Deleted schedule {schedule['id']}" in deleted.output
    assert client.get("/schedules").get_json() == {"schedules": []}
    assert "No schedules yet" in cli("schedules").output


def test_a_bad_schedule_is_the_apis_error_and_exit_1(cli: Callable[..., Result]) -> None:
    result = cli("schedules", "create", "simple_calculation", "--every", "0", "--data", '{"expression": "1"}')
    assert result.exit_code == 1
    assert "422 invalid_input" in result.output and "every" in result.output
    missing = cli("schedules", "delete", "nope")
    assert missing.exit_code == 1 and "404 schedule_not_found" in missing.output


def test_jobs_lists_only_a_schedules_runs(cli: Callable[..., Result], client: FlaskClient, backends: Backends,
                                          registry: Registry) -> None:
    from runner.services.schedule_ticks import run_due
    from runner.services.schedules import DUE_KEY

    schedule = client.post("/schedules", json={"function": "simple_calculation", "input": {"expression": "1"},
                                               "every": 60}).get_json()
    invoke_job(client, "2")
    backends.connection.zadd(DUE_KEY, {schedule["id"]: 1_900_000_000})
    [outcome] = run_due(backends, registry, datetime.fromtimestamp(1_900_000_000, UTC))
    listed = json.loads(cli("jobs", "--schedule", schedule["id"], "--json").output)["jobs"]
    assert [view["id"] for view in listed] == [outcome.job_id]
    assert "No jobs match --schedule nope." in cli("jobs", "--schedule", "nope").output


@pytest.mark.parametrize(
    ("options", "env", "bounds"),
    [
        ((None, None), {}, None),  # a plain `runner worker`: one worker, as before
        ((0, 3), {}, (0, 3)),
        ((None, 5), {}, (0, 5)),
        ((None, None), {"RUNNER_WORKERS_MIN": "1", "RUNNER_WORKERS_MAX": "2"}, (1, 2)),
        ((2, None), {"RUNNER_WORKERS_MAX": "6"}, (2, 6)),
        ((2, None), {}, (2, max(2, os.cpu_count() or 1))),
    ],
)
def test_worker_pool_bounds_come_from_the_options_then_the_environment(
    options: tuple[int | None, int | None], env: dict[str, str], bounds: tuple[int, int] | None
) -> None:
    assert pool_bounds(*options, Settings.from_env(env)) == bounds


def test_a_pool_with_min_above_max_or_with_burst_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["worker", "--min", "3", "--max", "2"])
    assert result.exit_code == 2 and "0 <= min <= max" in result.output
    result = CliRunner().invoke(main, ["worker", "--max", "2", "--burst"])
    assert result.exit_code == 2 and "--burst runs one worker" in result.output
