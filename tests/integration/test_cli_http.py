"""The client commands against a real stack: `python -m runner --url ... <command>` over real HTTP."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runner.cli.main import main
from tests.integration.conftest import PYTHON, REPO_ROOT, Stack, base_environment, wait_until

CLI_TIMEOUT = 60


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m runner --url <stack> ARGS` as a separate process."""
    return subprocess.run(
        [PYTHON, "-m", "runner", "--url", stack.url, *args], cwd=REPO_ROOT, env=base_environment(),
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )


@pytest.fixture
def cli(sqlite_stack: Stack) -> Callable[..., Result]:
    """The commands in this process (still real HTTP through urllib), pointed at the stack by RUNNER_URL."""

    def run(*args: str) -> Result:
        return CliRunner(env={"RUNNER_URL": sqlite_stack.url}).invoke(main, list(args), catch_exceptions=False)

    return run


def test_invoke_wait_prints_the_result(sqlite_stack: Stack) -> None:
    done = run_cli(sqlite_stack, "invoke", "simple_calculation", "--data", '{"expression":"2*(3+4)"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"expression": "2*(3+4)", "result": 14, "operations": 2}


def test_invoke_wait_shows_live_progress_from_the_event_stream(sqlite_stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    web_log = next(p for p in sqlite_stack.processes.processes if p.name == "web").log_path
    held: list[str] = []

    def open_gate_once_the_cli_follows() -> None:
        # The job id is not known here: find the gated job once it reports 50%.
        def halfway() -> bool:
            jobs = sqlite_stack.get("/jobs", params={"function": "gated_progress", "status": "started"}).json()
            held.extend(job["id"] for job in jobs["jobs"] if sqlite_stack.job(job["id"])["progress"]["percent"] == 50)
            return bool(held)

        wait_until(halfway, 15, "a gated job at 50%")  # on timeout the job fails, and so does the test
        # The CLI reads the job once (urllib), then follows its stream unless it has ended. Released
        # before that read, a job could end first on a loaded machine, and the CLI would never stream.
        first_read = f'"GET /jobs/{held[0]} HTTP/1.1" 200'
        wait_until(lambda: any(first_read in line and "Python-urllib" in line
                               for line in web_log.read_text().splitlines()), 30, "the CLI's first read of the job")
        gate.touch()

    opener = threading.Thread(target=open_gate_once_the_cli_follows, daemon=True)
    opener.start()
    done = run_cli(sqlite_stack, "invoke", "gated_progress", "--data", json.dumps({"gate": str(gate)}), "--wait",
                   "--timeout", "30")
    opener.join(timeout=5)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"released": True}
    assert "100%" in done.stderr and "released" in done.stderr
    # Followed through the stream, not by polling (gunicorn logs the stream once it has closed it).
    wait_until(lambda: f"/jobs/{held[0]}/events" in web_log.read_text(), 5, "the stream's access log line")


def test_a_failed_job_exits_1_with_its_error(sqlite_stack: Stack) -> None:
    done = run_cli(sqlite_stack, "invoke", "simple_calculation", "--data", '{"expression":"1/0"}', "--wait")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "failed: PermanentError: Division by zero" in done.stderr.strip().splitlines()[-1]


def test_listing_commands_show_the_stack(cli: Callable[..., Result], sqlite_stack: Stack) -> None:
    ok = sqlite_stack.invoke("simple_calculation", {"expression": "6*7"}, wait=10).json()["id"]
    functions = cli("functions")
    assert functions.exit_code == 0
    assert "simple_calculation" in functions.stdout and "gated_progress" in functions.stdout
    workers = json.loads(cli("workers", "--json").stdout)
    assert len(workers) == sqlite_stack.workers
    assert all("demo_tasks" in worker["queues"] for worker in workers)
    assert sum(worker["successful_jobs"] for worker in workers) >= 1
    table = cli("workers").stdout
    assert all(worker["name"] in table for worker in workers)
    queues = {queue["name"]: queue for queue in json.loads(cli("queues", "--json").stdout)}
    assert queues["demo_tasks"]["finished"] >= 1
    assert " demo_tasks " in cli("queues").stdout
    assert ok in cli("jobs", "--function", "simple_calculation", "--status", "finished").stdout
    assert json.loads(cli("job", ok).stdout)["result"]["result"] == 42


def test_requeue_failed_runs_failed_jobs_again(cli: Callable[..., Result], sqlite_stack: Stack) -> None:
    failed = sqlite_stack.invoke("permanent_failure", {}, wait=10).json()
    assert failed["status"] == "failed"
    result = cli("requeue-failed", "--function", "permanent_failure")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Requeued 1 failed job."
    assert failed["id"] in result.stdout
    again = sqlite_stack.wait_for(failed["id"], lambda view: view["status"] == "failed" and view["attempts"] == 2)
    assert again["error"]["type"] == "PermanentError"
    # The row follows Redis within moments (the worker's writer commits it): wait for it, then check it.
    row = sqlite_stack.wait_for_row(failed["id"], lambda row: row.status == "failed" and row.attempts == 2)
    assert row.error is not None and row.error["type"] == "PermanentError"


def test_errors_and_an_unreachable_api(cli: Callable[..., Result], sqlite_stack: Stack) -> None:
    missing = cli("job", "no-such-job")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "Error: No job has the id 'no-such-job'. (404 job_not_found)"
    invalid = cli("invoke", "simple_calculation", "--data", '{"expression": 5}')
    assert invalid.exit_code == 1 and "(422 invalid_input)" in invalid.stderr
    refused = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "functions"])
    assert refused.exit_code == 2
    assert refused.stderr.startswith("Error: Cannot reach the API at http://127.0.0.1:9 (")
