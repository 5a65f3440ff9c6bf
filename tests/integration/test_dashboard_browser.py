"""rq-dashboard in a real headless Chromium against a real stack: queues, a finished job and the workers show.

Screenshots land in test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import REPO_ROOT, ProcessSet, Stack, http_ready, wait_until
from tests.servers import free_port

ARTIFACTS = REPO_ROOT / "test-artifacts"
API_KEY = "dashboard-test-key"

# Imported lazily: the module stays importable (and skips) where selenium is absent.
pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.integration.browser import PAGE_TIMEOUT, chromium  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One browser for the module's pages."""
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def jobs(sqlite_stack: Stack) -> dict[str, str]:
    """One finished and one failed simple_calculation on the stack."""
    finished = sqlite_stack.invoke("simple_calculation", {"expression": "6*7"}, wait=10).json()
    failed = sqlite_stack.invoke("simple_calculation", {"expression": "1/0"}, wait=10).json()
    assert (finished["status"], failed["status"]) == ("finished", "failed")
    return {"finished": finished["id"], "failed": failed["id"]}


def rows(driver: WebDriver, selector: str, minimum: int = 1) -> list[str]:
    """The texts of the rows `selector` once at least `minimum` have been drawn by the page's script."""
    WebDriverWait(driver, PAGE_TIMEOUT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= minimum)
    return [row.text for row in driver.find_elements(By.CSS_SELECTOR, selector)]


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


def assert_no_script_errors(driver: WebDriver) -> None:
    # rq-dashboard 0.9.0 links its favicon from the host app's /static/, which this API does not have.
    errors = [entry for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and "/static/favicon.ico" not in entry["message"]]
    assert errors == [], errors


def test_queues_page_shows_our_queues_and_counts(browser: WebDriver, sqlite_stack: Stack, jobs: dict[str, str]) -> None:
    browser.get(f"{sqlite_stack.url}/dashboard/")
    queues = {text.split()[0]: text.split()[1:] for text in rows(browser, "#queues tr[data-role=queue]")}
    assert "demo_tasks" in queues
    # Columns: queued, deferred, scheduled, started, finished, failed, canceled.
    queued, _, _, _, finished, failed, _ = queues["demo_tasks"]
    assert (queued, finished, failed) == ("0", "1", "1")
    screenshot(browser, "queues")
    assert_no_script_errors(browser)


def test_workers_page_shows_the_stack_workers(browser: WebDriver, sqlite_stack: Stack, jobs: dict[str, str]) -> None:
    browser.get(f"{sqlite_stack.url}/dashboard/0/view/workers")
    workers = rows(browser, "#workers tr[data-role=worker]", minimum=sqlite_stack.workers)
    assert len(workers) == sqlite_stack.workers
    assert all("ai_processing, demo_tasks, default" in text for text in workers), workers
    screenshot(browser, "workers")
    assert_no_script_errors(browser)


def test_finished_jobs_list_and_job_page(browser: WebDriver, sqlite_stack: Stack, jobs: dict[str, str]) -> None:
    browser.get(f"{sqlite_stack.url}/dashboard/0/view/jobs/demo_tasks/finished/8/asc/1")
    listed = rows(browser, "tr[data-role=job]")
    assert len(listed) == 1 and jobs["finished"] in listed[0] and "simple_calculation()" in listed[0]
    screenshot(browser, "finished-jobs")
    browser.get(f"{sqlite_stack.url}/dashboard/0/view/job/{jobs['finished']}")
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: "Result" in d.find_element(By.ID, "job-data").text)
    page = browser.find_element(By.ID, "job-data").text
    assert "finished" in page and '"result": 42' in page and "demo_tasks" in page
    screenshot(browser, "job")
    assert_no_script_errors(browser)


def test_failed_job_shows_its_error_and_can_be_requeued(
    browser: WebDriver, sqlite_stack: Stack, jobs: dict[str, str]
) -> None:
    browser.get(f"{sqlite_stack.url}/dashboard/0/view/jobs/demo_tasks/failed/8/asc/1")
    listed = rows(browser, "tr[data-role=job]")
    assert len(listed) == 1 and jobs["failed"] in listed[0] and "Division by zero" in listed[0]
    screenshot(browser, "failed-jobs")
    first_run = sqlite_stack.job(jobs["failed"])
    browser.find_element(By.CSS_SELECTOR, "tr[data-role=job] [data-role=requeue-job-btn]").click()
    # The button's POST passes the same-site check; the job runs (and fails) once more.
    rerun = sqlite_stack.wait_for(
        jobs["failed"], lambda view: view["status"] == "failed" and view["started_at"] != first_run["started_at"]
    )
    assert rerun["error"]["message"] == "Division by zero"
    assert_no_script_errors(browser)


def test_behind_api_keys_the_browser_logs_in_with_basic_auth(
    sqlite_stack: Stack, jobs: dict[str, str], spawn: ProcessSet
) -> None:
    # A second web process on the same Redis and database, with keys: the password is an API key.
    port = free_port()
    spawn.start_web({**sqlite_stack.env, "RUNNER_API_KEYS": API_KEY}, port)
    wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/healthz"), 20, "the web process with API keys")
    assert requests.get(f"http://127.0.0.1:{port}/dashboard/", timeout=5).status_code == 401
    # Its own browser, closed before the web process stops (an open keep-alive would delay that).
    with chromium() as browser:
        browser.get(f"http://operator:{API_KEY}@127.0.0.1:{port}/dashboard/0/view/workers")
        workers = rows(browser, "#workers tr[data-role=worker]", minimum=sqlite_stack.workers)
        assert len(workers) == sqlite_stack.workers
        screenshot(browser, "workers-with-api-key")
        assert_no_script_errors(browser)
