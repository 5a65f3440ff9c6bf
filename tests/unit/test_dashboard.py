"""rq-dashboard at /dashboard/: our JSON-serialized jobs and workers render, escaped, on the app's Redis."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from api.dashboard import create_dashboard_app
from runner import function, progress
from runner.authoring.registry import Registry
from runner.config import Settings
from runner.redis_connection import connect_redis
from runner.rq_seam.queues import queue_for

HOSTILE = "<img src=x onerror=alert(1)>"


def job_id(response: TestResponse) -> str:
    assert response.status_code == 202, response.get_data(as_text=True)
    identifier: str = response.get_json()["id"]
    return identifier


def data(client: FlaskClient, path: str) -> Any:
    response = client.get(f"/dashboard/0/data/{path}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


PAGES = ["/dashboard/", "/dashboard/0/view/workers", "/dashboard/0/view/jobs/demo_tasks/queued/8/asc/1",
         "/dashboard/static/css/bootstrap.min.css", "/dashboard/static/js/jquery-3.5.1.min.js"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_and_their_assets_are_served(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_length or response.data


def test_queues_and_registries_show_our_jobs(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool]
) -> None:
    finished = job_id(invoke("simple_calculation", {"expression": "6*7"}))
    failed = job_id(invoke("simple_calculation", {"expression": "1/0"}))
    run_jobs()
    queues = {queue["name"]: queue for queue in data(client, "queues.json")["queues"]}
    assert queues["demo_tasks"]["finished_job_registry_count"] == 1
    assert queues["demo_tasks"]["failed_job_registry_count"] == 1
    listed = data(client, "jobs/demo_tasks/finished/8/asc/1.json")["jobs"]
    assert [job["id"] for job in listed] == [finished]
    assert listed[0]["description"] == "simple_calculation()"
    failures = data(client, "jobs/demo_tasks/failed/8/asc/1.json")["jobs"]
    assert [job["id"] for job in failures] == [failed] and "Division by zero" in failures[0]["exc_info"]
    info = data(client, f"job/{finished}.json")
    assert info["status"] == "finished" and info["result"]["result"] == 42 and info["origin"] == "demo_tasks"


def test_every_queue_a_worker_serves_is_listed_before_any_job(client: FlaskClient) -> None:
    # Redis knows a queue once a job went on it; the dashboard shows the ones that wait for their first too.
    everyone = ["ai_processing", "callbacks", "default", "demo_tasks"]
    assert [queue["name"] for queue in data(client, "queues.json")["queues"]] == everyone
    page = client.get("/dashboard/0/view/jobs/demo_tasks/queued/8/asc/1").get_data(as_text=True)
    assert re.findall(r'<option value="([a-z_]+)">', page) == everyone


def jobs_tab(client: FlaskClient) -> str:
    response = client.get("/dashboard/0/view/jobs")  # where the dashboard's "Jobs" tab links
    assert response.status_code == 302
    return str(response.headers["Location"])


def test_the_jobs_tab_opens_on_the_busiest_queue(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool]
) -> None:
    assert jobs_tab(client) == "/dashboard/0/view/jobs/ai_processing/queued/8/asc/1"  # nothing yet: the first served
    job_id(invoke("simple_calculation", {"expression": "6*7"}))
    job_id(invoke("simple_calculation", {"expression": "6*8"}))
    job_id(invoke("text_generation", {"prompt": "hello"}))
    assert jobs_tab(client) == "/dashboard/0/view/jobs/demo_tasks/queued/8/asc/1"  # 2 waiting beat 1
    run_jobs()  # demo_tasks' jobs run; text_generation's waits on ai_processing
    assert jobs_tab(client) == "/dashboard/0/view/jobs/ai_processing/queued/8/asc/1"
    run_jobs(["ai_processing"])
    assert jobs_tab(client) == "/dashboard/0/view/jobs/demo_tasks/finished/8/asc/1"  # nothing waits: the most jobs
    assert client.get(jobs_tab(client)).status_code == 200


def test_a_busy_worker_shows_its_job_by_description_not_by_its_input(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    running = job_id(invoke("simple_calculation", {"expression": f"'{HOSTILE}'"}))
    worker = Worker([queue_for("demo_tasks", connection)], connection=connection, name="busy-worker",
                    serializer=JSONSerializer)
    worker.register_birth()
    worker.set_current_job_id(running)
    workers = data(client, "workers.json")["workers"]
    assert [entry["name"] for entry in workers] == ["busy-worker"]
    current = workers[0]["current_job"]
    assert current["job_id"] == running and current["call_string"] == "simple_calculation()"
    assert workers[0]["queues"] == ["demo_tasks"]


@function(queue="default")
def echo(text: str) -> dict[str, str]:
    """Report `text` as progress and return it: user input in every field the job page shows."""
    progress(50, text)
    return {"text": text}


def test_job_data_reaches_the_page_html_escaped(
    make_client: Callable[..., FlaskClient], run_jobs: Callable[..., bool]
) -> None:
    # rq-dashboard's job page inserts result and metadata as raw HTML.
    registry = Registry([echo.__runner_function__])  # type: ignore[attr-defined]
    client = make_client(registry_=registry)
    echoed = job_id(client.post("/functions/echo/invocations", json={"text": HOSTILE}))
    run_jobs(registry_=registry)
    info = data(client, f"job/{echoed}.json")
    assert info["status"] == "finished"
    assert info["result"] == {"text": "&lt;img src=x onerror=alert(1)&gt;"}
    assert "&lt;img" in info["metadata"] and "<img" not in json.dumps(info)
    assert client.get(f"/jobs/{echoed}").get_json()["result"] == {"text": HOSTILE}  # the API itself is untouched


def test_deleting_from_the_dashboard_is_disabled(
    client: FlaskClient, invoke: Callable[..., TestResponse], connection: fakeredis.FakeRedis
) -> None:
    queued = job_id(invoke("simple_calculation", {"expression": "1"}))
    response = client.post(f"/dashboard/job/{queued}/delete")
    assert response.get_json() == {"status": "DISABLED"}
    assert Job.exists(queued, connection=connection)


def test_a_failed_job_can_be_requeued_from_the_dashboard(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool],
    connection: fakeredis.FakeRedis,
) -> None:
    failed = job_id(invoke("simple_calculation", {"expression": "1/0"}))
    run_jobs()
    assert client.post(f"/dashboard/job/{failed}/requeue").get_json() == {"status": "OK"}
    assert Job.fetch(failed, connection=connection, serializer=JSONSerializer).get_status() == "queued"
    assert client.get(f"/jobs/{failed}").get_json()["status"] == "queued"  # the history follows
    assert run_jobs()  # the requeued job runs again (and fails again: 1/0 never succeeds)
    assert client.get(f"/jobs/{failed}").get_json()["status"] == "failed"


def test_requeue_all_and_requeue_of_a_job_that_has_not_failed(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool],
    api_error: Callable[..., dict[str, Any]],
) -> None:
    for _ in range(2):
        job_id(invoke("simple_calculation", {"expression": "1/0"}))
    run_jobs()
    assert client.post("/dashboard/requeue/demo_tasks").get_json() == {"status": "OK", "count": 2}
    assert {queue["name"]: queue["count"] for queue in data(client, "queues.json")["queues"]}["demo_tasks"] == 2
    queued = data(client, "jobs/demo_tasks/queued/8/asc/1.json")["jobs"][0]["id"]
    api_error(client.post(f"/dashboard/job/{queued}/requeue"), 409, "state_conflict")
    api_error(client.post("/dashboard/job/no-such-job/requeue"), 404, "job_not_found")


def test_other_redis_instances_are_not_found(client: FlaskClient, api_error: Callable[..., dict[str, Any]]) -> None:
    api_error(client.get("/dashboard/1/data/queues.json"), 404, "not_found")


@pytest.mark.parametrize("path", ["/dashboard/0/data/job/nope.json", "/dashboard/0/view/job/nope"])
def test_an_unknown_job_is_a_json_404(client: FlaskClient, path: str, api_error: Callable[..., dict[str, Any]]) -> None:
    api_error(client.get(path), 404, "job_not_found")


def test_a_pickled_job_of_another_rq_client_is_listed_without_a_500(
    client: FlaskClient, connection: fakeredis.FakeRedis
) -> None:
    # Another RQ client on the same Redis may pickle its jobs; the JSON serializer never unpickles them.
    foreign = Queue("demo_tasks", connection=connection).enqueue_call("operator.add", args=(1, 2))
    assert [job["id"] for job in data(client, "jobs/demo_tasks/queued/8/asc/1.json")["jobs"]] == [foreign.id]
    assert data(client, f"job/{foreign.id}.json")["status"] == "queued"


def test_nothing_connects_until_a_request_and_redis_down_is_a_json_503(
    make_client: Callable[..., FlaskClient], closed_port: int, api_error: Callable[..., dict[str, Any]]
) -> None:
    down = make_client(connection=connect_redis(f"redis://127.0.0.1:{closed_port}/0"))  # built without error
    api_error(down.get("/dashboard/0/data/workers.json"), 503, "backend_unavailable")
    api_error(down.get("/dashboard/0/data/jobs/demo_tasks/finished/8/asc/1.json"), 503, "backend_unavailable")


def test_the_dashboard_process_serves_only_the_dashboard_and_health(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_port: int, api_error: Callable[..., dict[str, Any]]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port}/0")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/runner.db")
    client = create_dashboard_app().test_client()
    assert client.get("/healthz").status_code == 200
    home = client.get("/")
    assert home.status_code == 302 and home.headers["Location"].endswith("/dashboard/")
    assert client.get("/dashboard/").status_code == 200
    api_error(client.get("/functions"), 404, "not_found")
    api_error(client.post("/functions/simple_calculation/invocations", json={}), 404, "not_found")


@pytest.mark.parametrize(
    ("path", "status"),
    [("/dashboard/", 200), ("/dashboard/0/data/workers.json", 200), ("/dashboard/0/data/job/x.json", 404),
     ("/dashboard/static/css/main.css", 200)],
)
def test_with_api_keys_the_dashboard_asks_the_browser_for_one(
    make_client: Callable[..., FlaskClient], settings: Settings, path: str, status: int,
    api_error: Callable[..., dict[str, Any]],
) -> None:
    client = make_client(settings=replace(settings, api_keys="s3cret"))
    refused = client.get(path)
    api_error(refused, 401, "unauthorized")
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"ops:wrong").decode()
    api_error(client.get(path, headers={"Authorization": f"Basic {wrong}"}), 401, "unauthorized")
    right = base64.b64encode(b"ops:s3cret").decode()
    # Let in, the request gets the dashboard's own answer (no job "x": 404).
    assert client.get(path, headers={"Authorization": f"Basic {right}"}).status_code == status
    assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == status


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}, {"Origin": "null"},
     {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost"}],
)
def test_buttons_pressed_from_another_site_are_refused(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool],
    headers: dict[str, str], api_error: Callable[..., dict[str, Any]],
) -> None:
    failed = job_id(invoke("simple_calculation", {"expression": "1/0"}))
    run_jobs()
    api_error(client.post(f"/dashboard/job/{failed}/requeue", headers=headers), 403, "forbidden")
    api_error(client.post("/dashboard/requeue/demo_tasks", headers=headers), 403, "forbidden")
    assert client.get(f"/jobs/{failed}").get_json()["status"] == "failed"
    own_page = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert client.post(f"/dashboard/job/{failed}/requeue", headers=own_page).get_json() == {"status": "OK"}


def test_requeue_all_is_not_a_get(client: FlaskClient, api_error: Callable[..., dict[str, Any]]) -> None:
    response = client.get("/dashboard/requeue/demo_tasks")
    api_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


# Bad input on every route of the blueprint (issue 19, item 13): 4xx JSON, never a 500.
ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
GOOD_ARGUMENTS = {"instance_number": "0", "queue_name": "demo_tasks", "registry_name": "failed", "per_page": "8",
                  "order": "asc", "page": "1", "job_id": "nope", "filename": "css/bootstrap.min.css"}
BAD_ARGUMENTS = {
    "instance_number": ["1", "99999999999999999999999"],
    "queue_name": ["nope", "x" * 300, "%00", "rq:queue:demo_tasks"],
    "registry_name": ["nope", "FAILED", "%2e%2e"],
    "per_page": ["x", "0", "-1", "201", "1e3", "99999999999999999999999", "\u0661", "1.5"],
    "order": ["zzz", "ASC", ""],
    "page": ["x", "0", "-1", "1000001", "9" * 5000, "\u0661"],
    "job_id": ["x" * 300, "..", "%00", "rq:job:x"],
    "filename": ["../../app.py", "nope.css", "%2e%2e/web.py"],
}


def dashboard_rules(app: Flask) -> list[Rule]:
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("rq_dashboard.")]


def fill(rule: Rule, values: dict[str, str]) -> str:
    return ARGUMENT.sub(lambda match: values[match.group(1)], rule.rule)


def test_every_argument_of_the_dashboards_routes_has_bad_values_to_try(app: Flask) -> None:
    # A route added with an argument of a new name must get bad values here before it is trusted.
    assert {name for rule in dashboard_rules(app) for name in rule.arguments} <= set(BAD_ARGUMENTS)


def test_every_dashboard_route_answers_bad_arguments_with_a_4xx_json_error(
    app: Flask, client: FlaskClient, api_error: Callable[..., dict[str, Any]], connection: fakeredis.FakeRedis
) -> None:
    queue_for("demo_tasks", connection).enqueue_call("operator.add", args=(1, 2))  # something to list
    tried = 0
    for rule in dashboard_rules(app):
        methods = sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"})
        cases = [dict(GOOD_ARGUMENTS)] + [{**GOOD_ARGUMENTS, name: bad}
                                          for name in sorted(rule.arguments) for bad in BAD_ARGUMENTS[name]]
        for method, values in ((method, values) for method in methods for values in cases):
            response = client.open(fill(rule, values), method=method)
            tried += 1
            assert response.status_code < 500, (method, fill(rule, values), response.get_data(as_text=True)[:300])
            if response.status_code >= 400:
                api_error(response, response.status_code)
    assert tried > 100


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/dashboard/0/data/jobs/demo_tasks/queued/8/asc/x.json", 400, "malformed_request"),  # was a 500
    ("/dashboard/0/data/jobs/demo_tasks/nope/8/asc/1.json", 404, "not_found"),  # was a 500
    ("/dashboard/0/data/jobs/demo_tasks/failed/0/asc/1.json", 400, "malformed_request"),  # was a 500
    ("/dashboard/0/data/jobs/demo_tasks/failed/100000000/asc/1.json", 400, "malformed_request"),  # was unbounded
    ("/dashboard/0/data/jobs/demo_tasks/failed/8/asc/99999999999.json", 400, "malformed_request"),
    ("/dashboard/0/data/jobs/demo_tasks/failed/8/up/1.json", 400, "malformed_request"),
    ("/dashboard/0/view/jobs/demo_tasks/nope/8/asc/1", 404, "not_found"),
    ("/dashboard/0/view/jobs/demo_tasks/queued/999999999/asc/1", 400, "malformed_request"),
])
def test_bad_pages_page_sizes_orders_and_registries(
    client: FlaskClient, api_error: Callable[..., dict[str, Any]], path: str, status: int, code: str
) -> None:
    api_error(client.get(path), status, code)


def test_the_largest_page_size_and_page_are_served(client: FlaskClient) -> None:
    listing = data(client, "jobs/demo_tasks/failed/200/dsc/1000000.json")
    assert (listing["jobs"], listing["pagination"]["current_page"]) == ([], 1_000_000)


def test_compacting_drops_dead_ids_only_and_an_empty_or_unknown_queue_is_no_500(
    client: FlaskClient, connection: fakeredis.FakeRedis, api_error: Callable[..., dict[str, Any]]
) -> None:
    empty = client.post("/dashboard/queue/demo_tasks/compact")  # RQ's compact: a Redis error, so a 500
    assert (empty.status_code, empty.get_json()) == (200, {"status": "OK", "removed": 0})
    api_error(client.post("/dashboard/queue/nope/compact"), 404, "queue_not_found")
    queue = queue_for("demo_tasks", connection)
    jobs = [queue.enqueue_call("operator.add", args=(n, 1)) for n in range(5)]
    for job in jobs[1::2]:
        connection.delete(job.key)  # expired, say: its id stays on the queue
    compacted = client.post("/dashboard/queue/demo_tasks/compact")
    assert compacted.get_json() == {"status": "OK", "removed": 2}
    assert queue.get_job_ids() == [jobs[0].id, jobs[2].id, jobs[4].id]


def test_the_schedules_page_lists_every_schedule_html_escaped(client: FlaskClient) -> None:
    assert "No schedules yet" in client.get("/dashboard/schedules").get_data(as_text=True)
    body = {"function": "simple_calculation", "input": {"expression": "<b>1</b>"}, "cron": "0 3 * * *",
            "timezone": "Europe/Paris"}
    schedule = client.post("/schedules", json=body).get_json()
    client.post("/schedules", json={**body, "every": 30, "cron": None, "timezone": None})
    client.post(f"/schedules/{schedule['id']}/pause")
    page = client.get("/dashboard/schedules")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert schedule["id"] in text and "0 3 * * * (Europe/Paris)" in text and "every 30 s" in text
    assert "paused" in text and "active" in text and f"/jobs?schedule={schedule['id']}" in text
    assert "<b>1</b>" not in text and "&lt;b&gt;1&lt;/b&gt;" in text
